"""Plain-jnp reference of the version-2 GEMV: ``(x @ W.T) * scale`` in float32.

Why: the value the fused kernel (``pallas_gpu.grouped_gemv_gpu``) computes, up to float32
summation order. Bit-exactness is claimed against the kernel's raw-FP8 twin
(``pallas_gpu.fp8_rows_gemv``), which shares its accumulation order; this reference checks the
arithmetic itself.

Numerics: FP8 weights are exact in float32; float32 products and sums at HIGHEST precision.

Backend: any (XLA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def gemv_reference(x: jax.Array, w: jax.Array, scale: jax.Array) -> jax.Array:
    """float32[m, n] = (x[m, k] @ w[n, k].T) * scale[n], w an FP8 array."""
    y = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32).T, precision=lax.Precision.HIGHEST)
    return y * jnp.asarray(scale, jnp.float32)
