"""Dispatch for ``ecf8_matmul``: the fused Triton kernel, or decode followed by an XLA dot."""

from __future__ import annotations

import jax

from pallas_kernels.ecf8_decode import api as decode_api
from pallas_kernels.ecf8_matmul.pallas_gpu import tiled_matmul_gpu
from pallas_kernels.ecf8_matmul.reference import matmul_xla, tiles_to_matrix

IMPLEMENTATIONS = ("xla", "pallas_gpu")


def shapes_supported(implementation: str, k: int, n: int, *, interpret: bool = False):
    """Why ``implementation`` cannot run this matmul here, or None if it can."""
    if implementation not in IMPLEMENTATIONS:
        return f"unknown implementation {implementation!r}; available: {IMPLEMENTATIONS}"
    if n % 128:
        return f"the weight's N = {n} must be a multiple of 128 (the tiles layout)"
    if implementation == "pallas_gpu" and not interpret and jax.default_backend() != "gpu":
        return (
            f"pallas_gpu needs a GPU (the default backend is {jax.default_backend()}); "
            "use interpret=True"
        )
    return None


def ecf8_matmul(
    x: jax.Array,
    scale: jax.Array,
    chunk_offsets: jax.Array,
    stream: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    k: int,
    n: int,
    fp8_dtype,
    implementation: str | None = None,
    interpret: bool = False,
) -> jax.Array:
    """float32[m, n] = (x @ w) * scale for ``w`` [k, n] in the ECF8 ``tiles`` layout.

    Args:
      x: [m, k] activations (computed in bf16, accumulated in float32).
      scale: float32[n] per output column.
      chunk_offsets, stream, signs, limits, deltas, symbols: the ECF8 arrays and tables.
      k, n: the weight's shape; fp8_dtype: its FP8 dtype.
      implementation: ``None`` (fused kernel on GPU, else ``xla``), ``"xla"`` (decode, then
        an XLA dot) or ``"pallas_gpu"`` (fused).
      interpret: run the Pallas kernel in interpret mode.

    Raises:
      ValueError: an explicitly requested implementation cannot run; says why.
    """
    steps = signs.shape[-2] * 32
    if implementation is None:
        implementation = "pallas_gpu" if jax.default_backend() == "gpu" else "xla"
        if shapes_supported(implementation, k, n, interpret=interpret) is not None:
            implementation = "xla"
    reason = shapes_supported(implementation, k, n, interpret=interpret)
    if reason is not None:
        raise ValueError(f"ecf8_matmul implementation {implementation!r}: {reason}")
    if implementation == "pallas_gpu":
        weights = (chunk_offsets, stream, signs, limits, deltas, symbols)
        return tiled_matmul_gpu(
            x, scale, weights, tile_source="ecf8", k=k, n=n, steps=steps, fp8_dtype=fp8_dtype,
            interpret=interpret,
        )  # fmt: skip
    slots = decode_api.decode(stream, chunk_offsets, signs, limits, deltas, symbols)
    return matmul_xla(x, scale, tiles_to_matrix(slots, k, n, steps), fp8_dtype)
