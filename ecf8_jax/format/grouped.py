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

**16-bit weights** (BF16, FP16) use the same layout with wider fields (``Width``): the
symbol is bits 14..7 (256 symbols: the BF16 exponent; FP16's exponent with its top three
mantissa bits), the raw field a byte (bit 15 as bit 7, bits 6..0). Codes, table, refill rule
and chunk/lane/group mapping are the FP8 ones; a group's four 16-bit values form two output
words, and the raw plane holds one word (four bytes) per lane per group.

Nothing here imports kernels; the tables are built with numpy or jax.numpy alike (``xp``).
"""

from __future__ import annotations

import dataclasses
import math

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


@dataclasses.dataclass(frozen=True)
class Width:
    """How a ``bits``-wide float splits into a coded symbol and a raw field.

    ``bits = 8`` (FP8): symbol bits 6..3, raw nibble = bit 7 (as bit 3) and bits 2..0.
    ``bits = 16`` (BF16, FP16): symbol bits 14..7, raw byte = bit 15 (as bit 7) and bits 6..0.
    In both the symbol is the upper half below the sign and the raw field the sign over the
    low ``bits / 2 - 1`` bits.

    Slot mapping: lane ``l`` of a chunk decodes, in group ``g``, values ``j = 0..3`` into output
    word ``p = j // per_word`` of the group (``per_word = 32 // bits`` values a word, value
    ``k = j % per_word`` at bits ``bits * k``); that word holds slots
    ``g*4*L + p*per_word*L + l*per_word + k``, so the output ``uint32[C, G * words_per_group,
    L]`` is already in slot order (a bitcast to uint8/uint16).
    """

    bits: int

    @property
    def symbol_bits(self) -> int:
        return self.bits // 2

    @property
    def num_symbols(self) -> int:
        return 1 << self.symbol_bits

    @property
    def symbol_shift(self) -> int:
        return self.bits // 2 - 1

    @property
    def raw_bits(self) -> int:
        return self.bits // 2

    @property
    def raws_per_word(self) -> int:
        """Raw fields per raw-plane word (8 nibbles, 4 bytes)."""
        return WORD_BITS // self.raw_bits

    @property
    def groups_per_raw_word(self) -> int:
        return self.raws_per_word // GROUP

    @property
    def per_word(self) -> int:
        """Decoded values per output word (4 bytes, 2 halves)."""
        return WORD_BITS // self.bits

    @property
    def words_per_group(self) -> int:
        """Output words per lane per group (1 for FP8, 2 for 16-bit)."""
        return GROUP // self.per_word

    @property
    def low_mask(self) -> int:
        return (1 << self.symbol_shift) - 1

    @property
    def raw_dtype(self):
        return np.uint8 if self.bits == 8 else np.uint16

    def symbol_of(self, v: np.ndarray) -> np.ndarray:
        """Values (as unsigned ints) -> their coded symbol."""
        return (v >> self.symbol_shift) & (self.num_symbols - 1)

    def raw_of(self, v: np.ndarray) -> np.ndarray:
        """Values (as unsigned ints) -> their raw field (sign on top of the low bits)."""
        sign = (v >> (self.bits - self.raw_bits)) & (1 << (self.raw_bits - 1))
        return sign | (v & self.low_mask)

    def join(self, symbol: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The inverse of (``symbol_of``, ``raw_of``)."""
        top = self.raw_bits - 1
        return (
            ((raw >> top) << (self.bits - 1))
            | (symbol << self.symbol_shift)
            | (raw & self.low_mask)
        )


FP8 = Width(8)
WIDE = Width(16)
WIDTHS = {8: FP8, 16: WIDE}


def width_of_dtype(name: str) -> Width:
    """The ``Width`` of a dtype name: FP8 names -> ``FP8``; bfloat16, float16 -> ``WIDE``."""
    if name.startswith("float8"):
        return FP8
    if name in ("bfloat16", "float16"):
        return WIDE
    raise ValueError(f"format version 2 carries FP8, bfloat16 and float16, not {name!r}")


GEMV_COLUMNS = GROUP * 128
"""Columns of one group of one row: a row-wise GEMV needs ``in_features`` to be a multiple."""


