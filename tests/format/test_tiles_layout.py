"""The ``tiles`` layout: chunks are [chunk_steps, 128] tiles of a 2-D weight."""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format.codebook import canonical_tables
from pallas_kernels.ecf8_decode.reference import ecf8_decode_reference


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
decode = jax.jit(ecf8_jax.decode)


def _weight(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.05).astype(E4M3)


@pytest.mark.parametrize("shape", [(64, 128), (33, 256), (100, 384), (1, 128), (0, 256)])
def test_tiles_layout_round_trips_bit_exactly(shape):
    x = _weight(shape)
    t = encode_v1(x, layout="tiles", chunk_steps=32)
    ecf8_jax.verify_checksums(t)
    out = np.asarray(decode(t))
    assert out.shape == shape
    np.testing.assert_array_equal(out.view(np.uint8), x.view(np.uint8))


def test_each_chunk_is_one_tile_of_rows_by_128_columns():
    x = _weight((70, 256), seed=1)
    t = encode_v1(x, layout="tiles", chunk_steps=32)
    assert t.chunk_steps == 32 and t.num_chunks == 3 * 2  # 70 rows -> 3 row blocks of 32
    slots = np.asarray(ecf8_decode_reference(*_raw(t))).reshape(6, 32, 128)
    # chunk rb * 2 + cb holds rows rb*32 .. and columns cb*128 ..; rows past 70 are padding.
    np.testing.assert_array_equal(slots[1], x.view(np.uint8)[:32, 128:])
    np.testing.assert_array_equal(slots[3], x.view(np.uint8)[32:64, 128:])
    np.testing.assert_array_equal(slots[4, :6], x.view(np.uint8)[64:, :128])


def _raw(t):
    limits, deltas, symbols = canonical_tables(t.code_lengths, np)
    return t.stream, t.chunk_offsets, t.signs, limits, deltas, symbols


def test_tiles_cost_about_the_same_as_flat():
    x = _weight((1000, 512), seed=2)
    flat = encode_v1(x).bits_per_weight
    tiles = encode_v1(x, layout="tiles").bits_per_weight
    assert abs(tiles - flat) < 0.05


@pytest.mark.parametrize("shape", [(10,), (4, 100), (2, 3, 128)])
def test_tiles_layout_rejects_shapes_it_cannot_tile(shape):
    with pytest.raises(ValueError, match="multiple of 128"):
        encode_v1(_weight(shape), layout="tiles")


def test_unknown_layout_is_rejected_by_encode_validate_and_decode():
    x = _weight((4, 128))
    with pytest.raises(ValueError, match="unknown layout"):
        encode_v1(x, layout="columns")
    t = dataclasses.replace(encode_v1(x), layout="columns")
    with pytest.raises(ecf8_jax.FormatError, match="unknown layout"):
        ecf8_jax.validate(t)
    with pytest.raises(ecf8_jax.FormatError, match="unknown layout"):
        ecf8_jax.decode(t)


def test_header_checksum_covers_the_layout():
    x = _weight((32, 128))
    t = encode_v1(x, layout="tiles", chunk_steps=32)
    flipped = dataclasses.replace(t, layout="flat")  # same arrays, other meaning
    ecf8_jax.validate(flipped)
    with pytest.raises(ecf8_jax.FormatError, match="header"):
        ecf8_jax.verify_checksums(flipped)
