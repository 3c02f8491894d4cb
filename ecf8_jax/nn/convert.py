"""Converting an NNX model's raw FP8 / BF16 layers to ECF8 in place (like ``qwix.quantize_model``)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecf8_jax.codec import pad_stream
from ecf8_jax.format import Ecf8Tensor, encode, grouped
from ecf8_jax.format.abstract import abstract_encoding
from ecf8_jax.nn.layers import (
    Bf16Embed,
    Bf16Linear,
    Ecf8Embed,
    Ecf8Linear,
    Fp8Embed,
    Fp8Linear,
)
from ecf8_jax.nn.stack import Stacked

Where = Callable[[str, nnx.Module], bool]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _set(node, key, value) -> None:
    if isinstance(key, int):
        node[key] = value
    else:
        setattr(node, key, value)


EMBED_CHUNK_STEPS = 1024
"""Chunk steps of compressed embedding tables when none is asked for: a row lookup decodes the
whole chunks holding the row, so half the format-2 default (2048) halves the bytes a prompt's
lookup decodes, for ~0.02 bits/weight more on the table."""


def _encode(w, chunk_steps: int | None, pad: bool, rows: bool = False):
    balance = True
    if rows and chunk_steps is None:  # whole rows per chunk: the fused GEMV can take it
        fit = grouped.row_chunk_steps(
            w.shape[1], min(grouped.DEFAULT_CHUNK_STEPS, -(-w.size // 128)), rows=w.shape[0]
        )
        if fit is not None:
            chunk_steps, balance = fit, False
    if isinstance(w, jax.core.Tracer):  # under nnx.eval_shape: shapes at a fixed stream capacity
        dtype = jnp.dtype(w.dtype).name
        return abstract_encoding(
            w.shape, dtype, chunk_steps=chunk_steps, balance=balance, zeros=jnp.zeros
        )
    t = encode(np.asarray(w), chunk_steps=chunk_steps, balance=balance)
    return pad_stream(t) if pad else t


RAW_LAYERS = (Fp8Linear, Fp8Embed, Bf16Linear, Bf16Embed)
"""The frozen uncompressed layers :func:`compress_model` converts."""


def compress_layer(
    layer: Fp8Linear | Fp8Embed | Bf16Linear | Bf16Embed,
    *,
    chunk_steps: int | None = None,
    pad: bool = False,
    implementation: str | None = None,
) -> Ecf8Linear | Ecf8Embed:
    """The ECF8 twin of one raw FP8 or BF16 layer (same scale, bias, block size, compute dtype).

    Args:
      layer: an :class:`Fp8Linear`, :class:`Fp8Embed`, :class:`Bf16Linear` or
        :class:`Bf16Embed` (an FP16 weight in the latter two as well).
      chunk_steps: encoder option (default: the format's default; ``EMBED_CHUNK_STEPS`` for
        embedding tables).
      pad: zero-pad each stream with :func:`ecf8_jax.pad_stream` (fewer distinct shapes, so
        fewer compilations across models; costs memory).
      implementation: decode backend stored on the new layer.
    """
    if isinstance(layer, Fp8Linear):
        bias = layer.bias[...] if layer.bias is not None else None
        return Ecf8Linear(
            _encode(layer.weight[...], chunk_steps, pad, rows=True),
            layer.scale[...],
            bias,
            block_size=layer.block_size or (128, 128),
            dtype=layer.dtype,
            implementation=implementation,
        )
    if isinstance(layer, Fp8Embed):
        return Ecf8Embed(
            _encode(layer.table[...], chunk_steps or EMBED_CHUNK_STEPS, pad),
            layer.scale[...],
            dtype=layer.dtype,
            implementation=implementation,
        )
    if isinstance(layer, Bf16Linear):  # no scale; the fused GEMV is FP8-only: any chunking
        bias = layer.bias[...] if layer.bias is not None else None
        return Ecf8Linear(
            _encode(layer.weight[...], chunk_steps, pad),
            None,
            bias,
            dtype=layer.dtype,
            implementation=implementation,
        )
    if isinstance(layer, Bf16Embed):
        return Ecf8Embed(
            _encode(layer.table[...], chunk_steps or EMBED_CHUNK_STEPS, pad),
            None,
            dtype=layer.dtype,
            implementation=implementation,
        )
    raise TypeError(
        "compress_layer converts Fp8Linear / Fp8Embed / Bf16Linear / Bf16Embed, "
        f"not {type(layer).__name__}"
    )


class Rewrite:
    """Walks a model, replacing each module ``select(path, m)`` picks by ``make(path, m)``.

    The one model walker behind :func:`compress_model` and the adapters. Paths are dotted
    attribute paths (``"layers.0.self_attn.q_proj"``, also inside a :class:`Stacked`). ``make``
    may return None (nothing replaced: a read-only visit). Modules of the ``skip`` types are not
    entered. A :class:`Stacked` is unstacked, rewritten layer by layer and stacked again when
    anything in it changed (``before_restack(layers)`` runs first). A module shared by several
    parents (a tied embedding) is replaced once and stays shared.

    Args:
      select: ``(path, module) -> bool``.
      make: ``(path, module) -> module | None``.
      what: the caller's name, for error messages.
      skip: module types whose children are not visited.
      before_restack: called with a stack's rewritten layers before they are stacked again.

    Attributes:
      count: how many modules ``select`` picked.
    """

    def __init__(
        self,
        select: Callable[[str, nnx.Module], bool],
        make: Callable[[str, nnx.Module], nnx.Module | None],
        what: str,
        *,
        skip: tuple[type, ...] = (),
        before_restack: Callable[[list[nnx.Module]], None] | None = None,
    ):
        self.select, self.make, self.what = select, make, what
        self.skip, self.before_restack = skip, before_restack
        self.count = 0
        # Keyed by id; the values keep the keyed modules alive (unstacked copies are temporary,
        # and a freed module's id may be reused).
        self.done: dict[int, tuple[nnx.Module, nnx.Module]] = {}
        self.seen: dict[int, nnx.Module] = {}

    def run(self, model: nnx.Module) -> bool:
        """Rewrites ``model`` in place (a :class:`Stacked` itself included); True if changed."""
        if isinstance(model, Stacked):
            return self.restack(model, "")
        return self.visit(model)

    def visit(self, node, prefix: str = "") -> bool:
        """Rewrites below ``node`` (whose path is ``prefix``); True if anything changed."""
        changed = False
        for key, child in list(nnx.iter_children(node)):
            if not isinstance(child, nnx.Module):  # a Variable
                continue
            path = _join(prefix, str(key))
            if id(child) in self.done:
                _set(node, key, self.done[id(child)][1])
                changed = True
            elif isinstance(child, Stacked):
                changed |= self.restack(child, path)
            elif self.select(path, child):
                self.count += 1
                new = self.make(path, child)
                if new is not None:
                    self.done[id(child)] = (child, new)
                    _set(node, key, new)
                    changed = True
            elif not isinstance(child, self.skip) and id(child) not in self.seen:
                self.seen[id(child)] = child
                changed |= self.visit(child, path)
        return changed

    def restack(self, stacked: Stacked, prefix: str) -> bool:
        """Rewrites the layers of ``stacked`` one by one and stacks them again if changed."""
        layers = stacked.unstack()
        changed = False
        for i, layer in enumerate(layers):
            at = _join(prefix, str(i))
            if self.select(at, layer):  # a stack of bare linear layers
                self.count += 1
                new = self.make(at, layer)
                if new is not None:
                    layers[i], changed = new, True
            else:
                changed |= self.visit(layer, at)
        if not changed:
            return False
        if self.before_restack is not None:
            self.before_restack(layers)
        try:
            restacked = Stacked(layers)
        except ValueError as e:
            raise ValueError(
                f"{self.what}: the layers of the stack {prefix!r} differ afterwards "
                "(`where` must select the same layers in each of them)"
            ) from e
        stacked.layer, stacked.fp8_leaves = restacked.layer, restacked.fp8_leaves
        return True


def compress_model(
    model: nnx.Module,
    where: Where | None = None,
    *,
    chunk_steps: int | None = None,
    pad: bool = False,
    implementation: str | None = None,
) -> nnx.Module:
    """Replaces the model's :class:`Fp8Linear` / :class:`Fp8Embed` / :class:`Bf16Linear` /
    :class:`Bf16Embed` layers by their ECF8 twins.

    The conversion is lossless: the compressed model decodes bit-identical FP8 (or BF16)
    weights and runs the same matmul code, so its outputs are bit-identical to the raw model's.
    Float layers (:class:`Linear`, :class:`Embed`, whose weights are trainable ``nnx.Param``s)
    are left alone, whatever their dtype. A layer shared
    by several paths (a tied embedding) is encoded once and stays shared. The layers of a
    :class:`~ecf8_jax.nn.Stacked` are converted one by one and stacked again (their streams
    zero-padded to the longest, see :func:`ecf8_jax.stack`).

    Args:
      model: any NNX module; modified in place.
      where: ``where(path, layer) -> bool`` selecting which raw layers to convert, ``path`` being
        the dotted attribute path (``"layers.0.attn.q_proj"``, also inside a stack); default: all
        of them. In a stack it must choose alike in every layer.
      chunk_steps, pad, implementation: see :func:`compress_layer`.

    Returns:
      ``model`` (for chaining).

    Under ``nnx.eval_shape`` nothing is encoded: each layer gets the arrays of an encoding whose
    stream holds ``format.abstract.CODE_BITS_CAPACITY`` code bits per weight (for compiling a
    compressed model ahead of time; real streams are padded to that capacity with
    ``pad_stream``).
    """

    def select(path, m):
        return isinstance(m, RAW_LAYERS) and (where is None or bool(where(path, m)))

    def make(path, m):
        return compress_layer(m, chunk_steps=chunk_steps, pad=pad, implementation=implementation)

    Rewrite(select, make, "compress_model").run(model)
    return model


def pad_streams_like(tree, like):
    """Pads every ``Ecf8Tensor`` of ``tree`` to the stream length of its twin in ``like``.

    ``like`` is the state of a compressed model built under ``nnx.eval_shape`` (streams at a
    fixed capacity, see :func:`compress_model`); the result fits a program compiled ahead of
    time for it, and decodes exactly as ``tree`` does.

    Raises:
      FormatError: a stream is longer than its capacity.
    """

    def is_tensor(x):
        return isinstance(x, Ecf8Tensor)

    def fit(t, a):
        return pad_stream(t, int(a.stream.shape[-1])) if is_tensor(t) else t

    return jax.tree.map(fit, tree, like, is_leaf=is_tensor)
