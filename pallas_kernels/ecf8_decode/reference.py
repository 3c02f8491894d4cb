"""Plain-jnp ECF8 decoder: the CPU path and the oracle every Pallas backend must match.

Why: decodes the chunked, lane-interleaved Huffman stream of docs/FORMAT.md with nothing but
static trip counts, shifts, masks, compares, a lane prefix sum and table reads by index, so
the same algorithm maps onto Pallas on GPU and TPU.

Numerics: integer only, bit-exact. Every index that comes from the data (stream position,
code length, symbol index) is clamped, so a malformed tensor decodes to garbage, never to an
out-of-bounds read.

Backend: any (XLA). All chunks and lanes advance together, one step per ``lax.scan`` step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

UNIT_BITS = 16  # bits per stream unit; a lane refills when it holds fewer
SIGN_WORD_BITS = 32  # steps per packed sign word
NUM_SYMBOLS = 128  # 7-bit magnitudes
TABLE_MIN_SLOTS = 1 << 18  # the XLA decoder's lookup table pays off from here


class LaneOps(NamedTuple):
    """The two per-backend helpers of a decode step (everything else is shared).

    Attributes:
      exclusive_prefix: int32[..., L] -> int32[..., L], exclusive prefix sum across lanes.
      fetch: ``(position) -> uint32[..., L]`` the 16-bit unit at each (already clamped)
        unit position, for a lane ``[..., L]`` block.
      lookup: int32[..., L] symbol index (already clamped to [0, 127]) -> int32 magnitude.
      decode_peek: optional ``peek -> (length, magnitude)`` replacing the canonical compare
        chain (the CPU path reads both from one 64 Ki-entry table instead).
    """

    exclusive_prefix: Callable
    fetch: Callable
    lookup: Callable
    decode_peek: Callable | None = None


def decode_step(buf, nbits, base, ops: LaneOps, limits, deltas, sign_word, t, num_units):
    """One decode step for a block of lanes, shared by the reference and every kernel.

    Args:
      buf: uint32[..., L] bit buffers, next bit in the MSB.
      nbits: int32[..., L] valid bits in ``buf``.
      base: int32[..., 1] unit index of the next unit to hand out, per chunk.
      ops: the backend's lane helpers.
      limits: ``MAX_CODE_LEN + 1`` int32 scalars, the codebook's ``limits`` table.
      deltas: ``MAX_CODE_LEN + 1`` int32 scalars, the codebook's ``deltas`` table.
      sign_word: uint32[..., L] the packed sign word of this step's group of 32 steps.
      t: step index (its low 5 bits select the sign bit).
      num_units: units in the stream; positions are clamped to ``[0, num_units - 1]``.

    Returns:
      ``(buf, nbits, base, byte)`` with byte uint8[..., L].
    """
    max_len = len(limits) - 1
    need = nbits < UNIT_BITS
    needi = need.astype(jnp.int32)
    pos = jnp.clip(base + ops.exclusive_prefix(needi), 0, num_units - 1)
    unit = ops.fetch(pos)
    shift = jnp.clip(UNIT_BITS - nbits, 0, UNIT_BITS).astype(jnp.uint32)
    buf = jnp.where(need, buf | (unit << shift), buf)
    nbits = nbits + UNIT_BITS * needi
    base = base + needi.sum(axis=-1, keepdims=True)

    peek = (buf >> (32 - max_len)).astype(jnp.int32)
    if ops.decode_peek is None:
        length, magnitude = canonical_symbol(peek, limits, deltas, ops.lookup)
    else:
        length, magnitude = ops.decode_peek(peek)
    buf = buf << length.astype(jnp.uint32)
    nbits = nbits - length
    sign = (sign_word >> lax.convert_element_type(t & (SIGN_WORD_BITS - 1), jnp.uint32)) & 1
    byte = (magnitude.astype(jnp.uint32) | (sign << 7)).astype(jnp.uint8)
    return buf, nbits, base, byte


def canonical_symbol(peek, limits, deltas, lookup):
    """Code length and magnitude of the canonical code at the front of ``peek``.

    The length is 1 + the number of limits at or below the peek; the index delta of that
    length is selected along the way (no table read by length, which Mosaic cannot do).

    Args:
      peek: int32[...] the next MAX_CODE_LEN bits.
      limits, deltas: ``MAX_CODE_LEN + 1`` int32 scalars each (the codebook tables).
      lookup: int32 symbol index (clamped to [0, 127]) -> int32 magnitude.

    Returns:
      ``(length, magnitude)``, int32 each.
    """
    max_len = len(limits) - 1
    length = jnp.ones_like(peek)
    delta = jnp.full_like(peek, deltas[1])
    for k in range(1, max_len):
        longer = peek >= limits[k]
        length = length + longer.astype(jnp.int32)
        delta = jnp.where(longer, deltas[k + 1], delta)
    index = jnp.clip((peek >> (max_len - length)) + delta, 0, NUM_SYMBOLS - 1)
    return length, lookup(index)


def split_unit(word, pos):
    """The 16-bit unit ``pos`` of a stream, given its word ``stream[pos >> 1]``."""
    return jnp.where((pos & 1) == 1, word & 0xFFFF, word >> UNIT_BITS)


def _xla_ops(stream, symbols, limits, deltas, use_table) -> LaneOps:
    lookup = lambda index: symbols[index]  # noqa: E731
    decode_peek = None
    if use_table:  # one gather from a 64 Ki-entry table: length << 8 | magnitude
        peeks = jnp.arange(1 << (len(limits) - 1), dtype=jnp.int32)
        length, magnitude = canonical_symbol(peeks, limits, deltas, lookup)
        table = (length << 8) | magnitude

        def decode_peek(peek):
            entry = table[peek]
            return entry >> 8, entry & 0xFF

    return LaneOps(
        exclusive_prefix=lambda x: jnp.cumsum(x, axis=-1) - x,
        fetch=lambda pos: split_unit(stream[pos >> 1], pos),
        lookup=lookup,
        decode_peek=decode_peek,
    )


def kernel_arrays(stream, chunk_offsets, signs, limits, deltas, symbols):
    """The six raw arrays as the decoders take them: uint32 stream (never empty: a malformed
    tensor's clamped reads need a word to land on), uint32 offsets and signs, int32 tables."""
    stream = jnp.asarray(stream, jnp.uint32)
    if stream.shape[0] == 0:
        stream = jnp.zeros((1,), jnp.uint32)
    return (
        stream,
        jnp.asarray(chunk_offsets, jnp.uint32),
        jnp.asarray(signs, jnp.uint32),
        jnp.asarray(limits, jnp.int32),
        jnp.asarray(deltas, jnp.int32),
        jnp.asarray(symbols, jnp.int32),
    )


def ecf8_decode_reference(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    use_table: bool | None = None,
) -> jax.Array:
    """Decodes every chunk.

    Args:
      stream: uint32[W] code units, two per word, high half first.
      chunk_offsets: uint32[C + 1] first unit of each chunk.
      signs: uint32[C, S // 32, L] packed sign bits.
      limits: int32[MAX_CODE_LEN + 1] canonical-code limits (see the format's codebook).
      deltas: int32[MAX_CODE_LEN + 1] index deltas per code length.
      symbols: int32[128] magnitudes sorted by (code length, magnitude).
      use_table: decode each symbol with one read of a 64 Ki-entry (length, magnitude) table
        built from the canonical rule, instead of the compare chain the kernels use; default:
        for ``TABLE_MIN_SLOTS`` slots or more, where building the table pays off.

    Returns:
      uint8[C * S * L] the FP8 bit patterns, element ``c*S*L + t*L + l`` from lane ``l`` of
      chunk ``c`` at step ``t`` (trailing padding included; the caller slices it off).
    """
    chunks, groups, lanes = signs.shape
    steps = groups * SIGN_WORD_BITS
    if chunks == 0:
        return jnp.zeros((0,), jnp.uint8)
    stream, chunk_offsets, signs, limits, deltas, symbols = kernel_arrays(
        stream, chunk_offsets, signs, limits, deltas, symbols
    )

    limit_list = [limits[k] for k in range(limits.shape[0])]
    delta_list = [deltas[k] for k in range(deltas.shape[0])]
    if use_table is None:
        use_table = chunks * steps * lanes >= TABLE_MIN_SLOTS
    ops = _xla_ops(stream, symbols, limit_list, delta_list, use_table)
    num_units = 2 * stream.shape[0]

    def body(carry, t):
        buf, nbits, base = carry
        sign_word = lax.dynamic_index_in_dim(signs, t // SIGN_WORD_BITS, axis=1, keepdims=False)
        buf, nbits, base, byte = decode_step(
            buf, nbits, base, ops, limit_list, delta_list, sign_word, t, num_units
        )
        return (buf, nbits, base), byte

    init = (
        jnp.zeros((chunks, lanes), jnp.uint32),
        jnp.zeros((chunks, lanes), jnp.int32),
        jnp.asarray(chunk_offsets[:chunks], jnp.int32)[:, None],
    )
    _, out = lax.scan(body, init, jnp.arange(steps, dtype=jnp.int32))  # [S, C, L]
    return out.transpose(1, 0, 2).reshape(-1)
