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

import jax
import jax.numpy as jnp
from jax import lax

UNIT_BITS = 16  # bits per stream unit; a lane refills when it holds fewer
SIGN_WORD_BITS = 32  # steps per packed sign word


def decode_step(buf, nbits, base, stream, limits, deltas, symbols, sign_word, t):
    """One decode step for a block of lanes; shared by every backend that can run jnp.

    Args:
      buf: uint32[..., L] bit buffers, next bit in the MSB.
      nbits: int32[..., L] valid bits in ``buf``.
      base: int32[...] unit index of the next unit to hand out, per chunk.
      stream: uint32[W] units, two per word.
      limits: int32[MAX_CODE_LEN + 1]; deltas: int32[MAX_CODE_LEN + 1]; symbols: int32[128].
      sign_word: uint32[..., L] the packed sign word of this step's group of 32 steps.
      t: step index (its low 5 bits select the sign bit).

    Returns:
      ``(buf, nbits, base, byte)`` with byte uint8[..., L].
    """
    max_len = limits.shape[0] - 1
    need = nbits < UNIT_BITS
    needi = need.astype(jnp.int32)
    prefix = jnp.cumsum(needi, axis=-1) - needi
    pos = jnp.clip(base[..., None] + prefix, 0, 2 * stream.shape[0] - 1)
    word = stream[pos >> 1]
    unit = jnp.where((pos & 1) == 1, word & 0xFFFF, word >> UNIT_BITS)
    shift = jnp.clip(UNIT_BITS - nbits, 0, UNIT_BITS).astype(jnp.uint32)
    buf = jnp.where(need, buf | (unit << shift), buf)
    nbits = nbits + UNIT_BITS * needi
    base = base + needi.sum(axis=-1)

    peek = (buf >> (32 - max_len)).astype(jnp.int32)
    length = 1 + (peek[..., None] >= limits[1:max_len]).sum(axis=-1, dtype=jnp.int32)
    index = (peek >> (max_len - length)) + deltas[length]
    magnitude = symbols[jnp.clip(index, 0, symbols.shape[0] - 1)]
    buf = buf << length.astype(jnp.uint32)
    nbits = nbits - length
    sign = (sign_word >> (t % SIGN_WORD_BITS).astype(jnp.uint32)) & 1
    byte = (magnitude.astype(jnp.uint32) | (sign << 7)).astype(jnp.uint8)
    return buf, nbits, base, byte


def ecf8_decode_reference(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
) -> jax.Array:
    """Decodes every chunk.

    Args:
      stream: uint32[W] code units, two per word, high half first.
      chunk_offsets: uint32[C + 1] first unit of each chunk.
      signs: uint32[C, S // 32, L] packed sign bits.
      limits: int32[MAX_CODE_LEN + 1] canonical-code limits (see the format's codebook).
      deltas: int32[MAX_CODE_LEN + 1] index deltas per code length.
      symbols: int32[128] magnitudes sorted by (code length, magnitude).

    Returns:
      uint8[C * S * L] the FP8 bit patterns, element ``c*S*L + t*L + l`` from lane ``l`` of
      chunk ``c`` at step ``t`` (trailing padding included; the caller slices it off).
    """
    chunks, groups, lanes = signs.shape
    steps = groups * SIGN_WORD_BITS
    if chunks == 0:
        return jnp.zeros((0,), jnp.uint8)
    stream = jnp.asarray(stream, jnp.uint32)
    signs = jnp.asarray(signs, jnp.uint32)
    if stream.shape[0] == 0:  # malformed: keep every read in bounds
        stream = jnp.zeros((1,), jnp.uint32)
    limits = jnp.asarray(limits, jnp.int32)
    deltas = jnp.asarray(deltas, jnp.int32)
    symbols = jnp.asarray(symbols, jnp.int32)

    def body(carry, t):
        buf, nbits, base = carry
        sign_word = lax.dynamic_index_in_dim(signs, t // SIGN_WORD_BITS, axis=1, keepdims=False)
        buf, nbits, base, byte = decode_step(
            buf, nbits, base, stream, limits, deltas, symbols, sign_word, t
        )
        return (buf, nbits, base), byte

    init = (
        jnp.zeros((chunks, lanes), jnp.uint32),
        jnp.zeros((chunks, lanes), jnp.int32),
        jnp.asarray(chunk_offsets[:chunks], jnp.int32),
    )
    _, out = lax.scan(body, init, jnp.arange(steps, dtype=jnp.int32))  # [S, C, L]
    return out.transpose(1, 0, 2).reshape(-1)
