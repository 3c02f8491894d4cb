"""Flax NNX layers whose weights are scaled FP8 or BF16, stored raw (``Fp8*``, ``Bf16*``) or
ECF8-coded (``Ecf8*``).

Why: a model keeps its weights compressed in memory and decodes each one inside the jitted
forward pass, right before the matmul that uses it. The raw-FP8 twins run the *same* code with the
decode step replaced by the stored array, so a compressed model's outputs can be checked
bit-for-bit against the uncompressed one (the decode is lossless, everything after it is shared).

Numerics (one function, :func:`fp8_linear`, serves every linear layer):

* dequantize: ``w = (fp8.astype(float32) * scale).astype(dtype)``, the scale broadcast per tensor,
  per output channel, or per ``block_size`` block (the 128×128 ``weight_scale_inv`` layout of
  DeepSeek-V3 / Qwen3 FP8 checkpoints, which despite its name multiplies the FP8 values);
* ``y = dot(x.astype(dtype), w.T, preferred_element_type=float32) + bias``: float32 accumulation
  and a float32 result. ``dtype`` is the compute dtype, float32 by default (bit-faithful to the
  dequantized checkpoint), ``jnp.bfloat16`` for speed (FP8 values are exact in bf16, the scaled
  ones are rounded once).

BF16 weights (:class:`Bf16Linear`, :class:`Bf16Embed`, and :class:`Ecf8Linear` /
:class:`Ecf8Embed` holding a bfloat16 :class:`~ecf8_jax.Ecf8Tensor`) have no scale: the compute
dtype defaults to the weight's own dtype, so a linear layer runs ``dot(x.astype(bfloat16), w.T,
preferred_element_type=float32)``: bf16 × bf16 products (exact in float32) accumulated in float32,
a float32 result, the MXU / tensor-core path and the numerics of ``torch.nn.Linear`` on BF16
weights before its final rounding to bf16 (activations stay float32 between layers here; only
the matmul inputs are rounded to bf16). An embedding lookup returns the rows widened to float32
(exact); the tied head is the same bf16 × bf16 → f32 dot. FP16 weights (``float16``) work the
same way, with float16 as the compute dtype.

Weights keep the checkpoint layout ``[out, in]`` (PyTorch / Hugging Face), so loaders store what
they read without transposing.

Variables: an ECF8 weight is an :class:`Ecf8Weight`, a raw FP8 one an :class:`Fp8Weight`, their
scales :class:`Fp8Scale`, a raw BF16 one a :class:`Bf16Weight`; none of them is an ``nnx.Param``, so ``nnx.state(model, nnx.Param)``
selects only the float (trainable) parameters: biases, norms, float layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax import lax

from ecf8_jax.codec import (
    LAYER_GEMV_PLATFORMS,
    decode,
    decode_chunks,
    fp8_gemv,
    fused_gemv_ready,
    gemv,
    gemv_applies,
)
from ecf8_jax.format.constants import DTYPES, LANES
from ecf8_jax.format.tensor import Ecf8Tensor

Dtype = Any


class Ecf8Weight(nnx.Variable):
    """An ECF8-coded FP8 weight: the value is an :class:`~ecf8_jax.Ecf8Tensor` (a pytree)."""


class Fp8Weight(nnx.Variable):
    """A raw FP8 weight (``float8_e4m3fn`` / ``float8_e5m2`` array), not trainable."""


class Bf16Weight(nnx.Variable):
    """A raw 16-bit float weight (``bfloat16``, or ``float16``) of a frozen layer, not trainable."""


SIXTEEN_BIT_DTYPES = ("bfloat16", "float16")
"""Float dtypes the unscaled 16-bit layers hold (:class:`Bf16Linear`, :class:`Bf16Embed`)."""


def is_16bit(dtype) -> bool:
    """Whether ``dtype`` (a dtype or its name) is one of :data:`SIXTEEN_BIT_DTYPES`."""
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    return name in SIXTEEN_BIT_DTYPES


def value_dtype(name: str) -> np.dtype:
    """The numpy / ml_dtypes dtype of an :class:`~ecf8_jax.Ecf8Tensor`'s dtype name."""
    return DTYPES[name] if name in DTYPES else np.dtype(getattr(ml_dtypes, name, name))


