"""Dispatch for ``ecf8_matmul``: the fused Triton kernel, or decode followed by an XLA dot.

``implementation=None`` runs the fused kernel when the default backend is a GPU, and falls
back to ``xla`` with a warning when the kernel cannot take the shapes; on other backends it
decodes with the decode's own default (the Mosaic kernel on TPU, XLA on CPU) and multiplies
in XLA. An explicit ``implementation=`` never falls back: if it cannot run, it raises with the
reason. ``"xla"`` is XLA all the way down: the plain-jnp decode, then an XLA dot, on every
platform.
"""

from __future__ import annotations

import warnings
from typing import Literal

import jax

from pallas_kernels.ecf8_decode import api as decode_api
from pallas_kernels.ecf8_matmul.config import BlockSizes
from pallas_kernels.ecf8_matmul.pallas_gpu import tiled_matmul_gpu
from pallas_kernels.ecf8_matmul.reference import matmul_xla, tiles_to_matrix

Implementation = Literal["xla", "pallas_gpu"]
IMPLEMENTATIONS: tuple[Implementation, ...] = ("xla", "pallas_gpu")


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
    implementation: Implementation | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """float32[m, n] = (x @ w) * scale for ``w`` [k, n] in the ECF8 ``tiles`` layout.

    Args:
      x: [m, k] activations (computed in bf16, accumulated in float32).
      scale: float32[n] per output column.
      chunk_offsets, stream, signs, limits, deltas, symbols: the ECF8 arrays and tables.
      k, n: the weight's shape; fp8_dtype: its FP8 dtype.
      implementation: ``None`` (fused kernel on GPU, else the default decode and an XLA dot),
        ``"xla"`` (XLA decode, then an XLA dot) or ``"pallas_gpu"`` (fused).
      block_sizes: launch parameters of the fused kernel (default: ``BlockSizes.get_default``).
      interpret: run the Pallas kernel in interpret mode.

    Raises:
      ValueError: an explicitly requested implementation cannot run; says why.
    """
    steps = signs.shape[-2] * 32
    decode_implementation = "xla"
    if implementation is None:
        if jax.default_backend() == "gpu":
            implementation = "pallas_gpu"
            reason = shapes_supported(implementation, k, n, interpret=interpret)
            if reason is not None:
                warnings.warn(f"ecf8_matmul falls back to xla: {reason}", stacklevel=2)
                implementation = "xla"
        else:
            implementation, decode_implementation = "xla", None
    reason = shapes_supported(implementation, k, n, interpret=interpret)
    if reason is not None:
        raise ValueError(f"ecf8_matmul implementation {implementation!r}: {reason}")
    if implementation == "pallas_gpu":
        weights = (chunk_offsets, stream, signs, limits, deltas, symbols)
        return tiled_matmul_gpu(
            x, scale, weights, tile_source="ecf8", k=k, n=n, steps=steps, fp8_dtype=fp8_dtype,
            block_sizes=block_sizes, interpret=interpret,
        )  # fmt: skip
    slots = decode_api.decode(
        stream, chunk_offsets, signs, limits, deltas, symbols,
        implementation=decode_implementation, interpret=interpret,
    )  # fmt: skip
    return matmul_xla(x, scale, tiles_to_matrix(slots, k, n, steps), fp8_dtype)
