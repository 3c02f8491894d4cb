"""ecf8_jax.errors.one_line: what the CLI and the checkpoint reader print for a failure."""

from ecf8_jax.errors import one_line


def test_one_line_collapses_names_files_and_cuts():
    assert one_line(ValueError("bad\n  value\tthere")) == "bad value there"
    assert one_line(KeyError()) == "KeyError"
    missing = FileNotFoundError(2, "No such file or directory", "/x/y.safetensors")
    assert one_line(missing) == "/x/y.safetensors: No such file or directory"
    long = one_line(RuntimeError("z" * 1000), limit=10)
    assert long == "z" * 10 + " ..."
