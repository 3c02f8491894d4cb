"""The fused version-2 decode + GEMV (Triton) against its raw-FP8 twin, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format import grouped
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
