"""Host-side, vectorized numpy encoder for format version 2 (see ``grouped.py``).

As in version 1 the decoder's refill schedule is computed in closed form: before group ``g`` a
lane holds ``32 * w - B_g`` bits, where ``w`` is the number of words it has taken and ``B_g``
the code bits it consumed in groups ``< g``. It takes a word when that is below the chunk's
threshold ``T``, so after the refill of group ``g`` it has taken ``ceil((B_g + T) / 32)`` words.
Words are written in the order the decoder takes them: chunk, then group, then lane.

Everything runs on ``[group, lane]`` arrays in slot order (no transposes): a lane's four codes
of a group are joined into one code of at most 32 bits first, so the bit packing handles a
quarter of the symbols.
"""

from __future__ import annotations

import numpy as np

from ecf8_jax.format import grouped as g2
from ecf8_jax.format.codebook import code_lengths
from ecf8_jax.format.constants import LANES

_SCAN_BLOCK = 8
"""Rows of one block of ``_inclusive_scan``; chunk groups (``steps / 4``) are a multiple."""


def _inclusive_scan(x: np.ndarray) -> np.ndarray:
    """[groups, lanes] running sums over groups, in place (numpy's cumsum is a serial loop;
    adding whole rows of blocks of ``_SCAN_BLOCK`` groups is ~2x faster)."""
    if x.shape[0] % _SCAN_BLOCK:
        return np.cumsum(x, axis=0, dtype=x.dtype, out=x)
    b = x.reshape(-1, _SCAN_BLOCK, x.shape[1])
    for i in range(1, _SCAN_BLOCK):
        b[:, i] += b[:, i - 1]
    if b.shape[0] > 1:
        b[1:] += np.cumsum(b[:-1, -1], axis=0, dtype=x.dtype)[:, None]
    return x


