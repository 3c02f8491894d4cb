"""Plain-jnp reference of the version-2 GEMV: ``(x @ W.T) * scale`` in float32.

Why: the value the fused kernel (``pallas_gpu.grouped_gemv_gpu``) computes, up to float32
summation order. Bit-exactness is claimed against the kernel's raw-FP8 twin
(``pallas_gpu.fp8_rows_gemv``), which shares its accumulation order; this reference checks the
arithmetic itself.

Numerics: FP8 and 16-bit weights are exact in float32; float32 products and sums at HIGHEST
precision. ``slot_words`` lays an uncompressed weight out as the decoder's output words, what
the kernels' raw twins load instead of decoding.

Backend: any (XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.grouped_decode.reference import value_bits


def gemv_reference(x: jax.Array, w: jax.Array, scale: jax.Array) -> jax.Array:
    """float32[m, n] = (x[m, k] @ w[n, k].T) * scale[n], w an FP8 array."""
    y = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32).T, precision=lax.Precision.HIGHEST)
    return y * jnp.asarray(scale, jnp.float32)


def slot_words(w: jax.Array, chunk_steps: int) -> jax.Array:
    """An uncompressed weight as the decoder's output words: uint32[C, S * bits // 32, 128]
    in slot order (padded to whole chunks), what a raw twin loads instead of decoding."""
    bits = value_bits(w.dtype)
    uint = jnp.uint8 if bits == 8 else jnp.uint16
    per_chunk = chunk_steps * 128
    flat = lax.bitcast_convert_type(w, uint).reshape(-1)
    chunks = -(-flat.shape[0] // per_chunk)
    flat = jnp.pad(flat, (0, chunks * per_chunk - flat.shape[0]))
    per_word = 32 // bits
    shaped = flat.reshape(chunks, chunk_steps * 128 // (128 * per_word), 128, per_word)
    return lax.bitcast_convert_type(shaped, jnp.uint32)
