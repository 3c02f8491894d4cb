"""The fused version-2 decode + GEMV for TPU (Mosaic) against its raw twin, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_matmul.pallas_tpu import (
    gemv_shapes_supported,
    grouped_gemv_tpu,
    rows_gemv_tpu,
    to_float32,
)
from pallas_kernels.grouped_matmul.reference import gemv_reference

STEPS = 32  # 4096 weights a chunk: 8 rows of 512


def _encode(w, steps=STEPS):
    width = grouped.width_of_dtype(np.dtype(w.dtype).name)
    u = np.ascontiguousarray(w).view(width.raw_dtype).reshape(-1)
    chunks = -(-u.size // (steps * 128))
    return grouped.kernel_args(*encode_grouped(u, steps, chunks, width), np)


@pytest.mark.parametrize(
    ("dtype", "m"),
    [(ml_dtypes.float8_e4m3fn, 1), (ml_dtypes.float8_e5m2, 3), (ml_dtypes.bfloat16, 2),
     (np.float16, 1)],
)  # fmt: skip
def test_tpu_fused_gemv_equals_its_raw_twin_bit_for_bit(dtype, m):
    n, k = 72, 512  # 9 chunks of 8 rows: two programs, the second with one chunk
    w = (np.random.default_rng(0).standard_normal((n, k)) * 0.1).astype(dtype)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.float32)
    scale = jnp.asarray(np.random.default_rng(2).random(n), jnp.float32)
    params = compat.tpu_interpret_params()
    fused = grouped_gemv_tpu(x, *_encode(w), scale, n=n, dtype=jnp.dtype(dtype), interpret=params)
    twin = rows_gemv_tpu(x, jnp.asarray(w), scale, chunk_steps=STEPS, interpret=params)
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
