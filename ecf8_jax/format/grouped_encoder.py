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


def _by_group(a: np.ndarray, groups: int, width: g2.Width) -> np.ndarray:
    """Slot order -> [group, lane, j]: value ``j`` of lane ``l`` in group ``g`` (``Width``)."""
    v = width.per_word
    return (
        a.reshape(groups, width.words_per_group, LANES, v)
        .transpose(0, 2, 1, 3)
        .reshape(groups, LANES, g2.GROUP)
    )


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
    symbols = width.symbol_of(padded)
    counts = np.bincount(symbols[:valid], minlength=width.num_symbols)
    lengths = code_lengths(counts, g2.MAX_CODE_LEN)
    codes = g2.canonical_codes(lengths, np).astype(np.uint32)
    ragged = valid < slots

    # Lane-major order [lane, group * 4 + j]: each lane's codes in bit-string order.
    def lane_major(a):
        return _by_group(a, groups, width).transpose(1, 0, 2).reshape(LANES, -1)

    sym = lane_major(symbols)
    lens = lengths[sym]
    if ragged:  # padding is not coded
        mask = lane_major(np.arange(slots) < valid)
        lens[~mask] = 0
    acc = np.uint16 if groups * g2.GROUP * g2.MAX_CODE_LEN < 1 << 16 else np.int32
    before = np.cumsum(lens, axis=1, dtype=acc)
    before -= lens  # bits each lane consumed before each symbol
    before_group = before[:, :: g2.GROUP].astype(np.int32)  # [LANES, groups]

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

    # A code starting at bit o of a lane's word k sits in the 64-bit window of words
    # (k, k + 1): ``hi`` goes to word k, ``lo`` to k + 1. Words are in lane order, so the codes
    # starting in one word are contiguous; their bits are disjoint: summing them is an OR.
    offset = (before & (g2.WORD_BITS - 1)).astype(np.int32)
    end = offset + lens  # in [1, 39] for coded symbols
    code = codes[sym]
    if ragged:
        code[~mask] = 0
    hi = np.where(end <= 32, code << np.clip(32 - end, 0, 31).astype(np.uint32),
                  code >> np.clip(end - 32, 0, 31).astype(np.uint32))  # fmt: skip
    lo = np.where(end > 32, code << np.clip(64 - end, 0, 31).astype(np.uint32), 0)
    word = ((before >> 5).astype(np.int32) + lane_start[:, None]).reshape(-1)
    starts = np.flatnonzero(np.diff(word, prepend=-1))
    ids = word[starts]
    scratch = np.zeros(int(lane_words.sum()) + 2, np.uint32)
    scratch[ids] = np.add.reduceat(hi.reshape(-1).astype(np.uint32), starts)
    scratch[ids + 1] |= np.add.reduceat(lo.reshape(-1).astype(np.uint32), starts)

    # Hand the words out in decoder order: group, then lane.
    order = (taken - 1 + lane_start[:, None]).T.reshape(-1)
    words = scratch[order[np.flatnonzero(refill.T.reshape(-1))]]

    # Raw words: the raw field of lane step t at bits raw_bits * (t % raws_per_word).
    fields = width.raw_of(padded).astype(np.uint32)
    if ragged:
        fields[valid:] = 0
    per = width.groups_per_raw_word
    f = _by_group(fields, groups, width).reshape(groups // per, per, LANES, g2.GROUP)
    f = f.transpose(0, 2, 1, 3).reshape(groups // per, LANES, width.raws_per_word)
    shifts = (width.raw_bits * np.arange(width.raws_per_word)).astype(np.uint32)
    raw = (f << shifts).sum(axis=-1, dtype=np.uint32)  # disjoint bits: the sum is an OR
    return words, raw, lengths


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
