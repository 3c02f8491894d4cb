"""Trainable adapters over a frozen compressed base: LoRA and a sparse delta.

The base layer keeps its FP8 / ECF8 weight (an :class:`Ecf8Weight` or :class:`Fp8Weight`, never
an ``nnx.Param``), so an optimizer or a zeroth-order perturbation filtered on ``nnx.Param``
touches only the adapter; the compressed base stays bit-identical through training and is
never re-encoded. :func:`merge_delta` folds a trained sparse delta into a new FP8 weight
(requantized per row, lossy) and re-encodes it.

Numerics: the base contributes exactly what the base layer computes (``fp8_linear``); the
adapters add, in float32,

* LoRA: ``(x @ a) @ b * (alpha / rank)``, ``a`` [in, rank] random, ``b`` [rank, out] zero, so
  an untrained adapter leaves the output unchanged;
* sparse delta: ``x @ D.T`` with ``D`` [out, in] zero except ``values`` at the fixed
  ``(rows, cols)`` (e.g. a Meerkat mask chosen on calibration data).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ecf8_jax
from ecf8_jax.nn.layers import Ecf8Linear, Fp8Linear, dequantize, fp8_linear
from ecf8_jax.quantize import quantize_fp8


class LoRA(nnx.Module):
    """``base(x) + (x @ a) @ b * alpha / rank`` around a frozen linear layer.

    Args:
      base: an :class:`Ecf8Linear` or :class:`Fp8Linear` (any ``_ScaledLinear``).
      rank: adapter rank.
      alpha: scaling numerator (``alpha / rank`` multiplies the adapter).
      rngs: for ``a``'s initialisation (``b`` starts at zero).
    """

    def __init__(self, base, rank: int, *, alpha: float = 1.0, rngs: nnx.Rngs):
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        init = jax.random.normal(rngs.params(), (base.in_features, rank)) / np.sqrt(rank)
        self.a = nnx.Param(init.astype(jnp.float32))
        self.b = nnx.Param(jnp.zeros((rank, base.out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        low = jnp.dot(x.astype(jnp.float32), self.a[...]) @ self.b[...]
        return self.base(x) + low * self.scaling


class SparseDelta(nnx.Module):
    """``base(x) + x @ D.T`` with ``D`` zero except trainable values at fixed positions.

    Args:
      base: a frozen linear layer (:class:`Ecf8Linear` or :class:`Fp8Linear`).
      mask: bool ``[out, in]`` (numpy): where the delta may be non-zero; static.
    """

    def __init__(self, base, mask: np.ndarray):
        mask = np.asarray(mask, bool)
        if mask.shape != (base.out_features, base.in_features):
            raise ValueError(
                f"mask shape {mask.shape} != weight shape {(base.out_features, base.in_features)}"
            )
        self.base = base
        rows, cols = np.nonzero(mask)
        self.rows = nnx.Variable(jnp.asarray(rows, jnp.int32))  # not trained: not a Param
        self.cols = nnx.Variable(jnp.asarray(cols, jnp.int32))
        self.values = nnx.Param(jnp.zeros(rows.size, jnp.float32))

    def delta(self) -> jax.Array:
        """The dense float32 ``[out, in]`` delta."""
        shape = (self.base.out_features, self.base.in_features)
        return (
            jnp.zeros(shape, jnp.float32).at[self.rows[...], self.cols[...]].add(self.values[...])
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + fp8_linear(x.astype(jnp.float32), self.delta(), None)


def merge_delta(layer: SparseDelta, *, encode: bool = True):
    """Folds a trained delta into a new FP8 layer (requantized per row: lossy), ECF8-coded.

    Args:
      layer: the adapter; its base is left untouched.
      encode: return an :class:`Ecf8Linear` (default) or a raw :class:`Fp8Linear`.

    Returns:
      A new linear layer with weight ``dequantize(base) + delta``, per-row FP8 scales.
    """
    base = layer.base
    scale = base.scale[...] if base.scale is not None else None
    w = base.raw_weight()
    dense = w.astype(jnp.float32) if scale is None else dequantize(w, scale, base.block_size)
    merged = np.asarray(dense + layer.delta())
    q, row_scale = quantize_fp8(merged, granularity="row")
    bias = None if base.bias is None else base.bias[...]
    if encode:
        return Ecf8Linear(ecf8_jax.encode(q), row_scale, bias, dtype=base.dtype)
    return Fp8Linear(q, row_scale, bias, dtype=base.dtype)
