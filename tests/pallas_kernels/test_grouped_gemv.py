"""The fused version-2 decode + GEMV (Triton) against its raw-FP8 twin, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_matmul.pallas_gpu import (
    fp8_rows_gemv,
    gemv_shapes_supported,
    grouped_gemv_gpu,
)
from pallas_kernels.grouped_matmul.reference import gemv_reference


def _weight(n, k, dtype=ml_dtypes.float8_e4m3fn, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, k)) * 0.1).astype(dtype)


def _arrays(t):
    return grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np)


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_fused_gemv_equals_its_raw_fp8_twin_bit_for_bit(m, dtype):
    n, k = 40, 1024  # 64 steps x 128 = 8 rows a chunk; 5 chunks, the last one part-full
    w = _weight(n, k, dtype)
    t = ecf8_jax.encode(w, chunk_steps=64)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.float32)
    scale = jnp.asarray(np.random.default_rng(2).random(n), jnp.float32)
    fused = np.asarray(grouped_gemv_gpu(x, *_arrays(t), scale, n=n, fp8_dtype=w.dtype,
                                        interpret=True))  # fmt: skip
    twin = np.asarray(fp8_rows_gemv(x, jnp.asarray(w), scale, chunk_steps=64, interpret=True))
    np.testing.assert_array_equal(fused.view(np.uint32), twin.view(np.uint32))
    ref = np.asarray(gemv_reference(x, jnp.asarray(w), scale))
    np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=1e-5)  # float math, not a lossless claim


def test_unsupported_shapes_say_why():
    assert "512" in gemv_shapes_supported(8, 576, 2048, 1)
    assert "whole rows" in gemv_shapes_supported(8, 1536, 64, 1)
    assert "8 activation rows" in gemv_shapes_supported(8, 1024, 64, 9)
    assert gemv_shapes_supported(64, 4096, 2048, 1) is None
    w = _weight(8, 1536)
    with pytest.raises(ValueError, match="whole rows"):
        fp8_rows_gemv(jnp.ones((1, 1536)), jnp.asarray(w), jnp.ones(8), chunk_steps=64)


def test_fused_gemv_lowers_for_cuda():
    n, k = 64, 4096
    t = ecf8_jax.encode(_weight(n, k), chunk_steps=2048)
    args = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in _arrays(t)]
    x, scale = jax.ShapeDtypeStruct((1, k), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)
    f = jax.jit(lambda x, *a: grouped_gemv_gpu(x, *a[:-1], a[-1], n=n))
    with compat.abstract_device("cuda"):
        text = f.trace(x, *args, scale).lower(lowering_platforms=("cuda",)).as_text()
    assert "ecf8_grouped_gemv" in text


def _encode_16bit(w, steps):
    u = np.ascontiguousarray(w).view(np.uint16).reshape(-1)
    chunks = -(-u.size // (steps * 128))
    stream, offsets, raw, lengths = encode_grouped(u, steps, chunks, grouped.WIDE)
    return grouped.kernel_args(stream, offsets, raw, lengths, np)


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_16bit_fused_gemv_equals_its_raw_twin_bit_for_bit(m, dtype):
    n, k = 24, 1024  # 64 steps: 8 rows a chunk, 3 chunks
    w = _weight(n, k, dtype, seed=4)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((m, k)), jnp.bfloat16)
    ones = jnp.ones((n,), jnp.float32)
    fused = grouped_gemv_gpu(x, *_encode_16bit(w, 64), ones, n=n, fp8_dtype=jnp.dtype(dtype),
                             interpret=True)  # fmt: skip
    twin = fp8_rows_gemv(x, jnp.asarray(w), ones, chunk_steps=64, interpret=True)
    np.testing.assert_array_equal(np.asarray(fused).view(np.uint32),
                                  np.asarray(twin).view(np.uint32))  # fmt: skip
    ref = np.asarray(gemv_reference(x.astype(jnp.float32), jnp.asarray(w), ones))
    np.testing.assert_allclose(np.asarray(fused), ref, rtol=1e-4, atol=1e-4)  # float math


def test_16bit_fused_gemv_lowers_for_cuda():
    n, k = 64, 4096
    args = _encode_16bit(_weight(n, k, ml_dtypes.bfloat16), 2048)
    args = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]
    x, scale = jax.ShapeDtypeStruct((1, k), jnp.bfloat16), jax.ShapeDtypeStruct((n,), jnp.float32)
    f = jax.jit(lambda x, *a: grouped_gemv_gpu(x, *a[:-1], a[-1], n=n, fp8_dtype=jnp.bfloat16))
    with compat.abstract_device("cuda"):
        text = f.trace(x, *args, scale).lower(lowering_platforms=("cuda",)).as_text()
    assert "ecf8_grouped_gemv" in text
