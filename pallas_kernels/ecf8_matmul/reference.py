"""References for the fused ECF8 matmul.

``fp8_tiled_matmul`` is the bit-exact reference: the fused kernel's own tiling and
accumulation order, fed raw FP8 tiles instead of decoding them. ``matmul_xla`` is the plain
XLA computation (dequantize, dot, scale): equal in value up to float32 summation order, and
the ``xla`` implementation of the API.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.ecf8_matmul.pallas_gpu import tiled_matmul_gpu

LANES = 128


def tiles_to_matrix(slots: jax.Array, k: int, n: int, steps: int) -> jax.Array:
    """uint8[C * S * 128] decoded slots of a ``tiles``-layout tensor -> uint8[k, n].

    Chunk ``rb * (n // 128) + cb`` holds rows ``rb*S ..`` and columns ``cb*128 ..``; rows past
    ``k`` are padding.
    """
    row_blocks = -(-k // steps)
    tiles = slots.reshape(row_blocks, n // LANES, steps, LANES)
    return tiles.transpose(0, 2, 1, 3).reshape(row_blocks * steps, n)[:k]


def fp8_tiled_matmul(
    x: jax.Array, scale: jax.Array, w_bytes: jax.Array, *, steps: int, fp8_dtype, **kwargs
) -> jax.Array:
    """The fused kernel with the decode replaced by a load of raw FP8 tiles.

    Args:
      x: [m, k]; scale: float32[n]; w_bytes: uint8[k, n] raw FP8 bit patterns.
      steps: tile rows (the ECF8 tensor's ``chunk_steps``), so both kernels tile alike.
      fp8_dtype: the FP8 dtype of ``w_bytes``.
      **kwargs: passed to ``tiled_matmul_gpu`` (``block_m``, ``num_warps``, ``interpret``).
    """
    k, n = w_bytes.shape
    return tiled_matmul_gpu(
        x, scale, (w_bytes,), tile_source="raw", k=k, n=n, steps=steps, fp8_dtype=fp8_dtype,
        **kwargs,
    )  # fmt: skip


def matmul_xla(x: jax.Array, scale: jax.Array, w_bytes: jax.Array, fp8_dtype) -> jax.Array:
    """float32[m, n] = (bf16(x) @ bf16(w)) * scale, in XLA."""
    w = lax.bitcast_convert_type(jnp.asarray(w_bytes, jnp.uint8), fp8_dtype).astype(jnp.bfloat16)
    y = jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)
    return y * jnp.asarray(scale, jnp.float32)[None, :]
