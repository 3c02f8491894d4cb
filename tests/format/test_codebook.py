"""Length-limited canonical Huffman codebooks (``ecf8_jax.format.codebook``)."""

from __future__ import annotations

import heapq

import jax.numpy as jnp
import numpy as np
import pytest

from ecf8_jax.format.codebook import canonical_codes, canonical_tables, code_lengths, kraft_sum


def _huffman_cost(counts) -> int:
    """Total bits of an unrestricted Huffman code (sum of the merged weights)."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def _fibonacci_counts(k: int) -> np.ndarray:
    counts = np.zeros(128, np.int64)
    a, b = 1, 1
    for i in range(k):
        counts[i] = a
        a, b = b, a + b
    return counts


def _random_counts(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.geometric(rng.uniform(0.001, 0.5), 128) - 1
    counts[rng.random(128) < 0.3] = 0
    return counts


def test_no_symbols_get_no_codes():
    assert not code_lengths(np.zeros(128, np.int64)).any()


def test_a_lone_symbol_gets_a_1_bit_code():
    counts = np.zeros(128, np.int64)
    counts[93] = 1000
    expected = np.zeros(128, np.uint8)
    expected[93] = 1
    np.testing.assert_array_equal(code_lengths(counts), expected)


@pytest.mark.parametrize("seed", range(8))
def test_code_lengths_are_optimal_and_complete_when_the_limit_does_not_bind(seed):
    counts = _random_counts(seed)
    lengths = code_lengths(counts)
    assert lengths.dtype == np.uint8
    np.testing.assert_array_equal(lengths > 0, counts > 0)
    assert kraft_sum(lengths) == 1 << 16  # complete: Kraft sum exactly 1
    assert int((lengths.astype(np.int64) * counts).sum()) == _huffman_cost(counts)


def test_fibonacci_counts_are_limited_to_16_bits_at_a_small_cost():
    counts = _fibonacci_counts(40)  # unrestricted Huffman depth 39
    lengths = code_lengths(counts)
    assert int(lengths.max()) == 16
    assert kraft_sum(lengths) == 1 << 16
    limited = int((lengths.astype(np.int64) * counts).sum())
    assert _huffman_cost(counts) <= limited <= 1.001 * _huffman_cost(counts)


def test_all_128_equally_likely_symbols_get_7_bit_codes():
    np.testing.assert_array_equal(code_lengths(np.full(128, 5)), np.full(128, 7))


@pytest.mark.parametrize("seed", range(4))
def test_canonical_codes_are_consecutive_in_length_then_symbol_order_and_prefix_free(seed):
    lengths = code_lengths(_random_counts(seed) + (np.arange(128) == 0))
    codes = canonical_codes(lengths)
    present = sorted((int(lengths[s]), s) for s in np.flatnonzero(lengths))
    expected, prev = -1, present[0][0]
    for length, symbol in present:
        expected = (expected + 1) << (length - prev)
        prev = length
        assert int(codes[symbol]) == expected, symbol
    words = [format(int(codes[s]), f"0{lengths[s]}b") for _, s in present]
    for a in words:
        assert sum(b.startswith(a) for b in words) == 1, a


@pytest.mark.parametrize("seed", range(4))
def test_table_decode_rule_finds_every_code_whatever_bits_follow(seed):
    counts = _fibonacci_counts(30) if seed == 0 else _random_counts(seed)
    lengths = code_lengths(counts).astype(np.int64)
    codes = canonical_codes(lengths).astype(np.int64)
    limits, deltas, symbols = canonical_tables(lengths, np)
    rng = np.random.default_rng(seed)
    for symbol in np.flatnonzero(lengths):
        length = int(lengths[symbol])
        for tail in rng.integers(0, 1 << 16, 4):
            peek = (int(codes[symbol]) << (16 - length)) | (int(tail) >> length)
            decoded_length = 1 + sum(peek >= int(limits[k]) for k in range(1, 16))
            assert decoded_length == length
            assert int(symbols[(peek >> (16 - length)) + int(deltas[length])]) == symbol


def test_canonical_tables_agree_between_numpy_and_jax_numpy():
    for lengths in (code_lengths(_fibonacci_counts(40)), code_lengths(_random_counts(9))):
        for a, b in zip(canonical_tables(lengths, np), canonical_tables(lengths, jnp)):
            assert np.asarray(b).dtype == np.int32
            np.testing.assert_array_equal(a, np.asarray(b))


def test_kraft_sum_counts_2_to_the_16_minus_length():
    lengths = np.zeros(128, np.uint8)
    lengths[:3] = [1, 2, 16]
    assert kraft_sum(lengths) == (1 << 15) + (1 << 14) + 1
