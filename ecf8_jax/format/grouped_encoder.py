"""Host-side, vectorized numpy encoder for format version 2 (see ``grouped.py``).

As in version 1 the decoder's refill schedule is computed in closed form: before group ``g`` a
lane holds ``32 * w - B_g`` bits, where ``w`` is the number of words it has taken and ``B_g``
the code bits it consumed in groups ``< g``. It takes a word when that is below the chunk's
threshold ``T``, so after the refill of group ``g`` it has taken ``ceil((B_g + T) / 32)`` words. Words are written in the
order the decoder takes them: chunk, then group, then lane.
"""

from __future__ import annotations

import numpy as np

from ecf8_jax.format import grouped as g2
from ecf8_jax.format.codebook import code_lengths
from ecf8_jax.format.constants import LANES


def _lane_major(a: np.ndarray, groups: int, width: g2.Width) -> np.ndarray:
    """Slot order -> [lane, group * 4 + j]: lane ``l``'s values in decoding order.

    Lane ``l``'s ``per_word`` values of one output word are adjacent slots, so the reorder is
    a plain 2-D transpose of those runs viewed as single wider elements.
    """
    run = np.dtype(f"V{width.per_word * a.dtype.itemsize}")
    rows = np.ascontiguousarray(a).view(run).reshape(groups * width.words_per_group, LANES)
    return np.ascontiguousarray(rows.T).view(a.dtype).reshape(LANES, groups * g2.GROUP)


