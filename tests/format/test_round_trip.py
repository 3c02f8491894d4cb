"""Lossless encode -> decode round trips of ``ecf8_jax.encode`` / ``ecf8_jax.decode``.

Every comparison is on uint8 views: a lossless codec must reproduce each bit pattern, NaN
payloads and signed zeros included. Decoding is jitted once per (shape, dtype, array shapes);
``_round_trip`` pads streams to their capacity so tests of one shape share one compilation.
"""

from __future__ import annotations

import dataclasses

import jax
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
LANES = 128
DECODE = jax.jit(ecf8_jax.decode)


def _assert_bits_equal(actual, expected) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


def _pad_to_capacity(t: ecf8_jax.Ecf8Tensor) -> ecf8_jax.Ecf8Tensor:
    """Zero-pads the stream to the most words C chunks can use (S * 128 units per chunk).

    Units past ``chunk_offsets[C]`` are never used, so this decodes identically; all tensors of
    one shape then share one compiled decode.
    """
    words = t.num_chunks * t.chunk_steps * LANES // 2
    assert t.stream.shape[0] <= words
    return dataclasses.replace(t, stream=np.pad(t.stream, (0, words - t.stream.shape[0])))


def _round_trip(x, *, chunk_steps=None, pad=True) -> ecf8_jax.Ecf8Tensor:
    t = encode_v1(x, chunk_steps=chunk_steps)
    ecf8_jax.verify_checksums(t)
    out = DECODE(_pad_to_capacity(t) if pad else t)
    _assert_bits_equal(out, np.asarray(x))
    return t


