"""Plain-jnp decoder of ECF8 format version 2: the CPU path and every kernel's oracle.

Why: version 2 (docs/FORMAT.md) decodes four symbols per lane between cross-lane scans, each
with one read of a 256-entry table, and packs them with four raw fields into output words:
one uint32 of four FP8 bytes (``bits = 8``), or two of two 16-bit values each (``bits = 16``:
BF16, FP16; symbol bits 14..7, raw byte = sign and bits 6..0). ``decode_group`` is that whole step, written once and shared by the XLA path and
every Pallas backend; a backend supplies only ``GroupOps`` (prefix scan, word fetch, table
read).

Numerics: integer only, bit-exact. A lane's bit count stays in [0, 63] whatever the data (a
refill adds 32 below the threshold T <= 32, a group consumes at most T: no table entry is
longer than T / 4), so every shift amount is in range; stream positions are clamped, so a malformed tensor decodes to garbage, never to an
out-of-bounds read.

Backend: any (XLA). All chunks and lanes advance together, one group per ``lax.scan`` step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Format constants (ecf8_jax/format/grouped.py; tests/pallas_kernels pin them equal).
GROUP = 4  # symbols per lane per refill; bytes per output word
WORD_BITS = 32  # stream word; a lane refills below 32 buffered bits
PEEK_SHIFT = 24  # peek = the top 8 bits of the 64-bit buffer's high word
LUT_SIZE = 256
LENGTH_MASK = 0xF  # table entry: symbol << 4 | length
NIBBLES_PER_WORD = 8  # raw words hold two groups of four nibbles
BITS = (8, 16)  # value widths: FP8; BF16/FP16


def groups_per_raw_word(bits: int) -> int:
    """Groups whose raw fields share one raw word: 2 (nibbles) or 1 (bytes)."""
    return 2 if bits == 8 else 1


def words_per_group(bits: int) -> int:
    """Output words per lane per group: 1 (four bytes) or 2 (four 16-bit values)."""
    return 1 if bits == 8 else 2


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"ECF8 version 2 decodes {BITS}-bit values, not {bits}")


def value_bits(dtype) -> int:
    """The width (8 or 16) of a weight dtype the version-2 kernels take; raises otherwise."""
    bits = jnp.dtype(dtype).itemsize * 8
    check_bits(bits)
    return bits


class GroupOps(NamedTuple):
    """The per-backend helpers of ``decode_group`` (everything else is shared).

    Attributes:
      exclusive_prefix: int32[..., L] -> int32[..., L], exclusive prefix sum across lanes.
      fetch: int32[..., L] (clamped) word positions -> uint32[..., L] stream words.
      lookup: int32[..., L] 8-bit peeks -> int32[..., L] table entries.
    """

    exclusive_prefix: Callable
    fetch: Callable
    lookup: Callable


def spread_nibbles(raw_word, g):
    """The four raw nibbles of group ``g`` as the sign and low bits of four bytes.

    Args:
      raw_word: uint32[...] raw words (nibble of step ``t`` at bits ``4 * (t % 8)``).
      g: group index; its parity selects the word's half.

    Returns:
      uint32[...] with byte ``j`` = ``(nibble_j & 8) << 4 | (nibble_j & 7)``.
    """
    half = lax.convert_element_type((g & 1) * 16, jnp.uint32)
    x = (raw_word >> half) & 0xFFFF
    x = (x | (x << 8)) & 0x00FF00FF
    x = (x | (x << 4)) & 0x0F0F0F0F
    return ((x & 0x08080808) << 4) | (x & 0x07070707)


def spread_bytes(raw_word, p):
    """Raw bytes ``2p, 2p + 1`` of a 16-bit group as the sign and low bits of two values.

    Args:
      raw_word: uint32[...] the group's raw word (byte ``j`` at bits ``8 * j``).
      p: static output word index, 0 or 1.

    Returns:
      uint32[...] with half ``k`` = ``(byte & 0x80) << 8 | (byte & 0x7F)`` of byte ``2p + k``.
    """
    x = (raw_word >> (16 * p)) & 0xFFFF
    x = (x | (x << 8)) & 0x00FF00FF
    return ((x & 0x00800080) << 8) | (x & 0x007F007F)


def decode_group(
    hi, lo, nbits, base, threshold, ops: GroupOps, raw_word, g, num_words, bits: int = 8
):
    """One group (four symbols) for a block of lanes; shared by the reference and kernels.

    Args:
      hi, lo: uint32[..., L] each lane's 64-bit bit buffer, next bit in the MSB of ``hi``.
      nbits: int32[..., L] valid bits, in [0, 63].
      base: int32[..., 1] the next word to hand out, per chunk.
      threshold: int32[..., 1] per chunk, refill below this many bits (4 * longest code,
        at most 32; table entries are never longer than the longest code).
      ops: the backend's helpers.
      raw_word: uint32[..., L] the raw word holding this group's raw fields.
      g: group index (traced or static int32); for ``bits = 8`` its parity picks the half
        of ``raw_word``.
      num_words: words in the stream; positions are clamped to ``[0, num_words - 1]``.
      bits: 8 (FP8) or 16 (BF16, FP16), static.

    Returns:
      ``(hi, lo, nbits, base, out)`` with ``out`` a tuple of ``words_per_group(bits)``
      uint32[..., L] output words (four bytes; or two 16-bit values each).
    """
    need = nbits < threshold
    needi = need.astype(jnp.int32)
    pos = jnp.clip(base + ops.exclusive_prefix(needi), 0, num_words - 1)
    word = ops.fetch(pos)
    shift = jnp.where(need, nbits, 0).astype(jnp.uint32)  # in [0, 31]
    hi = jnp.where(need, hi | (word >> shift), hi)
    lo = jnp.where(need, lo | ((word << 1) << (31 - shift)), lo)
    nbits = nbits + WORD_BITS * needi
    base = base + needi.sum(axis=-1, keepdims=True)

    if bits == 8:
        out = [spread_nibbles(raw_word, g)]
    else:
        out = [spread_bytes(raw_word, p) for p in range(2)]
    per_word = WORD_BITS // bits
    for j in range(GROUP):
        entry = ops.lookup((hi >> PEEK_SHIFT).astype(jnp.int32))
        length = entry & LENGTH_MASK  # in [1, 8]
        ulen = length.astype(jnp.uint32)
        hi = (hi << ulen) | (lo >> (WORD_BITS - ulen))
        lo = lo << ulen
        nbits = nbits - length
        p, k = divmod(j, per_word)
        out[p] = out[p] | ((entry >> 4).astype(jnp.uint32) << (bits * k + bits // 2 - 1))
    return hi, lo, nbits, base, tuple(out)


def kernel_arrays(stream, chunk_offsets, raw, lut, threshold):
    """The raw arrays as the decoders take them: a never-empty uint32 stream (clamped reads of
    a malformed tensor need a word to land on), uint32 offsets and raw words, int32 tables."""
    stream = jnp.asarray(stream, jnp.uint32)
    if stream.shape[0] == 0:
        stream = jnp.zeros((1,), jnp.uint32)
    return (
        stream,
        jnp.asarray(chunk_offsets, jnp.uint32),
        jnp.asarray(raw, jnp.uint32),
        jnp.asarray(lut, jnp.int32),
        jnp.asarray(threshold, jnp.int32),
    )


def words_to_bytes(words: jax.Array) -> jax.Array:
    """uint32[C, S // 4, L] packed output words -> uint8[C * S * L] in slot order."""
    return lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)


