"""Format version 2 ("grouped"): round trips, the worked example, sizes, validation, checksums."""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format import grouped
from ecf8_jax.format.codebook import code_lengths

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2


def _bits(x) -> bytes:
    return np.asarray(x).view(np.uint8).tobytes()


def _round_trip(x, **kw):
    t = ecf8_jax.encode(x, **kw)
    ecf8_jax.verify_checksums(t)
    y = ecf8_jax.decode(t)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert _bits(y) == _bits(x)
    return t


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_every_bit_pattern_round_trips_in_version_2(dtype):
    # NaNs, +-0, subnormals, the max value and (E5M2) infinities are ordinary inputs.
    x = np.arange(256, dtype=np.uint8).repeat(37).view(dtype)
    t = _round_trip(x, chunk_steps=32)
    assert t.version == 2 and t.num_chunks > 1


@pytest.mark.parametrize("shape", [(0,), (), (1,), (3,), (127,), (129,), (513, 7), (2, 3, 4, 5)])
def test_awkward_shapes_round_trip(shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 0.1).astype(E4M3)
    _round_trip(x)


def test_flat_encode_writes_version_2_and_tiles_version_1():
    x = np.ones((256, 128), E4M3)
    assert ecf8_jax.encode(x).version == ecf8_jax.FORMAT_VERSION == 2
    assert ecf8_jax.encode(x, layout="tiles").version == 1
    with pytest.raises(ValueError, match="layout 'flat' only"):
        ecf8_jax.encode(x, layout="tiles", version=2)


def test_version_1_tensors_still_decode_bit_exactly():
    x = (np.random.default_rng(2).standard_normal(5000) * 0.05).astype(E4M3)
    t = _round_trip(x, version=1)
    assert t.version == 1 and t.code_lengths.shape == (128,)


def test_worked_example_by_hand():
    # 1.0, -0.5, 1.0 as e4m3fn: 0 0111 000, 1 0110 000, 0 0111 000.
    x = np.array([1.0, -0.5, 1.0], E4M3)
    t = ecf8_jax.encode(x)
    # Symbols (bits 6..3) 7, 6, 7: two symbols, both 1-bit codes; canonical 6 -> 0, 7 -> 1.
    lengths = np.zeros(16, np.uint8)
    lengths[[6, 7]] = 1
    np.testing.assert_array_equal(t.code_lengths, lengths[None])
    # One chunk of 32 steps; slots 0, 1, 2 are lane 0's steps 0, 1, 2: bits 1 0 1. The longest
    # code is 1 bit, so lanes refill below 4 bits; only lane 0 holds weights.
    assert t.chunk_steps == 32
    np.testing.assert_array_equal(t.stream, np.array([0xA0000000], np.uint32))
    np.testing.assert_array_equal(t.chunk_offsets, np.array([0, 1], np.uint32))
    # Nibbles (sign << 3 | low bits): 0, 8, 0 at bits 0, 4, 8 of lane 0's first raw word.
    expected_raw = np.zeros((1, 4, 128), np.uint32)
    expected_raw[0, 0, 0] = 0x80
    np.testing.assert_array_equal(t.signs, expected_raw)
    assert t.nbytes == 4 + 8 + 4 * 128 * 4 + 16 + 8
    assert _bits(ecf8_jax.decode(t)) == b"\x38\xb0\x38"


def test_lookup_table_decodes_every_canonical_code():
    counts = np.array([900, 500, 300, 200, 80, 40, 20, 9, 5, 3, 2, 1, 1, 1, 1, 1])
    lengths = code_lengths(counts, grouped.MAX_CODE_LEN)
    assert lengths.max() == grouped.MAX_CODE_LEN  # the limit binds
    codes = grouped.canonical_codes(lengths, np)
    lut = grouped.decode_lut(lengths, np)
    for s in range(16):
        l, c = int(lengths[s]), int(codes[s])
        first, last = c << (8 - l), (c + 1) << (8 - l)
        assert (lut[first:last] == (s << 4) | l).all(), s
    # A complete code leaves no peek undecoded.
    assert sum(2 ** (8 - int(l)) for l in lengths if l) == 256


