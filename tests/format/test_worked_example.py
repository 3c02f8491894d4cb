"""The worked example of docs/FORMAT.md, checked word by word.

``x = [1.0, -0.5, 1.0]`` as ``float8_e4m3fn`` is bytes ``0x38 0xB0 0x38``:

    0x38 = 0 0111 000  (+1.0)   magnitude 56
    0xB0 = 1 0110 000  (-0.5)   magnitude 48
    0x38 = 0 0111 000  (+1.0)   magnitude 56

Two symbols, both of length 1; canonical order (length, magnitude) gives 48 -> ``0`` and
56 -> ``1``. One chunk of S = 32 steps; lanes 0, 1, 2 hold one code bit each, so their units
are ``8000 0000 8000``, padded to whole words: ``stream = [0x80000000, 0x80000000]``.
"""

from __future__ import annotations

import zlib

import jax
import ml_dtypes
import numpy as np

import ecf8_jax
from ecf8_jax.format.codebook import canonical_codes, canonical_tables


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


X = np.array([1.0, -0.5, 1.0], dtype=ml_dtypes.float8_e4m3fn)


def _encoded() -> ecf8_jax.Ecf8Tensor:
    return encode_v1(X)


def test_worked_example_input_bytes_are_as_documented():
    np.testing.assert_array_equal(X.view(np.uint8), np.array([0x38, 0xB0, 0x38], np.uint8))


def test_worked_example_metadata_is_one_chunk_of_32_steps():
    t = _encoded()
    assert t.shape == (3,)
    assert t.dtype == "float8_e4m3fn"
    assert t.version == 1
    assert t.chunk_steps == 32
    assert t.num_chunks == 1


def test_worked_example_code_lengths_are_one_for_magnitudes_48_and_56_only():
    t = _encoded()
    expected = np.zeros(128, np.uint8)
    expected[48] = expected[56] = 1
    assert t.code_lengths.dtype == np.uint8
    np.testing.assert_array_equal(t.code_lengths, expected)


def test_worked_example_canonical_codes_give_48_code_0_and_56_code_1():
    codes = canonical_codes(_encoded().code_lengths)
    assert int(codes[48]) == 0
    assert int(codes[56]) == 1


def test_worked_example_decoder_tables_are_as_documented():
    limits, deltas, symbols = canonical_tables(_encoded().code_lengths, np)
    # limits[1..16] = (0 + 2) << 15 = 65536; index 0 is unused and 0.
    np.testing.assert_array_equal(limits, [0] + [65536] * 16)
    assert int(deltas[1]) == 0
    others = [s for s in range(128) if s not in (48, 56)]
    np.testing.assert_array_equal(symbols, [48, 56, *others])
    np.testing.assert_array_equal(symbols[:5], [48, 56, 0, 1, 2])


def test_worked_example_stream_words_and_offsets_are_exact():
    t = _encoded()
    assert t.stream.dtype == np.uint32
    assert t.chunk_offsets.dtype == np.uint32
    # Units 8000 0000 8000 + a zero pad unit, two to a word, high half first.
    np.testing.assert_array_equal(t.stream, np.array([0x80000000, 0x80000000], np.uint32))
    np.testing.assert_array_equal(t.chunk_offsets, np.array([0, 3], np.uint32))


def test_worked_example_sign_words_mark_only_weight_1():
    t = _encoded()
    assert t.signs.dtype == np.uint32
    assert t.signs.shape == (1, 1, 128)
    expected = np.zeros((1, 1, 128), np.uint32)
    expected[0, 0, 1] = 1  # lane 1, step 0: -0.5
    np.testing.assert_array_equal(t.signs, expected)


def test_worked_example_checksums_follow_the_documented_crc32_recipe():
    t = _encoded()
    # Chunk 0: its units as big-endian uint16, continued over its sign words (little-endian).
    units = bytes.fromhex("800000008000")
    sign_words = np.zeros(128, "<u4")
    sign_words[1] = 1
    chunk_crc = zlib.crc32(sign_words.tobytes(), zlib.crc32(units))
    expected_lengths = np.zeros(128, np.uint8)
    expected_lengths[[48, 56]] = 1
    header = (
        b"ecf8 v1 float8_e4m3fn 3 S=32"
        + expected_lengths.tobytes()
        + np.array([0, 3], "<u4").tobytes()
    )
    np.testing.assert_array_equal(t.checksums, np.array([chunk_crc, zlib.crc32(header)], np.uint32))
    ecf8_jax.verify_checksums(t)


def test_worked_example_decodes_to_bytes_38_b0_38():
    out = jax.jit(ecf8_jax.decode)(_encoded())
    assert out.shape == (3,)
    assert out.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(np.asarray(out).view(np.uint8), [0x38, 0xB0, 0x38])


def test_worked_example_size_is_664_bytes():
    t = _encoded()
    # 8 (stream) + 8 (offsets) + 512 (sign words) + 128 (code lengths) + 8 (checksums).
    assert ecf8_jax.stats(X, encoded=t).breakdown == {
        "stream": 8,
        "chunk_offsets": 8,
        "signs": 512,
        "code_lengths": 128,
        "checksums": 8,
    }
    assert t.nbytes == 664
