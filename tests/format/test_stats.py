"""``ecf8_jax.stats``: exponent histogram, entropies, bits/weight and the byte breakdown."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
FP8_DTYPES = [pytest.param(E4M3, id="e4m3fn"), pytest.param(E5M2, id="e5m2")]
EXPONENT_BITS = {E4M3: 4, E5M2: 5}  # e4m3fn: s eeee mmm, e5m2: s eeeee mm


def _gaussian(dtype, n=50_000, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(dtype)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_exponent_histogram_sums_to_n_and_matches_a_direct_count(dtype):
    x = _gaussian(dtype)
    s = ecf8_jax.stats(x)
    ebits = EXPONENT_BITS[np.dtype(dtype)]
    assert s.exponent_histogram.shape == (1 << ebits,)
    assert int(s.exponent_histogram.sum()) == x.size
    raw = x.view(np.uint8)
    for e in range(1 << ebits):
        field = (raw >> (7 - ebits)) & ((1 << ebits) - 1)
        assert s.exponent_histogram[e] == np.count_nonzero(field == e), e
    # Zeros and subnormals have exponent field 0; 1.0 has the bias (7 or 15).
    ones = ecf8_jax.stats(np.ones(10, dtype)).exponent_histogram
    assert ones[(1 << (ebits - 1)) - 1] == 10


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_uniform_bytes_have_about_8_bits_of_byte_entropy_and_full_exponent_entropy(dtype):
    x = np.random.default_rng(1).integers(0, 256, 1 << 18, dtype=np.uint8).view(dtype)
    s = ecf8_jax.stats(x)
    assert s.byte_entropy == pytest.approx(8.0, abs=0.01)
    assert s.exponent_entropy == pytest.approx(EXPONENT_BITS[np.dtype(dtype)], abs=0.01)


def test_every_byte_once_has_exactly_8_bits_of_entropy():
    s = ecf8_jax.stats(np.arange(256, dtype=np.uint8).view(E4M3))
    assert s.byte_entropy == pytest.approx(8.0, abs=1e-12)
    assert s.exponent_entropy == pytest.approx(4.0, abs=1e-12)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_constant_tensor_has_zero_entropy(dtype):
    s = ecf8_jax.stats(np.full((30, 40), -2.0, dtype))
    assert s.byte_entropy == 0.0
    assert s.exponent_entropy == 0.0


def test_four_equally_likely_bytes_have_2_bits_of_entropy():
    raw = np.repeat(np.array([0x38, 0xB8, 0x40, 0xC0], np.uint8), 1000)  # ±1, ±2
    s = ecf8_jax.stats(raw.view(E4M3))
    assert s.byte_entropy == pytest.approx(2.0, abs=1e-12)
    assert s.exponent_entropy == pytest.approx(1.0, abs=1e-12)  # exponents 7 and 8


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_breakdown_sums_to_nbytes_and_bits_per_weight_matches_the_encoding(dtype):
    x = _gaussian(dtype).reshape(250, 200)
    s = ecf8_jax.stats(x, version=1)
    t = encode_v1(x)
    assert s.size == x.size
    assert s.dtype == t.dtype
    assert set(s.breakdown) == {"stream", "chunk_offsets", "signs", "code_lengths", "checksums"}
    assert sum(s.breakdown.values()) == t.nbytes
    assert s.breakdown["code_lengths"] == 128
    assert s.breakdown["stream"] == 4 * t.stream.shape[0]
    assert s.bits_per_weight == pytest.approx(8 * t.nbytes / x.size)
    assert s.bits_per_weight == pytest.approx(t.bits_per_weight)


def test_stats_passes_encode_options_and_reuses_a_given_encoding():
    x = _gaussian(E4M3)
    small_chunks = encode_v1(x, chunk_steps=32)
    s = ecf8_jax.stats(x, chunk_steps=32, version=1)
    assert sum(s.breakdown.values()) == small_chunks.nbytes
    assert s.breakdown["chunk_offsets"] == 4 * (small_chunks.num_chunks + 1)
    assert ecf8_jax.stats(x, encoded=small_chunks).breakdown == s.breakdown


def test_stats_accepts_jax_arrays_and_scalars():
    x = _gaussian(E5M2, n=5000)
    from_jax, from_numpy = ecf8_jax.stats(jnp.asarray(x)), ecf8_jax.stats(x)
    np.testing.assert_array_equal(from_jax.exponent_histogram, from_numpy.exponent_histogram)
    assert from_jax.byte_entropy == from_numpy.byte_entropy
    assert from_jax.breakdown == from_numpy.breakdown
    scalar = ecf8_jax.stats(np.array(3.0, E4M3))
    assert scalar.size == 1
    assert scalar.byte_entropy == 0.0


def test_stats_of_an_empty_tensor_is_zero_entropy_without_dividing_by_zero():
    s = ecf8_jax.stats(np.zeros((0, 4), E4M3))
    assert s.size == 0
    assert s.byte_entropy == s.exponent_entropy == 0.0
    assert int(s.exponent_histogram.sum()) == 0
    assert math.isfinite(s.bits_per_weight)


def test_stats_rejects_non_fp8_dtypes():
    with pytest.raises(TypeError):
        ecf8_jax.stats(np.zeros(4, np.float32))


def test_stats_str_reports_entropies_and_bits_per_weight():
    text = str(ecf8_jax.stats(_gaussian(E4M3, n=1000)))
    assert "1000 x float8_e4m3fn" in text
    assert "H(exponent)" in text and "bits/weight" in text