def _raw_plane(padded: np.ndarray, groups: int, width: g2.Width) -> np.ndarray:
    """uint32[steps // raws_per_word, LANES] raw words: lane ``l``'s raw field of step ``t`` at
    bits ``raw_bits * (t % raws_per_word)``, built as little-endian bytes (no 32-bit shifts)."""
    if width.bits == 8:  # nibble = bit 7 as bit 3, bits 2..0
        fields = ((padded >> 4) & 0x08) | (padded & 0x07)
        # [h, 2 groups, lane, 4 steps] -> [h, lane, 8 steps]; two nibbles to a byte.
        f = fields.reshape(groups // 2, 2, LANES, g2.GROUP).transpose(0, 2, 1, 3)
        f = f.reshape(groups // 2, LANES, 4, 2)
        packed = f[..., 0] | (f[..., 1] << 4)
    else:  # raw byte = bit 15 as bit 7, bits 6..0
        fields = ((padded >> 8) & 0x80).astype(np.uint8) | (padded & 0x7F).astype(np.uint8)
        # [g, word p, lane, half k] -> [g, lane, 4 values]: value j = 2p + k.
        packed = fields.reshape(groups, 2, LANES, 2).transpose(0, 2, 1, 3)
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    return packed.reshape(packed.shape[0], LANES * 4).view("<u4").astype(np.uint32, copy=False)


def encode_chunk(padded: np.ndarray, valid: int, width: g2.Width = g2.FP8):
    """Encodes one chunk.

    Args:
      padded: uint8 (FP8) or uint16 (16-bit) [steps * LANES] values in slot order (zero
        padding after the end).
      valid: slots holding weights (a prefix of the chunk's slots; at least one).
      width: the value width (``grouped.FP8`` or ``grouped.WIDE``).

    Returns:
      ``(words, raw, lengths)``: uint32[w] stream words in decoder order, uint32[steps //
      raws_per_word, LANES] raw words, uint8[num_symbols] code lengths.
    """
    slots = padded.shape[0]
    groups = slots // (g2.GROUP * LANES)
    symbols = (padded >> width.symbol_shift).astype(np.uint8)  # 16-bit: the cast masks
    if width.num_symbols < 256:
        symbols &= width.num_symbols - 1
    ragged = valid < slots
    # Lane-major order [lane, group * 4 + j]: each lane's codes in bit-string order. Table
    # reads index with intp (numpy converts any other index type on every read).
    sym = _lane_major(symbols, groups, width).astype(np.intp)
    counts = np.bincount(
        symbols[:valid] if ragged else sym.reshape(-1), minlength=width.num_symbols
    )
    lengths = code_lengths(counts, g2.MAX_CODE_LEN)
    codes = g2.canonical_codes(lengths, np).astype(np.uint64)

    lens = np.take(lengths.astype(np.int32), sym)
    if ragged:  # padding is not coded
        mask = _lane_major(np.arange(slots) < valid, groups, width)
        lens[~mask] = 0
    # Bits each lane consumed before each symbol: a running sum over groups (a quarter of the
    # symbols; numpy's cumsum is a serial loop), then within each group of four.
    quad = lens.reshape(LANES, groups, g2.GROUP)
    group_bits = quad[:, :, 0] + quad[:, :, 1]
    group_bits += quad[:, :, 2]
    group_bits += quad[:, :, 3]
    before_group = np.cumsum(group_bits, axis=1, dtype=np.int32)
    before_group -= group_bits  # [LANES, groups]

    # Words taken after the refill of group g: the fewest w with 32 w - B_g >= threshold.
    threshold = int(g2.refill_below(lengths, np))
    taken = (before_group + (threshold + g2.WORD_BITS - 1)) >> 5
    refill = np.empty(taken.shape, dtype=bool)
    refill[:, 0] = True
    np.not_equal(taken[:, 1:], taken[:, :-1], out=refill[:, 1:])
    if ragged:  # refills only padding would need come last: not written
        refill &= mask[:, :: g2.GROUP]
    lane_words = refill.sum(axis=1, dtype=np.int32)
    lane_start = np.cumsum(lane_words, dtype=np.int32) - lane_words

    # Lane l's bits fill words lane_start[l], ...: a code at bit position ``pos`` (counted over
    # those words) sits in the 64-bit window of words (pos >> 5, pos >> 5 + 1), as its
    # left-justified 64-bit form shifted right by pos & 31. Positions never decrease in
    # lane-major order, so the codes of one word are contiguous and their bits disjoint:
    # summing their windows is an OR.
    wide = slots * g2.MAX_CODE_LEN + LANES * 2 * g2.WORD_BITS >= 1 << 31
    start = before_group.astype(np.int64 if wide else np.int32)
    start += (lane_start * g2.WORD_BITS).astype(start.dtype)[:, None]
    pos = np.empty(quad.shape, start.dtype)
    pos[:, :, 0] = start
    for j in range(1, g2.GROUP):
        np.add(pos[:, :, j - 1], quad[:, :, j - 1], out=pos[:, :, j])
    pos = pos.reshape(LANES, -1)
    left = np.where(lengths > 0, codes << (64 - lengths.astype(np.uint64)), 0).astype(np.uint64)
    window = np.take(left, sym)
    np.right_shift(window, (pos & (g2.WORD_BITS - 1)).astype(np.uint8), out=window,
                   dtype=np.uint64)  # fmt: skip
    if ragged:
        window[~mask] = 0
    word = (pos >> 5).reshape(-1)
    change = np.empty(word.shape, dtype=bool)
    change[0] = True
    np.not_equal(word[1:], word[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ids = word[starts]
    sums = np.add.reduceat(window.reshape(-1), starts)
    scratch = np.zeros(int(lane_words.sum()) + 2, np.uint32)
    scratch[ids] = (sums >> 32).astype(np.uint32)
    scratch[ids + 1] |= sums.astype(np.uint32)

    # Hand the words out in decoder order: group, then lane.
    order = (taken - 1 + lane_start[:, None]).T.reshape(-1)
    words = scratch[order[np.flatnonzero(refill.T.reshape(-1))]]

    if ragged:
        padded = padded.copy()
        padded[valid:] = 0
    return words, _raw_plane(padded, groups, width), lengths


def encode_grouped(raw: np.ndarray, steps: int, chunks: int, width: g2.Width = g2.FP8):
    """Encodes a flat array of value bit patterns (the ``flat`` layout) into version-2 arrays.

    Args:
      raw: uint8[n] FP8 bytes, or uint16[n] 16-bit patterns with ``width=grouped.WIDE``.
      steps: chunk steps (a multiple of 32).
      chunks: number of chunks (``ceil(n / (steps * LANES))``).
      width: the value width.

    Returns:
      ``(stream, chunk_offsets, raw_words, code_lengths)``: uint32[W], uint32[C + 1],
      uint32[C, steps // raws_per_word, LANES], uint8[C, num_symbols].
    """
    per_chunk = steps * LANES
    words = []
    raw_words = np.zeros((chunks, steps // width.raws_per_word, LANES), np.uint32)
    lengths = np.zeros((chunks, width.num_symbols), np.uint8)
    offsets = np.zeros(chunks + 1, np.uint32)
    for c in range(chunks):
        piece = raw[c * per_chunk : (c + 1) * per_chunk]
        valid = piece.size
        if valid < per_chunk:
            piece = np.pad(piece, (0, per_chunk - valid))
        w, raw_words[c], lengths[c] = encode_chunk(piece, valid, width)
        words.append(w)
        offsets[c + 1] = offsets[c] + w.size
    stream = np.concatenate(words) if words else np.zeros(0, np.uint32)
    return stream.astype(np.uint32), offsets, raw_words, lengths
