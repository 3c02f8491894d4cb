"""Trainable adapters over a frozen compressed base: LoRA and a sparse delta.

The base layer keeps its FP8 / BF16 / ECF8 weight (an :class:`Ecf8Weight`, :class:`Fp8Weight` or
:class:`Bf16Weight`, never an ``nnx.Param``), so an optimizer or a zeroth-order perturbation filtered on ``nnx.Param``
touches only the adapter (and the model's other float parameters, e.g. norms; filter on
:class:`AdapterParam` for the adapters alone). The compressed base stays bit-identical through
training and is never re-encoded. :func:`merge_adapters` folds trained adapters into new FP8
weights (requantized per row, lossy; a BF16 base: the sum rounded to bf16, lossy) and
re-encodes them.

Numerics: the base contributes exactly what the base layer computes (``fp8_linear``); the
adapters add, in float32,

* LoRA: ``(x @ a) @ b * (alpha / rank)``, ``a`` [in, rank] random, ``b`` [rank, out] zero, so
  an untrained adapter leaves the output unchanged (bit for bit);
* sparse delta: ``x @ D.T`` with ``D`` [out, in] zero except ``values`` at the fixed
  ``(rows, cols)`` (e.g. a Meerkat mask chosen on calibration data).

Whole models: :func:`add_lora` and :func:`add_sparse_delta` wrap the linear layers a ``where``
predicate selects, with the dotted paths of :func:`~ecf8_jax.nn.compress_model`
(``"layers.0.self_attn.q_proj"``, also inside a :class:`~ecf8_jax.nn.Stacked`). In a stack the
layers are unstacked, wrapped one by one and stacked again, so the adapters' variables get the
stack's leading ``[num_layers]`` axis (LoRA ``a`` [L, in, r], ``b`` [L, r, out]; a delta's
``rows``, ``cols``, ``values`` [L, nnz], padded to the largest count with inert entries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecf8_jax import format as ecf8_format
from ecf8_jax.nn.convert import Rewrite, Where
from ecf8_jax.nn.layers import Bf16Linear, Ecf8Linear, Fp8Linear, dequantize, fp8_linear, is_16bit
from ecf8_jax.quantize import quantize_fp8

MaskFn = Callable[[str, nnx.Module], np.ndarray]


class AdapterParam(nnx.Param):
    """A trainable adapter parameter; a subclass of ``nnx.Param``.

    ``nnx.state(model, AdapterParam)`` selects the adapters alone, ``nnx.Param`` the adapters
    together with the model's other float parameters (norms, biases).
    """


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
        self.a = AdapterParam(init.astype(jnp.float32))
        self.b = AdapterParam(jnp.zeros((rank, base.out_features), jnp.float32))

    def delta(self) -> jax.Array:
        """The dense float32 ``[out, in]`` weight update ``(a @ b).T * scaling``."""
        return (self.a[...] @ self.b[...]).T * self.scaling

    def __call__(self, x: jax.Array) -> jax.Array:
        low = jnp.dot(x.astype(jnp.float32), self.a[...]) @ self.b[...]
        return self.base(x) + low * self.scaling


class SparseDelta(nnx.Module):
    """``base(x) + x @ D.T`` with ``D`` zero except trainable values at fixed positions.

    Args:
      base: a frozen linear layer (:class:`Ecf8Linear` or :class:`Fp8Linear`).
      mask: bool ``[out, in]`` (numpy): where the delta may be non-zero; static.
      size: store this many entries (at least ``mask.sum()``; default exactly that many). The
        extra entries are inert: their row index is ``out`` (out of range), so they add nothing
        to the delta whatever their value. Layers with different mask counts are padded to one
        size to be stacked (see :meth:`pad`).
    """

    def __init__(self, base, mask: np.ndarray, *, size: int | None = None):
        mask = np.asarray(mask, bool)
        if mask.shape != (base.out_features, base.in_features):
            raise ValueError(
                f"mask shape {mask.shape} != weight shape {(base.out_features, base.in_features)}"
            )
        self.base = base
        rows, cols = np.nonzero(mask)
        self.rows = nnx.Variable(jnp.asarray(rows, jnp.int32))  # not trained: not a Param
        self.cols = nnx.Variable(jnp.asarray(cols, jnp.int32))
        self.values = AdapterParam(jnp.zeros(rows.size, jnp.float32))
        if size is not None:
            self.pad(size)

    @property
    def size(self) -> int:
        """Number of stored entries (masked positions plus inert padding)."""
        return int(self.values.shape[0])

    def pad(self, size: int) -> None:
        """Appends inert entries (value 0, row index ``out``) up to ``size`` entries."""
        extra = size - self.size
        if extra < 0:
            raise ValueError(f"cannot pad a delta of {self.size} entries down to {size}")
        if extra == 0:
            return
        out = self.base.out_features

        def grow(x, fill):
            return jnp.concatenate([x, jnp.full((extra,), fill, x.dtype)])

        self.rows = nnx.Variable(grow(self.rows[...], out))
        self.cols = nnx.Variable(grow(self.cols[...], 0))
        self.values = AdapterParam(grow(self.values[...], 0))

    def mask(self) -> np.ndarray:
        """The bool ``[out, in]`` mask of the (non-inert) trainable positions."""
        m = np.zeros((self.base.out_features, self.base.in_features), bool)
        rows, cols = np.asarray(self.rows[...]), np.asarray(self.cols[...])
        live = rows < m.shape[0]
        m[rows[live], cols[live]] = True
        return m

    def delta(self) -> jax.Array:
        """The dense float32 ``[out, in]`` delta (inert entries dropped)."""
        shape = (self.base.out_features, self.base.in_features)
        return (
            jnp.zeros(shape, jnp.float32)
            .at[self.rows[...], self.cols[...]]
            .add(self.values[...], mode="drop")
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + fp8_linear(x.astype(jnp.float32), self.delta(), None)


ADAPTERS = (LoRA, SparseDelta)


def _merged(layer: LoRA | SparseDelta, encode: bool):
    base = layer.base
    scale = base.scale[...] if base.scale is not None else None
    w = base.raw_weight()
    dense = w.astype(jnp.float32) if scale is None else dequantize(w, scale, base.block_size)
    merged = np.asarray(dense + layer.delta())
    bias = None if base.bias is None else base.bias[...]
    impl = getattr(base, "implementation", None)
    if scale is None and is_16bit(w.dtype):  # a BF16 base: round the sum to its dtype
        q = merged.astype(np.dtype(w.dtype))
        if encode:
            return Ecf8Linear(ecf8_format.encode(q), None, bias, dtype=base.dtype,
                              implementation=impl)  # fmt: skip
        return Bf16Linear(q, bias, dtype=base.dtype)
    fp8 = w.dtype if scale is not None else jnp.float8_e4m3fn
    q, row_scale = quantize_fp8(merged, granularity="row", dtype=fp8)
    if encode:
        return Ecf8Linear(
            ecf8_format.encode(q), row_scale, bias, dtype=base.dtype, implementation=impl
        )
    return Fp8Linear(q, row_scale, bias, dtype=base.dtype)


def merge_delta(layer: SparseDelta, *, encode: bool = True):
    """Folds a trained delta into a new FP8 layer (requantized per row: lossy), ECF8-coded.

    Args:
      layer: the adapter; its base is left untouched.
      encode: return an :class:`Ecf8Linear` (default) or a raw :class:`Fp8Linear`.

    Returns:
      A new linear layer with weight ``dequantize(base) + delta``, per-row FP8 scales, the base's
      FP8 dtype, bias and compute dtype; for a BF16 (or FP16) base, ``base + delta`` rounded to
      the base's dtype, no scale.
    """
    return _merged(layer, encode)


def merge_lora(layer: LoRA, *, encode: bool = True):
    """Folds a LoRA adapter into a new FP8 layer: ``dequantize(base) + (a @ b).T * scaling``,
    requantized per row (lossy: the low-rank update is rounded to the FP8 grid of each row).

    Args and returns: as :func:`merge_delta`.
    """
    return _merged(layer, encode)


# ----------------------------------------------------------------------------- whole models


def _is_linear(m) -> bool:
    return isinstance(m, Fp8Linear | Ecf8Linear | Bf16Linear)


def _pad_deltas(layers: list[nnx.Module]) -> None:
    """Pads the deltas at each path of a stack's layers to one size, so they stack."""
    groups: dict[tuple, list[SparseDelta]] = {}
    for layer in layers:
        for path, m in nnx.iter_modules(layer):
            if isinstance(m, SparseDelta):
                groups.setdefault(tuple(path), []).append(m)
    for deltas in groups.values():
        size = max(d.size for d in deltas)
        for d in deltas:
            d.pad(size)