def row_chunk_steps(
    in_features: int, limit: int = DEFAULT_CHUNK_STEPS, rows: int | None = None
) -> int | None:
    """The ``chunk_steps <= limit`` whose chunks hold whole rows of ``in_features``.

    A fused GEMV over an ``[out, in]`` weight then gives each program whole output rows
    (``pallas_kernels/grouped_matmul``). Without ``rows``: the largest such steps. With
    ``rows`` (the weight's ``out``): as few chunks as the largest allows, their rows balanced so
    the last chunk is nearly full (a chunk's raw plane is stored whole, so a mostly empty last
    chunk would cost up to a chunk of raw fields). None when ``in_features`` is not a multiple
    of ``GEMV_COLUMNS`` (512) or no multiple of 32 up to ``limit`` fits.
    """
    if in_features <= 0 or in_features % GEMV_COLUMNS:
        return None
    best = None
    for steps in range(limit - limit % STEP_MULTIPLE, 0, -STEP_MULTIPLE):
        if (steps * 128) % in_features == 0:
            best = steps
            break
    if best is None or not rows:
        return best
    # rows per chunk come in units of `unit` (steps stays a multiple of 32)
    unit = STEP_MULTIPLE * 128 // math.gcd(in_features, STEP_MULTIPLE * 128)
    most = best * 128 // in_features
    chunks = -(-rows // most)
    balanced = -(-rows // chunks)
    per_chunk = -(-balanced // unit) * unit
    return per_chunk * in_features // 128


def max_chunk_words(chunk_steps: int, lanes: int = 128) -> int:
    """Most words one chunk can hold: every code 8 bits, plus each lane's look-ahead words."""
    return lanes * (chunk_steps // 4 + 2)


def symbol_of(raw: np.ndarray) -> np.ndarray:
    """uint8 bytes -> their coded symbol (bits 6..3)."""
    return FP8.symbol_of(raw)


def nibble_of(raw: np.ndarray) -> np.ndarray:
    """uint8 bytes -> their raw nibble (bit 7 as bit 3, bits 2..0)."""
    return FP8.raw_of(raw)


def canonical_codes(lengths, xp):
    """Canonical code of every symbol, for one or many codebooks.

    Codes are numbered in order of (length, symbol); the first code of length ``l`` is
    ``sum_{k<l} count[k] << (l - k)``.

    Args:
      lengths: int[..., K] code lengths (0 = absent), numpy or jax array; K = 16 (FP8) or
        256 (16-bit).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      int32[..., K] right-aligned code values (0 for absent symbols).
    """
    lengths = xp.asarray(lengths).astype(xp.int32)
    lens = xp.arange(MAX_CODE_LEN + 1, dtype=xp.int32)
    count = (lengths[..., None, :] == lens[:, None]).sum(axis=-1).astype(xp.int32)
    count = xp.where(lens == 0, 0, count)  # [..., MAX_CODE_LEN + 1]
    shorter = lens[None, :] < lens[:, None]  # [l, k]: k < l
    shift = xp.where(shorter, lens[:, None] - lens[None, :], 0)
    first_code = xp.where(shorter, xp.left_shift(count[..., None, :], shift), 0).sum(axis=-1)
    sym = xp.arange(lengths.shape[-1], dtype=xp.int32)
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

    Canonical codes cover consecutive peek ranges in (length, symbol) order, so the code at
    peek ``p`` belongs to the last symbol in that order whose range starts at or before ``p``
    (a count, not a search over every (peek, symbol) pair: 256 symbols stay cheap).

    Args:
      lengths: int[..., K] code lengths, one codebook per leading index (K = 16 or 256).
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      int32[..., LUT_SIZE]: ``symbol << 4 | length``; ``longest_code`` (symbol 0) where no
      code starts. Lengths above ``MAX_CODE_LEN`` are clamped, so even a malformed codebook
      yields entries no longer than the refill threshold provides for.
    """
    lengths = xp.clip(xp.asarray(lengths).astype(xp.int32), 0, MAX_CODE_LEN)
    k = lengths.shape[-1]
    present = lengths > 0
    codes = canonical_codes(lengths, xp)
    span = xp.where(present, xp.left_shift(1, MAX_CODE_LEN - lengths), 0)
    start = xp.where(present, codes * span, LUT_SIZE)  # absent: past every peek
    sym = xp.arange(k, dtype=xp.int32)
    order = xp.argsort(xp.where(present, lengths * k + sym, (MAX_CODE_LEN + 1) * k), axis=-1)
    sorted_start = xp.take_along_axis(start, order, axis=-1)
    peek = xp.arange(LUT_SIZE, dtype=xp.int32)
    count = (sorted_start[..., None, :] <= peek[:, None]).sum(axis=-1).astype(xp.int32)
    symbol = xp.take_along_axis(order, xp.clip(count - 1, 0, k - 1), axis=-1).astype(xp.int32)
    length = xp.take_along_axis(lengths, symbol, axis=-1)
    end = xp.take_along_axis(start + span, symbol, axis=-1)
    covered = (count > 0) & (peek < end)
    fallback = longest_code(lengths, xp)[..., None]
    value = (symbol << LUT_LENGTH_BITS) | length
    return xp.where(covered, value, fallback).astype(xp.int32)