def _check_scale(t: Ecf8Tensor, scale, what: str) -> None:
    """FP8 tensors need a scale, 16-bit ones have none."""
    if is_16bit(t.dtype) and scale is not None:
        raise ValueError(f"{what}: a {t.dtype} weight takes no scale (pass scale=None)")
    if not is_16bit(t.dtype) and scale is None:
        raise ValueError(f"{what}: an FP8 ({t.dtype}) weight needs its scale")


class Fp8Scale(nnx.Variable):
    """The float32 dequantization scale of an FP8 weight (see :func:`dequantize`)."""


def scale_kind(scale_shape: tuple[int, ...], weight_shape: tuple[int, int]) -> str:
    """``"tensor"``, ``"channel"`` or ``"block"``: how a scale of this shape applies.

    A scale of shape ``()`` or ``(1,)`` is per tensor; ``(out,)`` or ``(out, 1)`` per output
    channel (row of the ``[out, in]`` weight); any other 2-D shape is a grid of blocks.
    """
    out = weight_shape[0]
    if len(scale_shape) == 0 or scale_shape == (1,) or scale_shape == (1, 1):
        return "tensor"
    if scale_shape in ((out,), (out, 1)):
        return "channel"
    if len(scale_shape) == 2:
        return "block"
    raise ValueError(f"scale of shape {scale_shape} does not fit a weight of shape {weight_shape}")