def _raw_plane(padded: np.ndarray, groups: int, width: g2.Width) -> np.ndarray:
    """uint32[steps // raws_per_word, LANES] raw words: lane ``l``'s raw field of step ``t`` at
    bits ``raw_bits * (t % raws_per_word)``, built with shifts and masks on the output words
    of two lanes at once (uint64; the masks keep each lane's half to itself)."""
    x = padded.view("<u8").reshape(-1, LANES // 2)
    if width.bits == 8:
        # A lane's half holds its four bytes of group g, byte j at bits 8j. Nibble j = bit 7
        # as bit 3 | bits 2..0 of byte j, then squeezed to bits 4j.
        f = ((x >> 4) & 0x0808080808080808) | (x & 0x0707070707070707)
        f |= f >> 4
        f &= 0x00FF00FF00FF00FF
        f |= f >> 8
        f &= 0x0000FFFF0000FFFF
        pair = f.reshape(groups // 2, 2, LANES // 2)  # two groups to a raw word
    else:
        # A lane's half of word (g, p) holds values 2p, 2p + 1 at bits 0, 16; raw byte =
        # bit 15 as bit 7 | bits 6..0.
        f = ((x >> 8) & 0x0080008000800080) | (x & 0x007F007F007F007F)
        f |= f >> 8
        f &= 0x0000FFFF0000FFFF
        pair = f.reshape(groups, 2, LANES // 2)
    out = pair[:, 1] << 16
    out |= pair[:, 0]
    return out.view("<u4").astype(np.uint32, copy=False)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """uint32 canonical codes (``grouped.canonical_codes``): in (length, symbol) order, a
    code is its predecessors' Kraft sum, ``sum 2**(8 - l)``, scaled to its own length."""
    lens = lengths.astype(np.int64)
    order = np.argsort(np.where(lens > 0, lens, g2.MAX_CODE_LEN + 1), kind="stable")
    kraft = np.where(lens > 0, 1 << (g2.MAX_CODE_LEN - lens), 0)[order]
    codes = np.zeros(lens.shape, np.int64)
    codes[order] = np.cumsum(kraft) - kraft
    codes >>= g2.MAX_CODE_LEN - lens
    return np.where(lens > 0, codes, 0).astype(np.uint32)


def _joined_codes(padded: np.ndarray, valid: int, groups: int, width: g2.Width):
    """Code lengths, and each lane's four codes of a group joined (MSB first, at most 32 bits)
    with their total length: uint32[group, lane] each.

    Two adjacent values (a pair, one uint16 / uint32) give one index ``s0 | s1 << K`` of their
    K-bit symbols into tables of the pair's joined code and length, built per chunk (256
    entries for FP8, 65536 for 16-bit values): one table read per two values.
    """
    k = width.symbol_bits
    mask = width.num_symbols - 1
    v = padded.view(f"<u{width.bits // 4}")
    index = (v >> width.symbol_shift) & mask  # s0, bits 0..k-1; s1 above
    index |= (v >> (width.bits + width.symbol_shift - k)) & (mask << k)
    index = index.astype(np.intp)
    half = valid // 2
    pair_counts = np.bincount(index[:half], minlength=1 << 2 * k).reshape(1 << k, 1 << k)
    counts = pair_counts.sum(axis=0) + pair_counts.sum(axis=1)
    last = width.symbol_of(padded[valid - 1]) if valid % 2 else None
    if last is not None:  # the last value of a ragged chunk starts a pair
        counts[last] += 1
    lengths = code_lengths(counts, g2.MAX_CODE_LEN)
    codes = _canonical_codes(lengths)
    sym_len = lengths.astype(np.uint32)
    # [s1, s0]: the first value's code comes first (MSB).
    pair_len = sym_len[None, :] + sym_len[:, None]
    pair_code = (codes[None, :] << sym_len[:, None]) | codes[:, None]
    lens = np.take(pair_len.reshape(-1), index)
    code = np.take(pair_code.reshape(-1), index)
    if valid < padded.shape[0]:  # padding is not coded
        lens[half:] = 0
        code[half:] = 0
        if last is not None:
            lens[half] = sym_len[last]
            code[half] = codes[last]
    # Pair q (values 2q, 2q + 1) of each lane's group, as [group, lane] views.
    per = width.per_word // 2
    lens = lens.reshape(groups, width.words_per_group, LANES, per)
    code = code.reshape(groups, width.words_per_group, LANES, per)
    l0, l1 = lens[:, 0, :, 0], lens[:, 1 // per, :, 1 % per]
    c0, c1 = code[:, 0, :, 0], code[:, 1 // per, :, 1 % per]
    group_bits = l0 + l1
    joined = c0 << l1
    joined |= c1
    return lengths, joined, group_bits


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
    ragged = valid < slots
    padded = np.ascontiguousarray(padded)
    if ragged and padded[valid:].any():
        padded = padded.copy()
        padded[valid:] = 0
    # A lane's four codes of a group joined, MSB first: at most 32 bits.
    lengths, joined, group_bits = _joined_codes(padded, valid, groups, width)
    # Bit counts within a lane fit uint16 (half the memory traffic) up to 8184 steps.
    narrow = groups * g2.WORD_BITS + 2 * g2.WORD_BITS < 1 << 16
    group_bits = group_bits.astype(np.uint16 if narrow else np.int32)

    # Bits each lane consumed before each group; words taken after the refill of group g:
    # the fewest w with 32 w - B_g >= threshold.
    before = _inclusive_scan(group_bits.copy())
    before -= group_bits  # [groups, LANES]
    threshold = g2.GROUP * max(1, int(lengths.max()))
    taken = before + (threshold + g2.WORD_BITS - 1)
    taken >>= 5
    refill = np.empty(taken.shape, dtype=bool)
    refill[0] = True
    np.not_equal(taken[1:], taken[:-1], out=refill[1:])
    if ragged:  # refills only padding would need come last: not written
        first = np.arange(groups)[:, None] * (g2.GROUP * LANES)
        first = first + np.arange(LANES) * width.per_word
        refill &= first < valid
    lane_words = refill.sum(axis=0, dtype=np.int32)
    lane_start = np.cumsum(lane_words, dtype=np.int32) - lane_words
    total = int(lane_words.sum())

    # Lane l's bits fill words lane_start[l], ...: a joined code at bit position ``B_g`` of
    # the lane sits in the 64-bit window of words (B_g >> 5, B_g >> 5 + 1) from lane_start,
    # left-justified and shifted right by B_g & 31. The windows of one word have disjoint
    # bits, so their sum (``np.add.at``) is their OR.
    shift = before & (g2.WORD_BITS - 1)
    shift += group_bits
    window = joined.astype(np.uint64)
    window <<= np.subtract(64, shift, dtype=shift.dtype).astype(np.uint8)
    word = np.add(before >> 5, lane_start, dtype=np.intp)
    windows = np.zeros(total + 2, np.uint64)
    np.add.at(windows, word.reshape(-1), window.reshape(-1))
    scratch = (windows >> 32).astype(np.uint32)
    scratch[1:] |= windows[:-1].astype(np.uint32)

    # Hand the words out in decoder order: group, then lane.
    order = np.add(taken, lane_start - 1, dtype=np.int32)
    words = scratch.take(np.compress(refill.reshape(-1), order.reshape(-1)))
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