def _candidates(model: nnx.Module) -> list[str]:
    paths: list[str] = []
    Rewrite(lambda p, m: _is_linear(m), lambda p, m: paths.append(p), "", skip=ADAPTERS).run(model)
    return paths


def _adapt(model, where: Where | None, make, what: str) -> nnx.Module:
    def select(path, m):
        return _is_linear(m) and (where is None or bool(where(path, m)))

    walk = Rewrite(select, make, what, skip=ADAPTERS, before_restack=_pad_deltas)
    walk.run(model)
    if walk.count == 0:
        seen = _candidates(model)
        shown = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
        raise ValueError(
            f"{what}: `where` selected no FP8/BF16/ECF8 linear layer (not already adapted); "
            f"the {len(seen)} candidates are: {shown or 'none'}"
        )
    return model


def add_lora(
    model: nnx.Module,
    *,
    where: Where | None = None,
    rank: int,
    alpha: float = 1.0,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Wraps the model's selected FP8/BF16/ECF8 linear layers in :class:`LoRA` adapters, in place.

    Args:
      model: any NNX module; modified in place.
      where: ``where(path, layer) -> bool`` on the dotted path of each :class:`Fp8Linear` /
        :class:`Ecf8Linear` (``"layers.0.self_attn.q_proj"``, also inside a stack, where it must
        choose alike in every layer), e.g. ``lambda p, m: p.endswith(("q_proj", "v_proj"))``;
        default: every such layer. Layers already inside an adapter are not candidates.
      rank, alpha: see :class:`LoRA`.
      rngs: initialises each adapter's ``a`` (one draw per layer, stacked layers included).

    Returns:
      ``model`` (for chaining).

    Raises:
      ValueError: ``where`` selected nothing (the message lists the candidate paths), or it
        selected differently in the layers of a stack (that stack is left as it was, layers
        outside it may already be wrapped).
    """
    return _adapt(model, where, lambda p, m: LoRA(m, rank, alpha=alpha, rngs=rngs), "add_lora")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    flat = scores.ravel()
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True  # ties to the lower flat index
    return keep.reshape(scores.shape)


def add_sparse_delta(
    model: nnx.Module,
    mask: float | Mapping[str, np.ndarray] | MaskFn,
    *,
    where: Where | None = None,
    by: str = "magnitude",
    seed: int = 0,
) -> nnx.Module:
    """Wraps the model's selected FP8/BF16/ECF8 linear layers in :class:`SparseDelta` adapters.

    Args:
      model: any NNX module; modified in place.
      mask: which weights of each selected layer are trainable, one of

        * a density in ``(0, 1]``: each layer keeps ``max(1, round(density * out * in))``
          entries, chosen per layer by ``by``;
        * a mapping ``path -> bool [out, in]`` (e.g. ``training.magnitude_mask`` or
          ``training.gradient_mask`` applied to :func:`linear_weights`); ``where`` then defaults
          to the mapping's keys;
        * a function ``(path, layer) -> bool [out, in]``.

        In a stack, layers whose masks have different counts are padded to the largest with
        inert entries (see :class:`SparseDelta`).
      where: selects layers as in :func:`add_lora` (default: every FP8/BF16/ECF8 linear layer, or the
        keys of a mapping ``mask``).
      by: for a density: ``"magnitude"`` (largest ``|w|`` of the dequantized weight, ties to the
        lower flat index) or ``"random"`` (uniform, from ``seed``).
      seed: seeds the random choice (layers are drawn in the model's traversal order).

    Returns:
      ``model`` (for chaining).

    Raises:
      ValueError: ``where`` selected nothing, a mask of the wrong shape, a density outside
        ``(0, 1]`` or an unknown ``by``.
      KeyError: a selected layer whose path a mapping ``mask`` lacks.
    """
    if isinstance(mask, Mapping):
        masks = mask
        if where is None:
            where = lambda p, m: p in masks  # noqa: E731
        choose = lambda p, m: masks[p]  # noqa: E731
    elif callable(mask):
        choose = mask
    else:
        density = float(mask)
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if by not in ("magnitude", "random"):
            raise ValueError(f"by must be 'magnitude' or 'random', got {by!r}")
        rng = np.random.default_rng(seed)

        def choose(p, m):
            size = m.out_features * m.in_features
            k = max(1, min(size, round(density * size)))
            if by == "random":
                return _top_k(rng.random((m.out_features, m.in_features)), k)
            return _top_k(np.abs(_dequantized(m)), k)

    def make(p, m):
        if isinstance(mask, Mapping) and p not in mask:
            raise KeyError(f"add_sparse_delta: no mask for the selected layer {p!r}")
        return SparseDelta(m, np.asarray(choose(p, m)))

    return _adapt(model, where, make, "add_sparse_delta")


def _dequantized(layer) -> np.ndarray:
    scale = layer.scale[...] if layer.scale is not None else None
    w = layer.raw_weight()
    if scale is None:
        return np.asarray(w, np.float32)
    return np.asarray(dequantize(w, scale, layer.block_size))


def linear_weights(model: nnx.Module, where: Where | None = None) -> dict[str, np.ndarray]:
    """The dequantized float32 ``[out, in]`` weights of the selected FP8/BF16/ECF8 linear layers.

    A dict keyed by the paths :func:`add_sparse_delta` uses, to score masks on, e.g.
    ``add_sparse_delta(model, training.magnitude_mask(linear_weights(model, where), 1e-3))``
    (one ranking over all layers). Decodes every selected weight: mind the memory.
    """
    out: dict[str, np.ndarray] = {}

    def select(p, m):
        return _is_linear(m) and (where is None or bool(where(p, m)))

    Rewrite(select, lambda p, m: out.__setitem__(p, _dequantized(m)), "", skip=ADAPTERS).run(model)
    return out


def merge_adapters(
    model: nnx.Module, *, where: Where | None = None, encode: bool = True
) -> nnx.Module:
    """Replaces every :class:`LoRA` / :class:`SparseDelta` by its merged FP8 layer, in place.

    Each merged weight is ``dequantize(base) + delta`` requantized per row (lossy, see
    :func:`merge_lora`, :func:`merge_delta`) and, with ``encode``, ECF8-coded. Adapters inside a
    stack are merged layer by layer and the stack rebuilt (streams zero-padded to the longest).

    Args:
      model: modified in place.
      where: ``where(path, adapter) -> bool`` to merge only some adapters; default all.
      encode: merged layers are :class:`Ecf8Linear` (default) or raw :class:`Fp8Linear`.

    Returns:
      ``model`` (for chaining); a model without adapters is returned unchanged.
    """

    def select(p, m):
        return isinstance(m, ADAPTERS) and (where is None or bool(where(p, m)))

    Rewrite(select, lambda p, m: _merged(m, encode), "merge_adapters", skip=ADAPTERS).run(model)
    return model
