"""The ``ecf8`` console script: the parser and the one place errors become exit statuses.

Exit status 0 on success; 1 with one ``ecf8: error: ...`` line on stderr for bad input (a missing
or malformed file, a damaged checkpoint, a mismatch); 130 when interrupted; 3 with
``ecf8: internal error: ...`` for anything else, which is a bug. No command leaves partial output.
"""

from __future__ import annotations

import argparse
import sys

from ecf8_cli.common import CliError
from ecf8_jax.errors import one_line
from ecf8_jax.io.container import INDEX_NAME  # noqa: F401  (re-exported for scripts and tests)

DESCRIPTION = (
    "Store model weights as ECF8 (entropy-coded FP8 or BF16) without losing a bit, get them back, "
    "and run models from them."
)

EPILOG = """\
commands, by what you want to do:
  try it             ecf8 demo      (SmolLM2-135M: compress, check, generate from both)
  shrink a model     ecf8 compress MODEL OUT      then   ecf8 verify OUT --against MODEL
  get it back        ecf8 decompress OUT MODEL_COPY
  look inside        ecf8 inspect OUT [--plot FILE.png]
  run or train       ecf8 generate [MODEL] --prompt TEXT  /  ecf8 finetune OUT

MODEL is a .safetensors file, a folder of them (with or without
model.safetensors.index.json) or a .gguf file. FP8, BF16 and F16 weights
shrink, without loss; '--cast fp8-row' first turns float weights into FP8
(lossy). 'ecf8 generate/demo --dtype bf16' run BF16 models.
Run 'ecf8 COMMAND --help' for the options of one command.
"""

USER_ERRORS = (CliError, OSError, ValueError, RuntimeError)
"""Failures caused by the input: ``ContainerError``, ``FormatError`` and ``SafetensorsError`` are
``ValueError``s; ``RuntimeError`` covers a decoded model that does not match (``ecf8 demo``)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``ecf8`` parser with every command registered."""
    from ecf8_cli import files, finetune, llm

    parser = argparse.ArgumentParser(
        prog="ecf8",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    llm.add_commands(sub)
    files.add_commands(sub)
    finetune.add_commands(sub)
    return parser


def _quiet_unraisable(hook):
    """Drops the ``RuntimeError: Event loop is closed`` that tensorstore callbacks raise after
    Orbax gave up on a damaged checkpoint (it would print a traceback after our one line)."""

    def quiet(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and "Event loop is closed" in str(e):
            return
        hook(unraisable)

    return quiet


def main(argv: list[str] | None = None) -> int:
    """Runs one ``ecf8`` command; returns its exit status."""
    if argv is None:  # the console script: this process is ours
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ecf8: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"ecf8: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback: one line, but say it is a bug
        print(f"ecf8: internal error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