def test_jnp_and_numpy_tables_agree():
    lengths = np.array([[1, 2, 3, 3] + [0] * 12, [4] * 16, [0] * 15 + [1]], np.uint8)
    np.testing.assert_array_equal(
        np.asarray(grouped.decode_lut(jax.numpy.asarray(lengths), jax.numpy)),
        grouped.decode_lut(lengths, np),
    )
    np.testing.assert_array_equal(grouped.refill_below(lengths, np), [12, 16, 4])


def test_the_encoders_canonical_codes_are_the_formats():
    # grouped_encoder numbers codes by Kraft sums; the format defines them by counts per length.
    from ecf8_jax.format.grouped_encoder import _canonical_codes

    rng = np.random.default_rng(0)
    for symbols in (16, 256):
        for _ in range(40):
            counts = rng.integers(0, 1000, symbols) * (rng.random(symbols) < 0.6)
            counts[rng.integers(symbols)] += 1
            lengths = code_lengths(counts, grouped.MAX_CODE_LEN)
            np.testing.assert_array_equal(
                _canonical_codes(lengths), grouped.canonical_codes(lengths, np)
            )


def test_incompressible_bytes_stay_below_8_02_bits():
    x = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).view(E4M3)
    t = _round_trip(x)
    assert t.bits_per_weight <= 8.02


def test_gaussian_fp8_compresses():
    w = np.random.default_rng(4).standard_normal((1024, 1024)).astype(np.float32)
    x = (w / np.abs(w).max(axis=1, keepdims=True) * 448).astype(E4M3)
    t = _round_trip(x)
    assert t.bits_per_weight < 6.9


def test_chunks_have_their_own_codebooks():
    # Two halves with different exponent ranges: per-chunk codebooks beat one shared code.
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(128 * 256) * 1e-2).astype(E4M3)
    b = (rng.standard_normal(128 * 256) * 1e2).astype(E4M3)
    t = _round_trip(np.concatenate([a, b]), chunk_steps=256)
    assert t.num_chunks == 2
    assert not np.array_equal(t.code_lengths[0], t.code_lengths[1])


def _tensor():
    x = (np.random.default_rng(6).standard_normal(3000) * 0.05).astype(E4M3)
    return ecf8_jax.encode(x, chunk_steps=32)


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("code_lengths", lambda a: np.where(np.arange(16) == 0, 9, a).astype(np.uint8), "9 bits"),
        ("code_lengths", lambda a: np.ones_like(a), "over-subscribed"),
        ("code_lengths", lambda a: np.zeros_like(a), "no symbol present"),
        ("chunk_offsets", lambda a: a[::-1].copy(), r"chunk_offsets\[0\]"),
        ("stream", lambda a: a[: a.size // 2].copy(), "truncated"),
        ("signs", lambda a: a[:, :-1].copy(), "signs"),
        ("checksums", lambda a: a[:-1].copy(), "checksums"),
    ],
)
def test_malformed_version_2_tensors_are_refused_with_the_reason(field, change, message):
    t = _tensor()
    bad = dataclasses.replace(t, **{field: change(np.asarray(getattr(t, field)))})
    with pytest.raises(ecf8_jax.FormatError, match=message):
        ecf8_jax.validate(bad)


@pytest.mark.parametrize("field", ["stream", "signs", "code_lengths"])
def test_a_flipped_bit_is_caught_by_the_chunk_checksum(field):
    t = _tensor()
    arr = np.array(getattr(t, field))
    if field == "code_lengths":  # swap two different lengths: still a valid code
        row = arr[-1]
        i, j = np.flatnonzero(row != row[np.argmax(row)])[0], int(np.argmax(row))
        row[[i, j]] = row[[j, i]]
    else:
        arr.reshape(-1).view(np.uint8)[arr.nbytes // 2] ^= 0x10
    with pytest.raises(ecf8_jax.FormatError, match="checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, **{field: arr}))


def test_unknown_versions_are_refused():
    with pytest.raises(ecf8_jax.FormatError, match="unsupported ECF8 format version 3"):
        ecf8_jax.decode(dataclasses.replace(_tensor(), version=3))
    with pytest.raises(ValueError, match="unknown format version"):
        ecf8_jax.encode(np.ones(4, E4M3), version=3)
