"""The stream layout against an independent, step-by-step decoder written from docs/FORMAT.md.

``_spec_decode`` follows the decoder loop of the format document literally, one lane at a time
in lane order (which hands out units exactly like the exclusive prefix sum), and builds the
canonical code from the lengths with the textbook rule rather than with
``canonical_tables``. It checks that the encoder wrote exactly the units that the real (not
padding) slots take, and records which codes straddle unit and word boundaries.
"""

from __future__ import annotations

import dataclasses

import jax
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


@dataclasses.dataclass
class SpecDecode:
    out: np.ndarray  # uint8[n]
    units_taken: list[int]  # units the real slots of each chunk took
    straddle_unit: int  # codes whose bits came from two units
    straddle_word: int  # ... from two units in different stream words


def _canonical_decoding_table(lengths) -> dict[tuple[int, int], int]:
    """(length, code) -> magnitude; codes numbered consecutively in (length, magnitude) order."""
    present = sorted((int(lengths[s]), s) for s in range(128) if lengths[s])
    table, code, prev = {}, -1, present[0][0] if present else 0
    for length, symbol in present:
        code = (code + 1) << (length - prev)
        prev = length
        table[(length, code)] = symbol
    return table


def _spec_decode(t: ecf8_jax.Ecf8Tensor) -> SpecDecode:
    n, steps, chunks = t.size, t.chunk_steps, t.num_chunks
    stream = [int(w) for w in np.asarray(t.stream)]
    offsets = [int(o) for o in np.asarray(t.chunk_offsets)]
    signs = np.asarray(t.signs)
    codes = _canonical_decoding_table(np.asarray(t.code_lengths))
    out = np.zeros(n, np.uint8)
    units_taken, straddle_unit, straddle_word = [], 0, 0
    for c in range(chunks):
        base = offsets[c]
        buf, nbits = [0] * LANES, [0] * LANES
        sources = [[] for _ in range(LANES)]  # [unit index, bits left] per buffered unit
        for step in range(steps):
            for lane in range(LANES):
                i = (c * steps + step) * LANES + lane
                if i >= n:  # padding: comes after every real slot, decodes garbage
                    continue
                if nbits[lane] < 16:
                    assert base < offsets[c + 1], f"chunk {c} ran out of units at weight {i}"
                    unit = (stream[base >> 1] >> (16 if base % 2 == 0 else 0)) & 0xFFFF
                    buf[lane] |= unit << (16 - nbits[lane])
                    nbits[lane] += 16
                    sources[lane].append([base, 16])
                    base += 1
                peek = buf[lane] >> 16
                for length in range(1, 17):
                    if (length, peek >> (16 - length)) in codes:
                        break
                else:
                    raise AssertionError(f"no code matches peek {peek:#06x} at weight {i}")
                magnitude = codes[(length, peek >> (16 - length))]
                buf[lane] = (buf[lane] << length) & 0xFFFFFFFF
                nbits[lane] -= length
                assert nbits[lane] >= 0
                used, left = [], length
                while left:
                    src = sources[lane][0]
                    take = min(left, src[1])
                    used.append(src[0])
                    src[1] -= take
                    left -= take
                    if src[1] == 0:
                        sources[lane].pop(0)
                straddle_unit += len(used) > 1
                straddle_word += len({u >> 1 for u in used}) > 1
                sign = (int(signs[c, step // 32, lane]) >> (step % 32)) & 1
                out[i] = magnitude | sign << 7
        units_taken.append(base - offsets[c])
    return SpecDecode(out, units_taken, straddle_unit, straddle_word)


def _skewed_all_magnitudes(dtype, seed: int = 0) -> np.ndarray:
    """Every 7-bit magnitude (so every exponent and mantissa value), with random signs.

    Counts grow geometrically (1.8**k) over 17 magnitudes, the other 111 appear once: a
    histogram this skewed needs codes longer than 16 bits unless length-limited.
    """
    rng = np.random.default_rng(seed)
    counts = np.ones(128, np.int64)
    counts[:17] = np.round(1.8 ** np.arange(17)).astype(np.int64)
    magnitudes = rng.permutation(128)  # which magnitude gets which count
    raw = np.repeat(magnitudes.astype(np.uint8), counts[np.argsort(magnitudes)])
    raw |= (rng.integers(0, 2, raw.size) << 7).astype(np.uint8)
    return rng.permutation(raw).view(dtype)


def test_spec_decoder_reproduces_the_worked_example():
    x = np.array([1.0, -0.5, 1.0], dtype=ml_dtypes.float8_e4m3fn)
    result = _spec_decode(encode_v1(x))
    np.testing.assert_array_equal(result.out, [0x38, 0xB0, 0x38])
    assert result.units_taken == [3]


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_every_magnitude_with_16_bit_codes_round_trips(dtype):
    x = _skewed_all_magnitudes(dtype)
    t = encode_v1(x, chunk_steps=32)
    ecf8_jax.validate(t)
    assert (t.code_lengths > 0).all(), "every magnitude must be present"
    assert int(t.code_lengths.max()) == 16
    mantissa_bits = {E4M3: 3, E5M2: 2}[np.dtype(dtype)]
    exponents = (x.view(np.uint8) & 0x7F) >> mantissa_bits
    assert len(np.unique(exponents)) == 1 << (7 - mantissa_bits)
    np.testing.assert_array_equal(np.asarray(DECODE(t)).view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_spec_decoder_matches_encoder_on_16_bit_codes_across_chunks(dtype):
    x = _skewed_all_magnitudes(dtype, seed=1)
    t = encode_v1(x, chunk_steps=32)
    assert t.num_chunks == 7
    result = _spec_decode(t)
    np.testing.assert_array_equal(result.out, x.view(np.uint8))
    # The encoder writes exactly the units the real slots take, nothing more.
    np.testing.assert_array_equal(result.units_taken, np.diff(t.chunk_offsets.astype(np.int64)))


def test_codes_straddle_unit_word_and_chunk_boundaries_and_round_trip():
    x = _skewed_all_magnitudes(E4M3, seed=2)
    t = encode_v1(x, chunk_steps=32)
    result = _spec_decode(t)
    np.testing.assert_array_equal(result.out, x.view(np.uint8))
    assert result.straddle_unit > 100
    assert result.straddle_word > 100
    # A chunk that starts at an odd unit shares its first word with the previous chunk.
    assert (t.chunk_offsets[1:-1] % 2 == 1).any()
    np.testing.assert_array_equal(np.asarray(DECODE(t)).view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize("n", [1, 129, 4097, 12287])
def test_spec_decoder_matches_encoder_for_partial_last_chunks(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.05).astype(E4M3)
    t = encode_v1(x, chunk_steps=32)
    assert t.num_chunks * 32 * LANES >= n > (t.num_chunks - 1) * 32 * LANES
    result = _spec_decode(t)
    np.testing.assert_array_equal(result.out, x.view(np.uint8))
    np.testing.assert_array_equal(result.units_taken, np.diff(t.chunk_offsets.astype(np.int64)))