def normalize_scale(
    scale, weight_shape: tuple[int, int], block_size: tuple[int, int]
) -> tuple[jax.Array, tuple[int, int] | None]:
    """The float32 scale in the shape :func:`dequantize` broadcasts, and its block shape.

    Returns:
      ``(scale, block)``: scale ``()``, ``[out, 1]`` or ``[ceil(out/bo), ceil(in/bi)]``;
      ``block`` is ``tuple(block_size)`` for a block scale and ``None`` otherwise.

    Raises:
      ValueError: a block scale whose grid is not ``ceil(weight_shape / block_size)``.
    """
    scale = jnp.asarray(scale, dtype=jnp.float32)  # jnp: also traceable (abstract init)
    kind = scale_kind(scale.shape, weight_shape)
    if kind == "tensor":
        return scale.reshape(()), None
    if kind == "channel":
        return scale.reshape(weight_shape[0], 1), None
    grid = tuple(-(-d // b) for d, b in zip(weight_shape, block_size))
    if scale.shape != grid:
        raise ValueError(
            f"block scale of shape {scale.shape} does not match weight {weight_shape} "
            f"in blocks of {block_size} (expected {grid})"
        )
    return scale, tuple(block_size)


def dequantize(
    w: jax.Array,
    scale: jax.Array,
    block_size: tuple[int, int] | None = None,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """``(w.astype(float32) * scale).astype(dtype)`` with ``scale`` expanded to ``w``'s shape.

    Args:
      w: FP8 ``[out, in]`` (or ``[vocab, dim]``).
      scale: float32 ``()``, ``[out, 1]``, or ``[ceil(out / bo), ceil(in / bi)]`` blocks.
      block_size: ``(bo, bi)`` for a block scale, ``None`` for the others.
      dtype: the result dtype.
    """
    scale = scale.astype(jnp.float32)
    if block_size is not None:
        bo, bi = block_size
        scale = jnp.repeat(jnp.repeat(scale, bo, axis=0), bi, axis=1)
        scale = scale[: w.shape[0], : w.shape[1]]
    return (w.astype(jnp.float32) * scale).astype(dtype)


def fp8_linear(
    x: jax.Array,
    w: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None = None,
    *,
    block_size: tuple[int, int] | None = None,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """``x @ dequantize(w, scale).T + bias``, float32 accumulation and result.

    Args:
      x: ``[..., in]`` activations.
      w: ``[out, in]`` weight, FP8 (with ``scale``) or float (``scale=None``).
      scale: see :func:`dequantize`; ``None`` for a float weight.
      bias: float ``[out]`` or ``None``.
      block_size: block shape of a block scale, ``None`` otherwise.
      dtype: compute dtype of the dequantized weight and of ``x``.

    Returns:
      float32 ``[..., out]``.
    """
    if scale is None:
        wd = w.astype(dtype)
    else:
        wd = dequantize(w, scale, block_size, dtype)
    y = lax.dot_general(
        x.astype(dtype),
        wd,
        (((x.ndim - 1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )  # [..., out]
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


class _ScaledLinear(nnx.Module):
    """Shared forward of every linear layer: ``fp8_linear(x, self.raw_weight(), scale, bias)``."""

    in_features: int
    out_features: int

    def raw_weight(self) -> jax.Array:
        """The ``[out, in]`` weight as an array (FP8 for quantized layers)."""
        raise NotImplementedError

    unscaled_gemv = False
    """Whether the row GEMV also applies without a scale (16-bit weights: a scale of one)."""

    def row_gemv(
        self, m: int, platform: str = "cuda"
    ) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
        """``(x [m, in], row_scale [out]) -> float32 [m, out]`` through the fused GEMV of
        ``platform`` ("cuda" or "tpu"), or None where it does not apply (see :meth:`__call__`)."""
        return None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``fp8_linear`` on every platform, except on CUDA for at most 8 activation rows.

        There, when the shapes admit it (``codec.gemv_applies``: ``in % 512 == 0``; per-tensor or
        per-row scale), the raw-FP8 layer runs the row GEMV kernel on its FP8 weight
        (``codec.fp8_gemv``) and the compressed layer decodes inside the same kernel
        (``codec.gemv``; weights ``compress_model`` wrote in chunks of whole rows) or decodes
        first and runs ``fp8_gemv``: both stay bit-identical. The choice follows the platform
        the program is lowered for (``lax.platform_dependent``); ``codec.LAYER_GEMV_PLATFORMS``
        says why TPU layers keep decode-then-dot although a TPU GEMV kernel exists.
        """
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None

        def dense(x):
            return fp8_linear(
                x, self.raw_weight(), scale, bias, block_size=self.block_size, dtype=self.dtype
            )

        m = int(np.prod(x.shape[:-1]))
        if self.block_size is not None or (scale is None and not self.unscaled_gemv):
            return dense(x)
        branches = {p: self.row_gemv(m, p) for p in LAYER_GEMV_PLATFORMS}
        if all(fn is None for fn in branches.values()):
            return dense(x)

        def fused(gemv_fn, x):
            one = jnp.ones((), jnp.float32) if scale is None else scale.astype(jnp.float32)
            row_scale = jnp.broadcast_to(one.reshape(-1), (self.out_features,))
            x2 = x.reshape(m, self.in_features).astype(self.dtype)
            y = gemv_fn(x2, row_scale).reshape(*x.shape[:-1], self.out_features)
            return y + bias.astype(jnp.float32) if bias is not None else y

        fused_branches = {
            p: functools.partial(fused, fn) for p, fn in branches.items() if fn is not None
        }
        return lax.platform_dependent(x, default=dense, **fused_branches)


def _bias_param(bias) -> nnx.Param | None:
    return None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))


class Linear(_ScaledLinear):
    """A float linear layer with the ``[out, in]`` layout and the numerics of :func:`fp8_linear`.

    Used for weights a checkpoint keeps in BF16/FP32 (often ``lm_head``) and for models built
    without quantization.
    """

    def __init__(self, weight, bias=None, *, dtype: Dtype = jnp.float32):
        weight = jnp.asarray(weight)
        self.out_features, self.in_features = weight.shape
        self.weight = nnx.Param(weight)
        self.scale = None
        self.bias = _bias_param(bias)
        self.block_size = None
        self.dtype = dtype

    @classmethod
    def init(cls, in_features: int, out_features: int, rngs: nnx.Rngs, *, bias=False, **kw):
        """Random ``N(0, 0.02)`` weights (and zero bias), as Hugging Face initialises them."""
        w = 0.02 * jax.random.normal(rngs.params(), (out_features, in_features), jnp.float32)
        return cls(w, jnp.zeros((out_features,)) if bias else None, **kw)

    def raw_weight(self) -> jax.Array:
        return self.weight[...]


class Fp8Linear(_ScaledLinear):
    """A linear layer with a raw FP8 ``[out, in]`` weight and its scale.

    Args:
      weight: FP8 ``[out, in]``.
      scale: float ``()`` (per tensor), ``[out]`` / ``[out, 1]`` (per output channel, the
        ``weight_scale`` of "FP8-dynamic" checkpoints) or ``[ceil(out/bo), ceil(in/bi)]``
        (per block, ``weight_scale_inv`` with ``weight_block_size = block_size``).
      bias: optional float ``[out]``.
      block_size: block shape for block scales.
      dtype: compute dtype (see the module docstring).
    """

    def __init__(
        self,
        weight,
        scale,
        bias=None,
        *,
        block_size: tuple[int, int] = (128, 128),
        dtype: Dtype = jnp.float32,
    ):
        weight = jnp.asarray(weight)
        if weight.ndim != 2 or jnp.dtype(weight.dtype).itemsize != 1:
            raise ValueError(f"Fp8Linear needs a 2-D FP8 weight, got {weight.dtype}{weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.weight = Fp8Weight(weight)
        scale, self.block_size = normalize_scale(scale, weight.shape, block_size)
        self.scale = Fp8Scale(jnp.asarray(scale))
        self.bias = _bias_param(bias)
        self.dtype = dtype

    @classmethod
    def from_float(cls, w, bias=None, *, granularity="row", **kw) -> Fp8Linear:
        """Quantizes a float ``[out, in]`` weight per row (or tensor) with ``quantize_fp8`` (lossy)."""
        from ecf8_jax.quantize import quantize_fp8

        q, s = quantize_fp8(np.asarray(w, np.float32), granularity=granularity)
        return cls(q, s, bias, **kw)

    def raw_weight(self) -> jax.Array:
        return self.weight[...]

    def row_gemv(self, m, platform="cuda"):
        if not gemv_applies((self.out_features, self.in_features), m):
            return None
        return lambda x, s: fp8_gemv(x, self.weight[...], s, platform=platform)


class Bf16Linear(_ScaledLinear):
    """A frozen linear layer with a raw BF16 (or FP16) ``[out, in]`` weight and no scale.

    The 16-bit counterpart of :class:`Fp8Linear`: the weight is a :class:`Bf16Weight`, not an
    ``nnx.Param``, so training filtered on ``nnx.Param`` leaves it alone, and
    :func:`~ecf8_jax.nn.compress_model` turns the layer into an :class:`Ecf8Linear` that
    decodes the same bits and runs the same dot (bit-identical outputs).

    Args:
      weight: ``bfloat16`` or ``float16`` ``[out, in]``.
      bias: optional float ``[out]`` (kept float32).
      dtype: compute dtype; default the weight's dtype (bf16 × bf16 → float32, see the module
        docstring).
    """

    def __init__(self, weight, bias=None, *, dtype: Dtype | None = None):
        weight = jnp.asarray(weight)
        if weight.ndim != 2 or not is_16bit(weight.dtype):
            raise ValueError(
                f"Bf16Linear needs a 2-D bfloat16/float16 weight, got {weight.dtype}{weight.shape}"
            )
        self.out_features, self.in_features = weight.shape
        self.weight = Bf16Weight(weight)
        self.scale = None
        self.bias = _bias_param(bias)
        self.block_size = None
        self.dtype = weight.dtype if dtype is None else dtype

    @classmethod
    def from_float(cls, w, bias=None, *, dtype: Dtype = jnp.bfloat16, **kw) -> Bf16Linear:
        """Rounds a float ``[out, in]`` weight to ``dtype`` (nearest even; a BF16 weight is kept
        bit for bit, an FP32 or FP16 one rounds: lossy)."""
        return cls(_to_16bit(w, dtype), bias, **kw)

    unscaled_gemv = True
    row_gemv = Fp8Linear.row_gemv  # the raw twin kernel on the stored weight, as for FP8

    def raw_weight(self) -> jax.Array:
        return self.weight[...]


def _to_16bit(w, dtype) -> jax.Array:
    """``w`` as ``dtype`` (round to nearest even); numpy arrays are converted on the host."""
    if isinstance(w, jax.Array):
        return w.astype(dtype)
    w = np.asarray(w)
    return jnp.asarray(w if w.dtype == jnp.dtype(dtype) else w.astype(jnp.dtype(dtype)))


class Ecf8Linear(_ScaledLinear):
    """:class:`Fp8Linear` (or :class:`Bf16Linear`) with the weight ECF8-coded; decoded in the
    forward pass.

    Args:
      weight: an :class:`~ecf8_jax.Ecf8Tensor` of an FP8, BF16 or FP16 ``[out, in]`` weight.
      scale: as for :class:`Fp8Linear`; ``None`` for a 16-bit weight (which has no scale).
      bias, block_size, dtype: as for :class:`Fp8Linear`; ``dtype=None`` is float32 for FP8
        and the weight's dtype for a 16-bit weight (as :class:`Bf16Linear`).
      implementation: decode backend passed to :func:`ecf8_jax.decode` (``None``: this
        platform's kernel, else the jnp reference).
    """

    def __init__(
        self,
        weight: Ecf8Tensor,
        scale=None,
        bias=None,
        *,
        block_size: tuple[int, int] = (128, 128),
        dtype: Dtype | None = None,
        implementation: str | None = None,
    ):
        if not isinstance(weight, Ecf8Tensor) or len(weight.shape) != 2:
            raise ValueError("Ecf8Linear needs a 2-D Ecf8Tensor")
        _check_scale(weight, scale, "Ecf8Linear")
        self.out_features, self.in_features = weight.shape
        self.weight = Ecf8Weight(jax.tree.map(jnp.asarray, weight))
        if scale is None:
            self.scale, self.block_size = None, None
        else:
            scale, self.block_size = normalize_scale(scale, weight.shape, block_size)
            self.scale = Fp8Scale(jnp.asarray(scale))
        self.bias = _bias_param(bias)
        if dtype is None:
            dtype = value_dtype(weight.dtype) if scale is None else jnp.float32
        self.dtype = dtype
        self.implementation = implementation

    def raw_weight(self) -> jax.Array:
        return decode(self.weight.get_value(), implementation=self.implementation)

    @property
    def unscaled_gemv(self) -> bool:
        return self.weight.get_value().dtype in ("bfloat16", "float16")

    def row_gemv(self, m, platform="cuda"):
        if not gemv_applies((self.out_features, self.in_features), m):
            return None
        t = self.weight.get_value()
        kernel = {"cuda": "pallas_gpu", "tpu": "pallas_tpu"}[platform]
        if self.implementation in (None, kernel) and fused_gemv_ready(t):
            return lambda x, s: gemv(x, t, s, platform=platform)
        # decoded first, then the same kernel
        return lambda x, s: fp8_gemv(x, self.raw_weight(), s, platform=platform)


EMBED_BLOCK_WEIGHTS = 1 << 20
"""Weights an embedding reads at once: rows per block of the tied head (``attend``), and the
decoded chunks per step of a compressed lookup. Bounds the temporaries of both."""


class _ScaledEmbed(nnx.Module):
    """Shared forward of the embeddings: gather FP8 rows, dequantize them; ``attend`` for tied heads.

    Subclasses say how to read the table: whole (:meth:`raw_table`), runs of rows
    (:meth:`row_reader`) or the rows of given ids (:meth:`lookup_rows`). The head
    (:meth:`attend`) runs over blocks of ``EMBED_BLOCK_WEIGHTS // dim`` rows in a loop, for the
    raw and the compressed tables alike, so neither holds a whole dequantized table and both
    compute every logit with the same dot.
    """

    def raw_table(self) -> jax.Array:
        raise NotImplementedError

    def row_reader(self) -> Callable[[jax.Array, int], jax.Array]:
        """``read(start, count)``: rows ``[start, start + count)`` of the table (``start``
        traced, ``count`` static). Made once outside a loop, called inside it.

        An FP8 table goes into the loop as its uint8 bit patterns: XLA:CPU widens an FP8 array
        that enters a loop to f16 first, a converted copy of the whole table.
        """
        table = self.raw_table()
        if jnp.dtype(table.dtype).itemsize != 1:
            return lambda start, count: lax.dynamic_slice_in_dim(table, start, count, axis=0)
        bits = lax.bitcast_convert_type(table, jnp.uint8)
        return lambda start, count: lax.bitcast_convert_type(
            lax.dynamic_slice_in_dim(bits, start, count, axis=0), table.dtype
        )

    def lookup_rows(self, ids: jax.Array) -> jax.Array:
        """``[N]`` valid token ids to their ``[N, dim]`` table rows (before scaling).

        An FP8 table is gathered as uint8 (XLA:CPU would widen the whole table to f16 first).
        """
        table = self.raw_table()
        if jnp.dtype(table.dtype).itemsize != 1:
            return jnp.take(table, ids, axis=0)
        rows = jnp.take(lax.bitcast_convert_type(table, jnp.uint8), ids, axis=0)
        return lax.bitcast_convert_type(rows, table.dtype)

    def lookup_dtype(self) -> Dtype:
        """The dtype of looked-up rows of an unscaled table: ``dtype`` for float tables,
        float32 for 16-bit frozen ones (:class:`Bf16Embed`; exact widening)."""
        return self.dtype

    def rows_per_block(self) -> int:
        """Rows of one :meth:`attend` block."""
        return max(1, min(self.num_embeddings, EMBED_BLOCK_WEIGHTS // self.features))

    def __call__(self, ids: jax.Array) -> jax.Array:
        """``[...]`` token ids to ``[..., dim]`` embeddings of ``dtype`` (float32 by default)."""
        rows = self.lookup_rows(ids.reshape(-1)).reshape(*ids.shape, self.features)
        if self.scale is None:
            return rows.astype(self.lookup_dtype())
        scale = self.scale[...]
        if scale.ndim:  # [vocab, 1], per row
            scale = jnp.take(scale, ids, axis=0)
        return (rows.astype(jnp.float32) * scale).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x @ table.T``: logits of a tied output head, float32 ``[..., vocab]``.

        Blocks of :meth:`rows_per_block` rows; the last block is the table's last rows (it
        overlaps the one before when the block size does not divide the vocabulary).
        """
        vocab, rows = self.num_embeddings, self.rows_per_block()
        scale = self.scale[...] if self.scale is not None else None
        read = self.row_reader()

        def block(b):
            start = jnp.minimum(b * rows, vocab - rows)
            s = scale
            if s is not None and s.ndim:
                s = lax.dynamic_slice_in_dim(s, start, rows, axis=0)
            return fp8_linear(x, read(start, rows), s, dtype=self.dtype)

        blocks = -(-vocab // rows)
        if blocks == 1:
            return block(0)
        ys = jnp.moveaxis(lax.map(block, jnp.arange(blocks)), 0, -2)  # [..., blocks, rows]
        head = ys[..., :-1, :].reshape(*x.shape[:-1], (blocks - 1) * rows)
        tail = ys[..., -1, rows * blocks - vocab :]
        return jnp.concatenate([head, tail], axis=-1)


class Embed(_ScaledEmbed):
    """A float embedding table ``[vocab, dim]`` (an ``nnx.Param``)."""

    def __init__(self, table, *, dtype: Dtype = jnp.float32):
        self.table = nnx.Param(jnp.asarray(table))
        self.num_embeddings, self.features = self.table.shape
        self.scale = None
        self.dtype = dtype

    @classmethod
    def init(cls, num_embeddings: int, features: int, rngs: nnx.Rngs, **kw) -> Embed:
        """Random ``N(0, 0.02)`` table."""
        return cls(0.02 * jax.random.normal(rngs.params(), (num_embeddings, features)), **kw)

    def raw_table(self) -> jax.Array:
        return self.table[...]


def _embed_scale(scale, shape) -> jax.Array:
    scale = jnp.asarray(scale, jnp.float32)
    if scale.size == 1:
        return jnp.asarray(scale.reshape(()))
    if scale.size != shape[0]:
        raise ValueError(f"embedding scale of shape {scale.shape} for a table of shape {shape}")
    return jnp.asarray(scale.reshape(shape[0], 1))


class Fp8Embed(_ScaledEmbed):
    """An FP8 embedding table ``[vocab, dim]`` with a per-row (``[vocab, 1]``) or per-tensor scale."""

    def __init__(self, table, scale, *, dtype: Dtype = jnp.float32):
        table = jnp.asarray(table)
        self.num_embeddings, self.features = table.shape
        self.table = Fp8Weight(table)
        self.scale = Fp8Scale(_embed_scale(scale, table.shape))
        self.dtype = dtype

    @classmethod
    def from_float(cls, table, **kw) -> Fp8Embed:
        """Quantizes a float table per row with ``quantize_fp8`` (lossy)."""
        from ecf8_jax.quantize import quantize_fp8

        q, s = quantize_fp8(np.asarray(table, np.float32), granularity="row")
        return cls(q, s, **kw)

    def raw_table(self) -> jax.Array:
        return self.table[...]


class Bf16Embed(_ScaledEmbed):
    """A frozen BF16 (or FP16) embedding table ``[vocab, dim]`` without scale.

    Lookups return the rows widened to float32 (exact); the tied head (:meth:`attend`) runs
    ``dot(x.astype(dtype), rows.T, preferred_element_type=float32)`` with ``dtype`` the table's
    dtype by default (see the module docstring).
    """

    def __init__(self, table, *, dtype: Dtype | None = None):
        table = jnp.asarray(table)
        if table.ndim != 2 or not is_16bit(table.dtype):
            raise ValueError(
                f"Bf16Embed needs a 2-D bfloat16/float16 table, got {table.dtype}{table.shape}"
            )
        self.num_embeddings, self.features = table.shape
        self.table = Bf16Weight(table)
        self.scale = None
        self.dtype = table.dtype if dtype is None else dtype

    @classmethod
    def from_float(cls, table, *, dtype: Dtype = jnp.bfloat16, **kw) -> Bf16Embed:
        """Rounds a float table to ``dtype`` (BF16 kept bit for bit; FP32 / FP16 round: lossy)."""
        return cls(_to_16bit(table, dtype), **kw)

    def lookup_dtype(self) -> Dtype:
        return jnp.float32

    def raw_table(self) -> jax.Array:
        return self.table[...]


class Ecf8Embed(_ScaledEmbed):
    """:class:`Fp8Embed` (or :class:`Bf16Embed`) with the table ECF8-coded; only the chunks a
    forward pass needs decode.

    A lookup of ``N`` ids decodes the (at most ``ceil(dim / chunk) + 1``) chunks that hold each
    requested row when that is fewer than the table's chunks (short prompts, generation steps),
    else the whole table block by block, picking the requested rows out of each block; the tied
    head decodes block by block. Either way at most ``EMBED_BLOCK_WEIGHTS`` (plus a chunk) of
    the table is decoded at a time. Rows are bit-identical to :class:`Fp8Embed`'s. Ids must be
    valid (``0 <= id < vocab``); an invalid id reads some row, never out of bounds.
    """

    def __init__(
        self,
        table: Ecf8Tensor,
        scale=None,
        *,
        dtype: Dtype | None = None,
        implementation: str | None = None,
    ):
        if not isinstance(table, Ecf8Tensor) or len(table.shape) != 2:
            raise ValueError("Ecf8Embed needs a 2-D Ecf8Tensor")
        _check_scale(table, scale, "Ecf8Embed")
        self.num_embeddings, self.features = table.shape
        self.table = Ecf8Weight(jax.tree.map(jnp.asarray, table))
        self.scale = None if scale is None else Fp8Scale(_embed_scale(scale, table.shape))
        if dtype is None:
            dtype = value_dtype(table.dtype) if scale is None else jnp.float32
        self.dtype = dtype
        self.implementation = implementation

    def lookup_dtype(self) -> Dtype:
        return jnp.float32  # only unscaled (16-bit) tables get here, as for Bf16Embed

    def raw_table(self) -> jax.Array:
        return decode(self.table.get_value(), implementation=self.implementation)

    def _chunks(self, first_row: jax.Array, rows: int) -> tuple[jax.Array, int]:
        """Chunk ids ``[..., n]`` covering ``rows`` rows from ``first_row`` (``[...]``), and ``n``."""
        t = self.table.get_value()
        dim, chunk = self.features, t.chunk_steps * LANES
        n = min(int(t.signs.shape[0]), -(-rows * dim // chunk) + 1)
        c0 = jnp.minimum(first_row * dim // chunk, t.signs.shape[0] - n)
        return c0[..., None] + jnp.arange(n), n

    def _decode_rows(self, first_row: jax.Array, rows: int) -> jax.Array:
        """Bit patterns ``[..., rows, dim]`` (uint8 for FP8, uint16 for 16-bit tables):
        ``rows`` rows from each ``first_row`` (``[...]``)."""
        t = self.table.get_value()
        dim, chunk = self.features, t.chunk_steps * LANES
        ids, n = self._chunks(first_row, rows)
        slots = decode_chunks(t, ids, implementation=self.implementation)
        slots = slots.reshape(*first_row.shape, n * chunk)
        start = first_row * dim - ids[..., 0] * chunk
        index = start[..., None] + jnp.arange(rows * dim)
        return jnp.take_along_axis(slots, index, axis=-1).reshape(*first_row.shape, rows, dim)

    def _as_values(self, slots: jax.Array) -> jax.Array:
        return lax.bitcast_convert_type(slots, value_dtype(self.table.get_value().dtype))

    def _bits_dtype(self):
        return jnp.uint16 if is_16bit(self.table.get_value().dtype) else jnp.uint8

    def row_reader(self) -> Callable[[jax.Array, int], jax.Array]:
        if self.table.get_value().layout != "flat":
            return super().row_reader()
        return lambda start, count: self._as_values(
            self._decode_rows(jnp.asarray(start, jnp.int32), count)
        )

    def lookup_rows(self, ids: jax.Array) -> jax.Array:
        t = self.table.get_value()
        if t.layout != "flat":
            return super().lookup_rows(ids)
        ids = jnp.asarray(ids, jnp.int32)
        num, chunk = ids.shape[0], t.chunk_steps * LANES
        _, per_row = self._chunks(jnp.zeros((), jnp.int32), 1)
        if num * per_row < t.signs.shape[0]:  # the chunks holding the asked rows
            group = max(1, EMBED_BLOCK_WEIGHTS // (per_row * chunk))
            group = min(group, num)
            padded = jnp.pad(ids, (0, -num % group)).reshape(-1, group)
            rows = lax.map(lambda g: self._decode_rows(g, 1)[:, 0], padded)
            return self._as_values(rows.reshape(-1, self.features)[:num])
        vocab, block = self.num_embeddings, self.rows_per_block()

        def pick(out, b):  # every block of the table once; keep the asked rows in it
            start = jnp.minimum(b * block, vocab - block)
            rows = self._decode_rows(start, block)
            local = ids - start
            inside = (local >= 0) & (local < block)
            picked = jnp.take(rows, jnp.clip(local, 0, block - 1), axis=0)
            return jnp.where(inside[:, None], picked, out), None

        init = jnp.zeros((num, self.features), self._bits_dtype())
        rows, _ = lax.scan(pick, init, jnp.arange(-(-vocab // block)))
        return self._as_values(rows)
