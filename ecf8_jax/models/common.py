"""Pieces shared by the models: norms, attention, and building linear layers from checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecf8_jax.nn.layers import Bf16Embed, Bf16Linear, Embed, Fp8Embed, Fp8Linear, Linear
from ecf8_jax.quantize import fp8_max


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x**2) + eps) * weight`` in float32 (Hugging Face ``LlamaRMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        var = jnp.mean(x * x, axis=-1, keepdims=True)
        return self.weight[...] * (x * jax.lax.rsqrt(var + self.eps))


class LayerNorm(nnx.Module):
    """LayerNorm with weight and bias, float32 (Hugging Face ``nn.LayerNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-12):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


def make_linear(
    in_features: int,
    out_features: int,
    rngs: nnx.Rngs,
    *,
    bias: bool = False,
    fp8: bool = True,
    bf16: bool = False,
    dtype=jnp.float32,
) -> Linear | Fp8Linear | Bf16Linear:
    """A randomly initialised layer: :class:`Fp8Linear` (per-row scale), :class:`Bf16Linear`
    (``bf16=True``, the float weights rounded to bfloat16; computes in bf16 → float32) or
    float :class:`Linear`.

    Random FP8 / BF16 models are for tests and shapes; real ones come from ``ecf8_jax.io``
    loaders.
    """
    layer = Linear.init(in_features, out_features, rngs, bias=bias, dtype=dtype)
    b = layer.bias[...] if layer.bias is not None else None
    w = layer.weight[...]
    if bf16:
        return Bf16Linear.from_float(w, b)
    if not fp8:
        return layer
    if isinstance(w, jax.core.Tracer):  # abstract init (nnx.eval_shape): quantize with jnp
        return Fp8Linear(*_quantize_rows(w), b, dtype=dtype)
    return Fp8Linear.from_float(np.asarray(w), b, dtype=dtype)


def _quantize_rows(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row E4M3 quantization in jnp (traceable), the layout of ``quantize_fp8(w, "row")``.

    Used only where the weight is abstract (building a model under ``nnx.eval_shape`` for
    ahead-of-time compilation); concrete models use the numpy ``quantize_fp8``.
    """
    fmax = fp8_max(jnp.float8_e4m3fn)
    amax = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    scale = jnp.where(amax > 0, amax / fmax, 1.0).astype(jnp.float32)
    return jnp.clip(w / scale, -fmax, fmax).astype(jnp.float8_e4m3fn), scale


def make_embed(
    num: int, dim: int, rngs: nnx.Rngs, *, fp8: bool = True, bf16: bool = False, dtype=jnp.float32
) -> Embed | Fp8Embed | Bf16Embed:
    """A randomly initialised embedding table, FP8 per row, BF16 (``bf16=True``) or float."""
    layer = Embed.init(num, dim, rngs, dtype=dtype)
    table = layer.table[...]
    if bf16:
        return Bf16Embed.from_float(table)
    if not fp8:
        return layer
    if isinstance(table, jax.core.Tracer):  # abstract init: see make_linear
        return Fp8Embed(*_quantize_rows(table), dtype=dtype)
    return Fp8Embed.from_float(np.asarray(table), dtype=dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """Softmax attention with grouped KV heads, float32.

    Args:
      q: ``[batch, q_len, heads, head_dim]``.
      k, v: ``[batch, kv_len, kv_heads, head_dim]``; ``heads`` a multiple of ``kv_heads``.
      mask: bool ``[batch, q_len, kv_len]``, True where a query may attend.
      scale: multiplies the scores (``head_dim ** -0.5``).

    Returns:
      ``[batch, q_len, heads, head_dim]``.
    """
    b, t, h, d = q.shape
    kvh = k.shape[2]
    q = q.reshape(b, t, kvh, h // kvh, d)  # [batch, q_len, kv_heads, group, head_dim]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * scale
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)
