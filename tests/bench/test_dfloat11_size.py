"""bench/dfloat11.py: DFloat11's stored size, computed from its layout, against its encoder loop.

The module was also checked once against DFloat11's own ``encode_weights`` and ``get_luts`` with
the real ``dahuffman`` (torch, CPU): every buffer size equal on MiniLM tensors, Gaussian,
skewed and random inputs (docs in the module).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from bench import dfloat11
from ecf8_jax.format.codebook import code_lengths


def _exponents(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = (rng.standard_normal(n).astype(np.float32) * 0.02).view(np.uint32) >> 16
        return ((x >> 7) & 0xFF).astype(np.uint8)
    if kind == "uniform":
        return rng.integers(0, 256, n).astype(np.uint8)
    if kind == "two":
        return rng.choice(np.array([120, 121], np.uint8), n)
    return np.full(n, 127, np.uint8)


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "two", "constant"])
@pytest.mark.parametrize("n", [1, 7, 1000, 40_000])
def test_sizes_match_dfloat11s_encoder_loop(kind, n):
    exps = _exponents(kind, n)
    table = dfloat11.code_table(np.bincount(exps, minlength=256))
    encoded, gaps, positions = dfloat11.reference_encode(exps.tolist(), table)
    blocks = math.ceil(encoded / (dfloat11.THREADS_PER_BLOCK * dfloat11.BYTES_PER_THREAD))
    gaps = max(gaps, dfloat11.THREADS_PER_BLOCK * blocks)
    size = dfloat11.unit_size(exps)
    assert size["encoded_exponent"] == encoded
    assert size["gaps"] == math.ceil(dfloat11.GAP_BITS * gaps / 8)
    assert size["output_positions"] == 4 * positions
    assert size["sign_mantissa"] == n and size["split_positions"] == 0


def test_the_code_is_an_optimal_huffman_code_with_an_end_of_file_symbol():
    exps = _exponents("gaussian", 100_000)
    counts = np.bincount(exps, minlength=256)
    table = dfloat11.code_table(counts)
    theirs = sum(counts[s] * bits for s, (bits, _) in table.items() if isinstance(s, int))
    with_eof = np.append(counts, 1)  # dahuffman adds an end-of-file symbol of frequency 1
    optimal = code_lengths(with_eof, 32)
    assert theirs + table[dfloat11.EOF][0] == (with_eof * optimal).sum()


def test_codes_longer_than_32_bits_are_squeezed_like_dfloat11():
    # Fibonacci counts: an unlimited Huffman code over 45 symbols would be 44 bits deep.
    fib = [1, 1]
    while len(fib) < 45:
        fib.append(fib[-1] + fib[-2])
    counts = np.zeros(256, np.int64)
    counts[:45] = fib
    table = dfloat11.code_table(counts)
    assert max(bits for bits, _ in table.values()) <= dfloat11.MAX_CODE_LEN


def test_lut_rows_count_the_prefixes_of_long_codes():
    assert dfloat11.lut_rows({1: (1, 0), 2: (2, 2), dfloat11.EOF: (2, 3)}) == 2
    # Two 9-bit codes under one 8-bit prefix, one 10-bit code under another: 1 + 2 + 1 rows.
    table = {1: (9, 0b000000000), 2: (9, 0b000000001), 3: (10, 0b0000000100), 4: (1, 1)}
    assert dfloat11.lut_rows(table) == 4


def test_units_add_split_positions_and_sum_over_units():
    x = np.linspace(-1, 1, 3000, dtype=np.float32).astype(ml_dtypes.bfloat16)
    total = dfloat11.size([[x[:1000], x[1000:]], [x]])
    assert total["split_positions"] == 8
    assert total["sign_mantissa"] == 6000
    assert dfloat11.bits_per_weight([[x]]) > 8
