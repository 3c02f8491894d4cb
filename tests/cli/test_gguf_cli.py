"""``ecf8 compress`` from a GGUF file: dequantized to float32, optionally cast to FP8."""

from __future__ import annotations

import contextlib
import io

import gguf
import numpy as np
import pytest

from ecf8_cli import cli
from ecf8_jax.io import safetensors_raw as sr


def main(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A small GGUF with an F32 norm and a Q8_0 block-quantized weight, as llama.cpp writes."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    q8 = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.ones(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)


def test_gguf_compresses_to_its_float32_dequantization_and_verifies(gguf_file, tmp_path):
    path, dequantized = gguf_file
    assert main("compress", path, tmp_path / "ck", "--quiet")[0] == 0
    rc, out, err = main("verify", tmp_path / "ck", "--against", path, "--quiet")
    assert rc == 0, err
    assert main("decompress", tmp_path / "ck", tmp_path / "out.safetensors", "--quiet")[0] == 0
    _, tensors = sr.read(tmp_path / "out.safetensors")
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"], dequantized)
    np.testing.assert_array_equal(tensors["output_norm.weight"], np.ones(256, np.float32))


def test_gguf_cast_to_fp8_row_is_lossy_and_says_so(gguf_file, tmp_path):
    path, dequantized = gguf_file
    rc, out, err = main("compress", path, tmp_path / "ck", "--cast", "fp8-row")
    assert rc == 0, err
    assert "LOSSY" in out
    assert main("verify", tmp_path / "ck", "--against", path, "--quiet")[0] == 0
    main("decompress", tmp_path / "ck", tmp_path / "out.safetensors", "--quiet")
    _, tensors = sr.read(tmp_path / "out.safetensors")
    q, scale = tensors["blk.0.attn_q.weight"], tensors["blk.0.attn_q.weight_scale"]
    assert q.dtype.name == "float8_e4m3fn" and scale.shape == (64, 1)
    np.testing.assert_allclose(q.astype(np.float32) * scale, dequantized, rtol=0.07, atol=1e-6)


def test_a_damaged_gguf_file_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(20))
    rc, out, err = main("compress", bad, tmp_path / "ck")
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "ck").exists()