def _tile_to(raw: np.ndarray, shape, seed: int) -> np.ndarray:
    """``raw`` repeated to fill ``shape``, shuffled."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(np.resize(raw, n)).reshape(shape)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_every_bit_pattern_round_trips(dtype):
    x = np.arange(256, dtype=np.uint8).view(dtype)
    t = _round_trip(x, pad=False)
    assert (t.code_lengths > 0).all()  # all 128 magnitudes present


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_every_bit_pattern_round_trips_shuffled_in_a_matrix(dtype):
    x = _tile_to(np.arange(256, dtype=np.uint8), (64, 64), seed=0).view(dtype)
    _round_trip(x, chunk_steps=32)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
@pytest.mark.parametrize("byte", [0x00, 0x80, 0x38, 0x7F, 0xFF, 0x01])
def test_constant_tensor_has_one_code_of_length_1_and_round_trips(dtype, byte):
    x = np.full((64, 64), byte, np.uint8).view(dtype)
    t = _round_trip(x, chunk_steps=32)
    expected = np.zeros(128, np.uint8)
    expected[byte & 0x7F] = 1
    np.testing.assert_array_equal(t.code_lengths, expected)
    # One bit per weight: 32 bits per lane, i.e. 2 units plus the one taken a step early.
    assert int(t.chunk_offsets[-1]) == 3 * LANES


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_two_symbol_tensor_round_trips(dtype):
    x = _tile_to(np.array([0x38, 0xB0], np.uint8), (64, 64), seed=1).view(dtype)
    t = _round_trip(x, chunk_steps=32)
    assert sorted(np.flatnonzero(t.code_lengths)) == [0x30, 0x38]


@pytest.mark.parametrize("shape", [(0,), (3, 0, 5)])
@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_empty_tensor_round_trips(shape, dtype):
    x = np.zeros(shape, dtype)
    t = _round_trip(x, pad=False)
    assert t.num_chunks == 0
    assert t.stream.shape == (0,)
    np.testing.assert_array_equal(t.chunk_offsets, [0])
    assert t.signs.shape[0] == 0
    assert not t.code_lengths.any()
    ecf8_jax.validate(t)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_scalar_round_trips(dtype):
    x = np.array(-1.5, dtype)
    assert x.shape == ()
    t = _round_trip(x, pad=False)
    assert t.shape == ()
    assert t.num_chunks == 1


def test_single_weight_round_trips():
    _round_trip(np.array([-448.0], E4M3), pad=False)


@pytest.mark.parametrize(
    "n, chunks",
    [
        (129, 1),  # one lane past the first step
        (4097, 2),  # one weight in the last chunk
        (12287, 3),  # one weight short of three full chunks
        (8192, 2),  # exactly two full chunks
    ],
)
def test_lengths_not_a_multiple_of_the_chunk_round_trip(n, chunks):
    rng = np.random.default_rng(n)
    x = (rng.standard_t(3, n) * 0.1).astype(E5M2)
    t = _round_trip(x, chunk_steps=32, pad=False)  # unpadded: reads past the end are clamped
    assert t.chunk_steps == 32
    assert t.num_chunks == chunks


def test_uniform_random_bytes_cost_at_most_one_percent_over_8_bits_and_round_trip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, 1 << 17, dtype=np.uint8).view(E4M3)
    t = _round_trip(x)
    assert (t.code_lengths == 7).all()
    assert t.bits_per_weight <= 8 * 1.01


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_gaussian_weights_cost_about_sign_plus_mantissa_plus_exponent_entropy(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1 << 17) * 0.02).astype(dtype)
    s = ecf8_jax.stats(x, version=1)
    mantissa_bits = {E4M3: 3, E5M2: 2}[np.dtype(dtype)]
    # 1 sign bit + raw mantissa + H(exponent); e4m3fn: 4 + H(exponent).
    assert abs(s.bits_per_weight - (1 + mantissa_bits + s.exponent_entropy)) <= 0.08
    assert s.bits_per_weight < 8


def test_gaussian_weights_round_trip():
    rng = np.random.default_rng(2)
    _round_trip((rng.standard_normal(1 << 17) * 0.02).astype(E4M3))


def test_encode_accepts_jax_arrays_like_numpy_arrays():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 64))).astype(E4M3)
    from_jax = encode_v1(jnp.asarray(x), chunk_steps=32)
    from_numpy = encode_v1(x, chunk_steps=32)
    for a, b in zip(jax.tree_util.tree_leaves(from_jax), jax.tree_util.tree_leaves(from_numpy)):
        np.testing.assert_array_equal(a, b)
    assert from_jax.metadata() == from_numpy.metadata()
    _assert_bits_equal(DECODE(_pad_to_capacity(from_jax)), x)


def test_encode_accepts_non_contiguous_arrays():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (128, 64), dtype=np.uint8).view(E4M3)[::2].T  # (64, 64) view
    assert not x.flags.c_contiguous
    _round_trip(x, chunk_steps=32)


@pytest.mark.parametrize(
    "dtype",
    [
        np.float32,
        np.uint8,
        np.int8,
        np.uint16,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2fnuz,
        ml_dtypes.float8_e4m3b11fnuz,
    ],
)
def test_encode_rejects_dtypes_the_format_does_not_carry_with_type_error(dtype):
    # bfloat16 and float16 are carried by version 2 (tests/format/test_wide.py).
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        encode_v1(np.zeros((4, 4), dtype))


def test_chunk_steps_32_gives_many_chunks_of_32_steps():
    x = np.random.default_rng(5).integers(0, 256, 20000, dtype=np.uint8).view(E4M3)
    t = encode_v1(x, chunk_steps=32)
    assert t.chunk_steps == 32
    assert t.num_chunks == 5  # ceil(20000 / (128 * 32))
    assert t.signs.shape == (5, 1, LANES)
    assert t.chunk_offsets.shape == t.checksums.shape == (6,)
    _assert_bits_equal(DECODE(t), x)


@pytest.mark.parametrize("n", [1, 4096, 20000, 1 << 17, (1 << 17) + 1, 1 << 20])
@pytest.mark.parametrize("limit", [None, 32, 64, 1024])
def test_chunk_steps_is_a_bounded_multiple_of_32_with_no_extra_chunk(n, limit):
    t = encode_v1(np.zeros(n, E4M3), chunk_steps=limit)
    limit = 1024 if limit is None else limit
    assert t.chunk_steps % 32 == 0
    assert 0 < t.chunk_steps <= limit
    assert t.num_chunks == -(-n // (LANES * limit))  # balancing never adds a chunk
    # Balanced: the last chunk is short by less than one sign word of steps per chunk.
    assert t.num_chunks * t.chunk_steps * LANES - n < t.num_chunks * 32 * LANES


@pytest.mark.parametrize("chunk_steps", [0, -32, 16, 31, 48, 100])
def test_invalid_chunk_steps_raise_value_error(chunk_steps):
    with pytest.raises(ValueError, match="multiple of 32"):
        encode_v1(np.zeros(10, E4M3), chunk_steps=chunk_steps)


@pytest.mark.parametrize("chunk_steps", [32.5, 63.9])
def test_non_integer_chunk_steps_raise_instead_of_being_truncated(chunk_steps):
    # 32.5 is not a multiple of 32; int() would silently turn it into 32 (and 63.9 into 63).
    with pytest.raises((TypeError, ValueError)):
        encode_v1(np.zeros(10, E4M3), chunk_steps=chunk_steps)


def test_tensor_spanning_several_encoder_blocks_round_trips():
    # 2**18 weights per encoder block: 65 chunks of 4096 weights span two blocks.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1 << 18) + 5) * 0.02).astype(E4M3)
    t = _round_trip(x, chunk_steps=32, pad=False)
    assert t.num_chunks == 65


def test_chunks_of_more_than_4095_steps_round_trip():
    # S * 16 bits no longer fits the encoder's uint16 bit counters: the int32 path.
    rng = np.random.default_rng(8)
    x = (rng.standard_cauchy(128 * 4096 + 3) * 0.01).astype(E5M2)
    t = _round_trip(x, chunk_steps=8192, pad=False)
    assert (t.num_chunks, t.chunk_steps) == (1, 4128)


def test_nan_signed_zero_subnormal_and_extremes_round_trip():
    specials = {
        E4M3: [0x7F, 0xFF, 0x00, 0x80, 0x01, 0x81, 0x07, 0x7E, 0xFE],  # NaN, ±0, subnormals, ±max
        E5M2: [0x7F, 0x7D, 0x7C, 0xFC, 0x00, 0x80, 0x01, 0x83, 0x7B, 0xFB],  # NaNs, ±inf, ...
    }
    for dtype, patterns in specials.items():
        rng = np.random.default_rng(6)
        raw = (rng.standard_normal((64, 64)) * 0.02).astype(dtype).view(np.uint8).copy()
        where = rng.choice(raw.size, 400, replace=False)
        raw.reshape(-1)[where] = np.resize(np.array(patterns, np.uint8), where.size)
        _round_trip(raw.view(dtype), chunk_steps=32)


def test_decode_chunks_returns_the_asked_chunks_in_order_and_clamps_ids():
    rng = np.random.default_rng(11)
    w = rng.integers(0, 256, 7 * 4096 + 100, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
    t = encode_v1(w, chunk_steps=32)  # 4096 weights per chunk, 8 chunks (last ragged)
    slots = np.asarray(jax.jit(ecf8_jax.decode)(t)).view(np.uint8)
    padded = np.zeros(8 * 4096, np.uint8)
    padded[: w.size] = slots
    expected = padded.reshape(8, 4096)
    ids = jnp.array([7, 0, 3, 3, -4, 99])
    got = np.asarray(jax.jit(ecf8_jax.decode_chunks)(t, ids))
    assert got.shape == (6, 4096) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0, :100], expected[7, :100])  # the rest is padding
    np.testing.assert_array_equal(got[1:4], expected[[0, 3, 3]])
    np.testing.assert_array_equal(got[4], expected[0])  # clamped, never out of bounds
    np.testing.assert_array_equal(got[5], got[0])