def words_to_values(words: jax.Array, bits: int = 8) -> jax.Array:
    """Packed output words -> uint8 (``bits = 8``) or uint16 values, flat, in slot order."""
    return lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16).reshape(-1)


def grouped_decode_reference(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    *,
    bits: int = 8,
) -> jax.Array:
    """Decodes every chunk.

    Args:
      stream: uint32[W] code words.
      chunk_offsets: uint32[C + 1] first word of each chunk.
      raw: uint32[C, S // 8, L] raw nibble words (``bits = 8``) or uint32[C, S // 4, L] raw
        byte words (``bits = 16``).
      lut: int32[C, 256] per-chunk decode tables (``symbol << 4 | length``).
      threshold: int32[C] per chunk, a lane refills below this many buffered bits.
      bits: value width, 8 or 16.

    Returns:
      uint32[C, S * bits // 32, L] in slot order. ``bits = 8``: word ``(c, g, l)`` holds the
      bytes of slots ``c*S*L + g*4*L + 4*l + j``, ``j`` = 0..3 from the low byte.
      ``bits = 16``: word ``(c, 2g + p, l)`` holds slots ``c*S*L + g*4*L + p*2*L + 2*l + k``,
      ``k`` = 0, 1 from the low half (``words_to_values``).
    """
    check_bits(bits)
    chunks, raw_rows, lanes = raw.shape
    per_raw, per_group = groups_per_raw_word(bits), words_per_group(bits)
    groups = per_raw * raw_rows
    if chunks == 0:
        return jnp.zeros((0, groups * per_group, lanes), jnp.uint32)
    stream, chunk_offsets, raw, lut, threshold = kernel_arrays(
        stream, chunk_offsets, raw, lut, threshold
    )
    ops = GroupOps(
        exclusive_prefix=lambda x: jnp.cumsum(x, axis=-1) - x,
        fetch=lambda pos: stream[pos],
        lookup=lambda peek: jnp.take_along_axis(lut, peek, axis=-1),
    )

    def body(carry, g):
        hi, lo, nbits, base = carry
        raw_word = lax.dynamic_index_in_dim(raw, g // per_raw, axis=1, keepdims=False)
        hi, lo, nbits, base, out = decode_group(
            hi, lo, nbits, base, threshold[:, None], ops, raw_word, g, stream.shape[0], bits
        )
        return (hi, lo, nbits, base), jnp.stack(out, axis=1)  # [C, per_group, L]

    zeros = jnp.zeros((chunks, lanes), jnp.uint32)
    init = (zeros, zeros, jnp.zeros((chunks, lanes), jnp.int32),
            chunk_offsets[:chunks].astype(jnp.int32)[:, None])  # fmt: skip
    _, out = lax.scan(body, init, jnp.arange(groups, dtype=jnp.int32))  # [G, C, P, L]
    return out.transpose(1, 0, 2, 3).reshape(chunks, groups * per_group, lanes)
