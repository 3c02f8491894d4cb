"""The model path's fused GEMV: chosen by shape and lowering platform, bit-identical twins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ecf8_jax
from ecf8_jax import codec
from ecf8_jax import nn as enn
from pallas_kernels import compat


def _layers(out=48, k=1024, seed=0):
    w = np.random.default_rng(seed).standard_normal((out, k)).astype(np.float32)
    fp8 = enn.Fp8Linear.from_float(w, bias=np.arange(out, dtype=np.float32), dtype=jnp.bfloat16)
    return fp8, enn.compress_layer(fp8)


def test_compress_layer_writes_chunks_of_whole_rows_when_the_gemv_applies():
    _, ecf8 = _layers()
    t = ecf8.weight.get_value()
    assert t.version == 2 and (t.chunk_steps * 128) % 1024 == 0
    assert codec.fused_gemv_ready(t)
    _, narrow = _layers(k=576)  # not a multiple of 512: the balanced default
    assert not codec.gemv_applies((48, 576), 1)


def test_gemv_rule_depends_on_shapes_only():
    assert codec.gemv_applies((4096, 4096), 1) and codec.gemv_applies((4096, 4096), 8)
    assert not codec.gemv_applies((4096, 4096), 9)  # prefill: decode-then-dot
    assert not codec.gemv_applies((4096, 11008), 1)  # 11008 % 512 != 0


@pytest.mark.parametrize("rows", [True, False])
def test_fused_and_decode_first_gemv_equal_the_fp8_twin_bit_for_bit(rows):
    # 330 x 1536: balanced 1984-step chunks cut rows; 96 steps hold 8 whole rows.
    w = (np.random.default_rng(1).standard_normal((330, 1536)) * 0.1).astype(jnp.float8_e4m3fn)
    t = ecf8_jax.encode(w, chunk_steps=96, balance=False) if rows else ecf8_jax.encode(w)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 1536)), jnp.bfloat16)
    scale = jnp.linspace(0.5, 2.0, 330, dtype=jnp.float32)
    twin = np.asarray(codec.fp8_gemv(x, jnp.asarray(w), scale, interpret=True))
    if rows:
        got = codec.gemv(x, t, scale, interpret=True)
    else:  # a tensor not in whole-row chunks is decoded first, then the same kernel runs
        assert not codec.fused_gemv_ready(t)
        got = codec.fp8_gemv(x, ecf8_jax.decode(t), scale, interpret=True)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), twin.view(np.uint32))


def _lowered(layer, platform, m=1):
    graphdef, state = nnx.split(layer)
    x = jax.ShapeDtypeStruct((m, layer.in_features), jnp.bfloat16)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    if platform == "cpu":
        return f.trace(state, x).lower().as_text()
    with compat.abstract_device(platform):
        return f.trace(state, x).lower(lowering_platforms=(platform,)).as_text()


def test_layers_lower_to_the_gemv_kernels_for_cuda_and_to_a_dot_on_cpu():
    fp8, ecf8 = _layers()
    assert "fp8_rows_gemv" in _lowered(fp8, "cuda")
    assert "ecf8_grouped_gemv" in _lowered(ecf8, "cuda")
    kernels = ("fp8_rows_gemv", "ecf8_grouped_gemv")
    for layer in (fp8, ecf8):
        text = _lowered(layer, "cpu")
        assert not any(k in text for k in kernels) and "dot_general" in text
    text = _lowered(ecf8, "cuda", m=16)  # beyond 8 rows: decode, then dot
    assert not any(k in text for k in kernels) and "ecf8_grouped_decode" in text


def test_tpu_fused_and_decode_first_gemv_equal_the_raw_twin_bit_for_bit():
    w = (np.random.default_rng(3).standard_normal((72, 512)) * 0.1).astype(jnp.float8_e4m3fn)
    t = ecf8_jax.encode(w, chunk_steps=32, balance=False)  # 8 whole rows a chunk
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 512)), jnp.bfloat16)
    scale = jnp.linspace(0.5, 2.0, 72, dtype=jnp.float32)
    twin = np.asarray(codec.fp8_gemv(x, jnp.asarray(w), scale, platform="tpu", interpret=True))
    got = codec.gemv(x, t, scale, platform="tpu", interpret=True)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), twin.view(np.uint32))
    with pytest.raises(ValueError, match="no row GEMV kernel"):
        codec.gemv(x, t, scale, platform="rocm")


def test_layers_keep_decode_then_dot_on_tpu():
    # codec.LAYER_GEMV_PLATFORMS: the fused TPU GEMV is no faster than decode-then-dot for FP8
    # there, and its raw twin would slow uncompressed FP8 layers, so both stay on XLA's dot.
    fp8, ecf8 = _layers()
    assert "gemv" not in _lowered(fp8, "tpu") and "dot_general" in _lowered(fp8, "tpu")
    text = _lowered(ecf8, "tpu")
    assert "gemv" not in text and "ecf8_grouped_decode" in text and "dot_general" in text


def test_whole_row_chunks_are_balanced_so_the_last_one_is_nearly_full():
    from ecf8_jax.format import grouped

    # SmolLM2's down_proj: 576 rows of 1536. The largest whole-row chunk holds 168 rows (4
    # chunks, the last with 72: 96 rows of raw nibbles stored for nothing); balanced: 144.
    assert grouped.row_chunk_steps(1536) * 128 // 1536 == 168
    steps = grouped.row_chunk_steps(1536, rows=576)
    assert steps % 32 == 0 and (steps * 128) % 1536 == 0 and steps * 128 // 1536 == 144
    w = (np.random.default_rng(5).standard_normal((576, 1536)) * 0.1).astype(np.float32)
    t = enn.compress_layer(enn.Fp8Linear.from_float(w)).weight.get_value()
    assert t.chunk_steps == steps and t.num_chunks == 4


def test_bf16_layers_lower_to_the_gemv_kernels_for_cuda():
    w = (np.random.default_rng(6).standard_normal((48, 1024)) * 0.1).astype(np.float32)
    raw = enn.Bf16Linear.from_float(w)
    packed = enn.compress_layer(raw)
    assert packed.unscaled_gemv and codec.fused_gemv_ready(packed.weight.get_value())
    assert "fp8_rows_gemv" in _lowered(raw, "cuda")
    text = _lowered(packed, "cuda")
    assert "ecf8_grouped_gemv" in text and "fp8_rows_gemv" not in text
    assert "gemv" not in _lowered(packed, "cpu")  # a plain dot elsewhere
    x = jnp.asarray(np.random.default_rng(7).standard_normal((1, 1024)), jnp.bfloat16)
    ones = jnp.ones((48,), jnp.float32)
    fused = codec.gemv(x, packed.weight.get_value(), ones, interpret=True)
    twin = codec.fp8_gemv(x, raw.weight[...], ones, interpret=True)
    np.testing.assert_array_equal(
        np.asarray(fused).view(np.uint32), np.asarray(twin).view(np.uint32)
    )
