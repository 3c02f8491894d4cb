"""Format version 2 ("grouped"): bit layout, constants and the decoder's lookup table.

Version 2 was designed from the compiled code of version 1 (docs/FORMAT.md, "Version 2"):
v1 paid a 128-lane prefix scan, a dependent gather and a 15-compare length search for every
weight. Version 2 splits each FP8 byte in two::

    float8_e4m3fn:  s eeee mmm        float8_e5m2:  s eeee emm
                    | '--'  '-'                     | '--'  '-'
    nibble plane: --'  symbol  '-- nibble plane      symbol: bits 6..3, the rest raw

* the **symbol**, bits 6..3 (the E4M3 exponent; E5M2's top four exponent bits), is Huffman
  coded with a canonical code of at most ``MAX_CODE_LEN = 8`` bits, one codebook per chunk;
* the **nibble**, bit 7 and bits 2..0, is stored raw: ``nibble = (byte >> 4 & 8) | (byte & 7)``.

A lane decodes ``GROUP = 4`` symbols per refill: four codes take at most 32 bits, so a lane
that refills one 32-bit word whenever it holds fewer than 32 bits (a 64-bit buffer) always has
the whole group buffered. The cross-lane prefix scan therefore runs once per four weights, a
code is decoded with one read of a 256-entry table, and the four decoded bytes of a lane form
one little-endian uint32 output word. Lane ``l`` of chunk ``c`` decodes, at step ``t``, the
weight in slot ``c*S*L + (t // 4)*4*L + 4*l + t % 4``.

Nothing here imports kernels; the tables are built with numpy or jax.numpy alike (``xp``).
"""

from __future__ import annotations

import numpy as np

VERSION = 2

GROUP = 4
"""Symbols a lane decodes per refill; also FP8 bytes per packed uint32 output word."""

WORD_BITS = 32
"""The stream is a sequence of 32-bit words; a lane takes one when it holds < 32 bits."""

MAX_CODE_LEN = 8
"""Longest code: GROUP codes fit in the 32 bits a lane holds after a refill, and a code is
decoded by one read of a ``2**MAX_CODE_LEN``-entry table."""

NUM_SYMBOLS = 16
"""Bits 6..3 of an FP8 byte."""

SYMBOL_SHIFT = 3
SYMBOL_MASK = 0x78  # . ssss ... : bits 6..3, entropy coded
NIBBLE_HIGH = 0x80  # s ....... : stored as bit 3 of the nibble
NIBBLE_LOW = 0x07  # . .... mmm : stored as bits 2..0 of the nibble

NIBBLE_BITS = 4
NIBBLES_PER_WORD = 8
"""Raw words hold the nibbles of 8 consecutive steps of one lane (two groups)."""

LUT_SIZE = 1 << MAX_CODE_LEN
LUT_LENGTH_BITS = 4
"""A table entry is ``symbol << 4 | length``; peeks that start no code (only possible in
padding, or with malformed or single-symbol codebooks) map to ``0 << 4 | longest``."""

DEFAULT_CHUNK_STEPS = 2048
"""Steps per chunk (a chunk is 128 * 2048 = 256 Ki weights). Each lane of a chunk ends with
~37 bits it buffered ahead, so the overhead is ~37 / chunk_steps bits per weight: 0.036 at
1024 steps put MiniLM at 6.75 b/w, 0.018 at 2048 gives 6.71 (docs/FORMAT.md)."""

STEP_MULTIPLE = 32
"""``chunk_steps`` is a multiple of 32 (whole raw words; 8-row output tiles on TPU)."""


GEMV_COLUMNS = GROUP * 128
"""Columns of one group of one row: a row-wise GEMV needs ``in_features`` to be a multiple."""


def row_chunk_steps(in_features: int, limit: int = DEFAULT_CHUNK_STEPS) -> int | None:
    """The largest ``chunk_steps <= limit`` whose chunks hold whole rows of ``in_features``.

    A fused GEMV over an ``[out, in]`` weight then gives each program whole output rows
    (``pallas_kernels/grouped_matmul``). None when ``in_features`` is not a multiple of
    ``GEMV_COLUMNS`` (512) or no multiple of 32 up to ``limit`` fits.
    """
    if in_features <= 0 or in_features % GEMV_COLUMNS:
        return None
    for steps in range(limit - limit % STEP_MULTIPLE, 0, -STEP_MULTIPLE):
        if (steps * 128) % in_features == 0:
            return steps
    return None


