"""Tests of ecf8_jax.quantize: scaled FP8 quantization (the lossy step before ECF8)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ecf8_jax.quantize import dequantize_fp8, fp8_max, quantize_fp8

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
FP8_DTYPES = [pytest.param(E4M3, id="e4m3fn"), pytest.param(E5M2, id="e5m2")]
MANTISSA_BITS = {E4M3: 3, E5M2: 2}


def _finite_fp8_values(dtype) -> np.ndarray:
    """Every finite value of ``dtype`` (both zeros included), in byte order."""
    values = np.arange(256, dtype=np.uint8).view(dtype)
    return values[np.isfinite(values.astype(np.float32))]


def _heavy_tailed(seed: int, shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, shape) * 0.02).astype(np.float32)


def test_fp8_max_is_448_for_e4m3fn_and_57344_for_e5m2():
    assert fp8_max(E4M3) == 448.0
    assert fp8_max(ml_dtypes.float8_e5m2) == 57344.0
    with pytest.raises(ValueError, match="float8"):
        fp8_max(np.float16)


def test_row_scales_have_one_per_output_row():
    w = _heavy_tailed(0, (48, 32))
    q, scale = quantize_fp8(w)
    assert q.shape == w.shape and q.dtype == E4M3
    assert scale.shape == (48, 1) and scale.dtype == np.float32
    q3, scale3 = quantize_fp8(_heavy_tailed(1, (2, 5, 7)), granularity="row")
    assert q3.shape == (2, 5, 7) and scale3.shape == (2, 5, 1)


def test_tensor_scale_is_a_float32_scalar():
    w = _heavy_tailed(0, (48, 32))
    q, scale = quantize_fp8(w, granularity="tensor")
    assert q.shape == w.shape and scale.shape == () and scale.dtype == np.float32
    np.testing.assert_equal(scale, np.max(np.abs(w)) / np.float32(448))


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_each_rows_amax_maps_to_the_dtype_max_exactly(dtype):
    w = _heavy_tailed(2, (64, 100))
    w[3] *= 1e-6  # tiny and huge rows: the scale, not the magnitude, sets the grid
    w[4] *= 1e6
    q, _ = quantize_fp8(w, dtype=dtype)
    qf = q.astype(np.float32)
    rows = np.arange(w.shape[0])
    at_amax = qf[rows, np.argmax(np.abs(w), axis=1)]
    np.testing.assert_array_equal(np.abs(at_amax), fp8_max(dtype))
    np.testing.assert_array_equal(np.sign(at_amax), np.sign(w[rows, np.argmax(np.abs(w), axis=1)]))
    np.testing.assert_array_equal(np.max(np.abs(qf), axis=1), fp8_max(dtype))


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_tensor_amax_maps_to_the_dtype_max_exactly(dtype):
    w = _heavy_tailed(3, (16, 16))
    q, _ = quantize_fp8(w, granularity="tensor", dtype=dtype)
    assert np.max(np.abs(q.astype(np.float32))) == fp8_max(dtype)


@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("dtype", FP8_DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantized_error_is_at_most_half_an_fp8_ulp(dtype, granularity, seed):
    # Normal range: |x - q| <= ulp/2 = 2**(e - m - 1) <= |x| * 2**-(m + 1) for x in [2**e, 2**(e+1)).
    # Subnormal range: |x - q| <= smallest_subnormal / 2. Here x = w / scale; errors scale by it.
    w = _heavy_tailed(seed, (32, 257))
    q, scale = quantize_fp8(w, granularity=granularity, dtype=dtype)
    x_err = np.maximum(
        np.abs(w / scale) * 2.0 ** -(MANTISSA_BITS[dtype] + 1),
        float(ml_dtypes.finfo(dtype).smallest_subnormal) / 2,
    )
    bound = x_err * scale * (1 + 1e-6)  # float32 rounding of w / scale and of q * scale
    err = np.abs(dequantize_fp8(q, scale) - w)
    assert np.all(err <= bound), f"worst excess {np.max(err - bound)}"


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_fp8_values_at_unit_scale_are_reproduced_bit_exactly(dtype):
    values = _finite_fp8_values(dtype)  # includes ±max, so the scale is exactly 1
    q, scale = quantize_fp8(values.astype(np.float32)[None, :], dtype=dtype)
    assert scale[0, 0] == 1.0
    np.testing.assert_array_equal(q[0].view(np.uint8), values.view(np.uint8))


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_float_rounding_of_the_scale_never_overflows_to_nan_or_inf(dtype):
    # w / (amax / max) is max only up to float32 rounding; across many random row magnitudes
    # every row's largest value must still land exactly on ±max (saturated, never NaN or inf).
    rng = np.random.default_rng(7)
    w = rng.uniform(-1, 1, (2000, 8)) * 10.0 ** rng.uniform(-30, 30, (2000, 1))
    q, _ = quantize_fp8(w.astype(np.float32), dtype=dtype)
    qf = q.astype(np.float32)
    assert np.all(np.isfinite(qf))
    np.testing.assert_array_equal(np.max(np.abs(qf), axis=1), fp8_max(dtype))


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_extreme_dynamic_range_gives_no_nan_or_inf(dtype):
    w = np.array([[1e30, -1e-30, 3e-8, 0.0], [-1e-38, 1e-45, 0.0, 2e-38]], np.float32)
    q, scale = quantize_fp8(w, dtype=dtype)
    assert np.all(np.isfinite(q.astype(np.float32))) and np.all(np.isfinite(scale))
    assert np.all(scale > 0)


def test_zero_rows_get_scale_one_and_quantize_to_zero():
    w = _heavy_tailed(4, (4, 8))
    w[1] = 0.0
    w[2] = -0.0
    q, scale = quantize_fp8(w)
    assert scale[1, 0] == 1.0 and scale[2, 0] == 1.0
    assert np.all(q[1].astype(np.float32) == 0) and np.all(q[2].astype(np.float32) == 0)
    assert np.all(scale[[0, 3]] != 1.0)


def test_all_zero_tensor_gets_scale_one():
    q, scale = quantize_fp8(np.zeros((3, 5), np.float32), granularity="tensor")
    assert scale == 1.0 and not np.any(q.view(np.uint8))


def test_empty_rows_are_allowed():
    q, scale = quantize_fp8(np.zeros((3, 0), np.float32))
    assert q.shape == (3, 0) and scale.shape == (3, 1) and np.all(scale == 1.0)


def test_accepts_bfloat16_and_float64_input():
    w = _heavy_tailed(5, (8, 16))
    q32, s32 = quantize_fp8(w)
    q64, s64 = quantize_fp8(w.astype(np.float64))
    np.testing.assert_array_equal(q64.view(np.uint8), q32.view(np.uint8))
    np.testing.assert_array_equal(s64, s32)
    qbf, _ = quantize_fp8(w.astype(ml_dtypes.bfloat16))
    assert qbf.dtype == E4M3


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_rejects_non_finite_weights(bad):
    w = np.ones((2, 3), np.float32)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_fp8(w)
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_fp8(w, granularity="tensor")


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        quantize_fp8(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="granularity"):
        quantize_fp8(np.ones((2, 2), np.float32), granularity="channel")
    with pytest.raises(ValueError, match="float8"):
        quantize_fp8(np.ones((2, 2), np.float32), dtype=np.float16)


def test_dequantize_broadcasts_row_and_tensor_scales():
    w = _heavy_tailed(6, (4, 8))
    for granularity in ("row", "tensor"):
        q, scale = quantize_fp8(w, granularity=granularity)
        out = dequantize_fp8(q, scale)
        assert out.shape == w.shape and out.dtype == np.float32
