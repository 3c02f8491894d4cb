"""Length-limited canonical Huffman codebooks over the 128 magnitude symbols.

The codebook is stored as one code length per symbol (0 = symbol absent). Everything the
decoder needs (per-length limits, index deltas, the symbol order) is derived from those lengths
by :func:`canonical_tables`, which works on numpy (encoder, validation) and jax.numpy (inside a
jitted decode) alike, so the two sides cannot disagree.
"""

from __future__ import annotations

import numpy as np

from ecf8_jax.format.constants import MAX_CODE_LEN, NUM_SYMBOLS


def code_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal length-limited prefix-code lengths for a histogram (package-merge).

    Args:
      counts: int[NUM_SYMBOLS] symbol frequencies.
      max_len: longest allowed code.

    Returns:
      uint8[NUM_SYMBOLS] code lengths; 0 for absent symbols. A lone symbol gets length 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts)
    lengths = np.zeros(counts.shape[0], dtype=np.uint8)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    if present.size > (1 << max_len):
        raise ValueError(f"{present.size} symbols cannot fit codes of at most {max_len} bits")
    # Package-merge (Larmore & Hirschberg). Level 0 lists the leaves by weight; level i merges
    # them with packages (pairs) of level i - 1. The optimal code takes the 2n - 2 cheapest
    # items of the last level; walking back, a prefix holding j leaves and p packages adds 1 to
    # the lengths of the j lightest leaves and selects the first 2p items of the level before.
    order = present[np.argsort(counts[present], kind="stable")]
    leaf_weights = counts[order]
    n = order.size
    leaf_flags = np.ones(n, dtype=bool)
    weights, flags = leaf_weights, leaf_flags
    levels = [flags]
    for _ in range(max_len - 1):
        pairs = weights.size // 2 * 2
        packages = weights[0:pairs:2] + weights[1:pairs:2]
        merged = np.concatenate([leaf_weights, packages])
        rank = np.argsort(merged, kind="stable")  # leaves first among equal weights
        weights = merged[rank]
        flags = np.concatenate([leaf_flags, np.zeros(packages.size, dtype=bool)])[rank]
        levels.append(flags)
    sorted_lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for flags in reversed(levels):
        leaves = int(flags[:take].sum())
        sorted_lengths[:leaves] += 1
        take = 2 * (take - leaves)
    lengths[order] = sorted_lengths
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code value of every symbol (numpy; encoder side).

    Codes are assigned in order of (length, symbol), numerically increasing, so that
    left-justified codes of shorter lengths sort below longer ones.

    Args:
      lengths: uint8[NUM_SYMBOLS] code lengths.

    Returns:
      uint32[NUM_SYMBOLS] code values (right-aligned); 0 for absent symbols.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    _, deltas, symbols = canonical_tables(lengths, np)
    rank = np.empty(NUM_SYMBOLS, dtype=np.int64)
    rank[symbols] = np.arange(NUM_SYMBOLS)
    codes = rank - deltas[lengths]
    return np.where(lengths > 0, codes, 0).astype(np.uint32)


def kraft_sum(lengths: np.ndarray) -> int:
    """Sum of 2**(MAX_CODE_LEN - length) over present symbols; a valid code has <= 2**16."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(np.where(lengths > 0, 1 << (MAX_CODE_LEN - np.clip(lengths, 0, 16)), 0).sum())


def canonical_tables(lengths, xp):
    """Decoder tables of the canonical code with these lengths.

    With ``peek`` the next MAX_CODE_LEN bits of the stream (MSB first), the decoder computes::

        length = 1 + sum(peek >= limits[k] for k in 1..MAX_CODE_LEN-1)
        symbol = symbols[(peek >> (MAX_CODE_LEN - length)) + deltas[length]]

    Args:
      lengths: int[NUM_SYMBOLS] code lengths (0 = absent), numpy or jax array.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      ``(limits, deltas, symbols)``: int32[MAX_CODE_LEN + 1] left-justified end of the codes of
      each length (index 0 unused, 0); int32[MAX_CODE_LEN + 1] ``first_index - first_code`` per
      length; int32[NUM_SYMBOLS] symbols sorted by (length, symbol), absent ones last.
    """
    lengths = xp.asarray(lengths).astype(xp.int32)
    lens = xp.arange(MAX_CODE_LEN + 1, dtype=xp.int32)
    count = (lengths[None, :] == lens[:, None]).sum(axis=1).astype(xp.int32)
    count = xp.where(lens == 0, 0, count)  # int32[MAX_CODE_LEN + 1]
    first_index = xp.cumsum(count) - count  # how many symbols have shorter codes
    # first_code[l] = (first_code[l-1] + count[l-1]) << 1  ==  sum_{k<l} count[k] << (l - k)
    shorter = lens[None, :] < lens[:, None]
    shift = xp.where(shorter, lens[:, None] - lens[None, :], 0)
    first_code = xp.where(shorter, xp.left_shift(count[None, :], shift), 0).sum(axis=1)
    limits = xp.left_shift(first_code + count, MAX_CODE_LEN - lens)
    limits = xp.where(lens == 0, 0, limits).astype(xp.int32)
    deltas = (first_index - first_code).astype(xp.int32)
    key = xp.where(lengths > 0, lengths, MAX_CODE_LEN + 1) * NUM_SYMBOLS + xp.arange(
        NUM_SYMBOLS, dtype=xp.int32
    )
    symbols = xp.argsort(key).astype(xp.int32)
    return limits, deltas, symbols