def max_chunk_words(chunk_steps: int, lanes: int = 128) -> int:
    """Most words one chunk can hold: every code 8 bits, plus each lane's look-ahead words."""
    return lanes * (chunk_steps // 4 + 2)


def symbol_of(raw: np.ndarray) -> np.ndarray:
    """uint8 bytes -> their coded symbol (bits 6..3)."""
    return (raw & SYMBOL_MASK) >> SYMBOL_SHIFT


def nibble_of(raw: np.ndarray) -> np.ndarray:
    """uint8 bytes -> their raw nibble (bit 7 as bit 3, bits 2..0)."""
    return ((raw & NIBBLE_HIGH) >> 4) | (raw & NIBBLE_LOW)


def canonical_codes(lengths, xp):
    """Canonical code of every symbol, for one or many codebooks.

    Codes are numbered in order of (length, symbol); the first code of length ``l`` is
    ``sum_{k<l} count[k] << (l - k)``.

    Args:
      lengths: int[..., NUM_SYMBOLS] code lengths (0 = absent), numpy or jax array.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      int32[..., NUM_SYMBOLS] right-aligned code values (0 for absent symbols).
    """
    lengths = xp.asarray(lengths).astype(xp.int32)
    lens = xp.arange(MAX_CODE_LEN + 1, dtype=xp.int32)
    count = (lengths[..., None, :] == lens[:, None]).sum(axis=-1).astype(xp.int32)
    count = xp.where(lens == 0, 0, count)  # [..., MAX_CODE_LEN + 1]
    shorter = lens[None, :] < lens[:, None]  # [l, k]: k < l
    shift = xp.where(shorter, lens[:, None] - lens[None, :], 0)
    first_code = xp.where(shorter, xp.left_shift(count[..., None, :], shift), 0).sum(axis=-1)
    sym = xp.arange(NUM_SYMBOLS, dtype=xp.int32)
    same_before = (lengths[..., None, :] == lengths[..., :, None]) & (sym[None, :] < sym[:, None])
    rank = same_before.sum(axis=-1).astype(xp.int32)  # symbols of the same length before it
    first = xp.take_along_axis(first_code, xp.clip(lengths, 0, MAX_CODE_LEN), axis=-1)
    return xp.where(lengths > 0, first + rank, 0).astype(xp.int32)


def longest_code(lengths, xp):
    """int32[...] the longest code of each codebook, clamped to [1, MAX_CODE_LEN].

    A lane refills when it holds fewer than ``GROUP * longest_code`` bits: enough for any
    four codes of the chunk. For incompressible chunks (all codes 4 bits) this halves the
    bits a lane holds back at the chunk's end.
    """
    lengths = xp.clip(xp.asarray(lengths).astype(xp.int32), 0, MAX_CODE_LEN)
    return xp.maximum(lengths.max(axis=-1), 1).astype(xp.int32)


def refill_below(lengths, xp):
    """int32[...] per codebook: a lane takes a word when it holds fewer bits than this."""
    return GROUP * longest_code(lengths, xp)


def kernel_args(stream, chunk_offsets, raw, lengths, xp):
    """The five arrays every version-2 decoder takes: ``(stream, chunk_offsets, raw,
    decode_lut(lengths), refill_below(lengths))``, the tables built with ``xp``."""
    return stream, chunk_offsets, raw, decode_lut(lengths, xp), refill_below(lengths, xp)


def decode_lut(lengths, xp):
    """The decoder's table: entry ``p`` decodes the code at the front of the 8-bit peek ``p``.

    Args:
      lengths: int[..., NUM_SYMBOLS] code lengths, one codebook per leading index.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      int32[..., LUT_SIZE]: ``symbol << 4 | length``; ``longest_code`` (symbol 0) where no
      code starts. Lengths above ``MAX_CODE_LEN`` are clamped, so even a malformed codebook
      yields entries no longer than the refill threshold provides for.
    """
    lengths = xp.clip(xp.asarray(lengths).astype(xp.int32), 0, MAX_CODE_LEN)
    codes = canonical_codes(lengths, xp)
    peek = xp.arange(LUT_SIZE, dtype=xp.int32)
    shift = xp.where(lengths > 0, MAX_CODE_LEN - lengths, 0)
    covers = ((peek[:, None] >> shift[..., None, :]) == codes[..., None, :]) & (
        lengths[..., None, :] > 0
    )  # [..., LUT_SIZE, NUM_SYMBOLS]
    sym = xp.arange(NUM_SYMBOLS, dtype=xp.int32)
    entry = (sym << LUT_LENGTH_BITS) | lengths
    # The first covering symbol (a valid code has at most one); none -> MAX_CODE_LEN.
    first = xp.argmax(covers, axis=-1)
    value = xp.take_along_axis(
        xp.broadcast_to(entry[..., None, :], covers.shape), first[..., None], axis=-1
    )[..., 0]
    fallback = longest_code(lengths, xp)[..., None]
    return xp.where(covers.any(axis=-1), value, fallback).astype(xp.int32)
