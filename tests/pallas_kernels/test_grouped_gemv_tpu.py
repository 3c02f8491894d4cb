"""The fused version-2 decode + GEMV for TPU (Mosaic) against its raw twin, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.experimental import pallas as pl

from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_matmul.pallas_tpu import (
    fp8_to_float32,
    gemv_shapes_supported,
    group_unroll,
    grouped_gemv_tpu,
    rows_gemv_tpu,
    to_float32,
    value_to_float32,
)
from pallas_kernels.grouped_matmul.reference import gemv_reference

STEPS = 32  # 4096 weights a chunk: 8 rows of 512


def _encode(w, steps=STEPS):
    width = grouped.width_of_dtype(np.dtype(w.dtype).name)
    u = np.ascontiguousarray(w).view(width.raw_dtype).reshape(-1)
    chunks = -(-u.size // (steps * 128))
    return grouped.kernel_args(*encode_grouped(u, steps, chunks, width), np)


@pytest.mark.parametrize(
    ("dtype", "m", "n", "k", "steps"),
    # n=72, k=512: 9 chunks of 8 rows, two programs, the second with one chunk; k=2048 and
    # 4096 (one row a chunk, the last program part-filled): rows of 4 and 8 groups, no group
    # loop; k=1536: 3 groups a row (FP8 groups with no raw-word partner); k=4608: 9 groups, a
    # group loop of one group an iteration; k=8192: 16 groups, two iterations of 8
    [(ml_dtypes.float8_e4m3fn, 1, 72, 512, STEPS), (ml_dtypes.float8_e5m2, 3, 72, 512, STEPS),
     (ml_dtypes.bfloat16, 2, 72, 512, STEPS), (np.float16, 1, 72, 512, STEPS),
     (ml_dtypes.float8_e4m3fn, 2, 12, 4096, STEPS), (ml_dtypes.float8_e5m2, 1, 12, 2048, STEPS),
     (ml_dtypes.bfloat16, 1, 12, 4096, STEPS), (ml_dtypes.float8_e4m3fn, 1, 16, 1536, 96),
     (ml_dtypes.float8_e5m2, 2, 4, 4608, 72), (ml_dtypes.bfloat16, 1, 4, 4608, 72),
     (ml_dtypes.float8_e4m3fn, 1, 3, 8192, 64)],
)  # fmt: skip
def test_tpu_fused_gemv_equals_its_raw_twin_bit_for_bit(dtype, m, n, k, steps):
    w = (np.random.default_rng(0).standard_normal((n, k)) * 0.1).astype(dtype)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.float32)
    scale = jnp.asarray(np.random.default_rng(2).random(n), jnp.float32)
    params = compat.tpu_interpret_params()
    enc = _encode(w, steps)
    fused = grouped_gemv_tpu(x, *enc, scale, n=n, dtype=jnp.dtype(dtype), interpret=params)
    twin = rows_gemv_tpu(x, jnp.asarray(w), scale, chunk_steps=steps, interpret=params)
    assert fused.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(fused).view(np.uint32),
                                  np.asarray(twin).view(np.uint32))  # fmt: skip
    ref = np.asarray(gemv_reference(x, jnp.asarray(w), scale))
    np.testing.assert_allclose(np.asarray(fused), ref, rtol=1e-5, atol=1e-5)  # float math


@pytest.mark.parametrize(
    "dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.float16, ml_dtypes.bfloat16]
)
def test_in_kernel_conversion_is_exact_for_every_bit_pattern(dtype):
    bits = np.dtype(dtype).itemsize * 8
    v = np.arange(1 << bits, dtype=np.uint32)
    got = np.asarray(to_float32(jnp.asarray(v), jnp.dtype(dtype)))
    want = v.astype(np.uint8 if bits == 8 else np.uint16).view(dtype).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # NaNs keep their sign
    np.testing.assert_array_equal(np.signbit(got[nan]), np.signbit(want[nan]))


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
@pytest.mark.parametrize("kk", range(4))
def test_fp8_conversion_matches_xla_bit_for_bit_at_every_byte(dtype, kk):
    # all 256 patterns (NaNs, E5M2's infinities, subnormals, -0) at byte kk of a word whose
    # other bytes are random: the float32 bits equal XLA's FP8 -> float32 conversion
    v = np.arange(256, dtype=np.uint32)
    noise = np.random.default_rng(kk).integers(0, 1 << 32, 256, dtype=np.uint64).astype(np.uint32)
    keep = np.uint32(~(0xFF << (8 * kk)) & 0xFFFFFFFF)
    word = (noise & keep) | (v << np.uint32(8 * kk))
    got = np.asarray(fp8_to_float32(jnp.asarray(word), kk, jnp.dtype(dtype))).view(np.uint32)
    want = np.asarray(jnp.asarray(v.astype(np.uint8).view(dtype)).astype(jnp.float32))
    np.testing.assert_array_equal(got, want.view(np.uint32))
    np.testing.assert_array_equal(
        got, v.astype(np.uint8).view(dtype).astype(np.float32).view(np.uint32)
    )


@pytest.mark.parametrize(
    "dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.bfloat16, np.float16]
)
def test_in_kernel_conversion_is_exact_in_a_pallas_kernel(dtype):
    # the conversion the GEMV runs, inside a (TPU interpret-mode) kernel, every value position
    bits = np.dtype(dtype).itemsize * 8
    per_word = 32 // bits
    uint = np.uint8 if bits == 8 else np.uint16
    patterns = np.arange(1 << bits, dtype=np.uint32).astype(uint)
    if bits == 16:  # every exponent, sign and NaN, with a spread of mantissas
        patterns = patterns[np.random.default_rng(0).permutation(patterns.size)[: 8 * 128 * 4]]
        patterns[:4] = [0x0000, 0x8000, 0x7C01, 0x0001]
    values = np.resize(patterns, (8, 128, per_word))  # [8, 128] words of per_word values
    words = values.view(np.uint32).reshape(8, 128)

    def kernel(w_ref, o_ref):
        for kk in range(per_word):
            o_ref[kk] = value_to_float32(w_ref[...], kk, jnp.dtype(dtype))

    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((per_word, 8, 128), jnp.float32),
        interpret=compat.tpu_interpret_params(),
    )(jnp.asarray(words))
    got = np.moveaxis(np.asarray(out), 0, -1).view(np.uint32)
    want = values.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    if bits == 8:  # FP8 NaNs are canonical, like XLA's
        nan = np.zeros_like(nan)
    np.testing.assert_array_equal(got[~nan], want[~nan].view(np.uint32))
    np.testing.assert_array_equal(np.isnan(got.view(np.float32)[nan]), True)


def test_group_loop_takes_whole_rows_of_up_to_8_groups_else_a_divisor():
    groups = (1, 2, 3, 4, 6, 8, 9, 12, 16, 28)
    assert [group_unroll(g) for g in groups] == [1, 2, 3, 4, 6, 8, 1, 4, 8, 4]


def test_unsupported_shapes_say_why():
    assert "512" in gemv_shapes_supported(8, 576, 2048, 1)
    assert "whole rows" in gemv_shapes_supported(8, 1536, 64, 1)
    assert "activation rows" in gemv_shapes_supported(8, 1024, 64, 9)
    assert gemv_shapes_supported(64, 4096, 2048, 1) is None


def test_tpu_fused_gemv_lowers_for_tpu():
    n, k = 64, 4096
    w = (np.random.default_rng(0).standard_normal((n, k)) * 0.1).astype(ml_dtypes.float8_e4m3fn)
    args = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in _encode(w, 2048)]
    x, scale = jax.ShapeDtypeStruct((1, k), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)
    f = jax.jit(lambda x, *a: grouped_gemv_tpu(x, *a[:-1], a[-1], n=n))
    with compat.abstract_device("tpu"):
        text = f.trace(x, *args, scale).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text
