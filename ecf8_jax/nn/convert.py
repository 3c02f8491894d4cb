"""Converting an NNX model's raw-FP8 layers to ECF8 in place (like ``qwix.quantize_model``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from flax import nnx

from ecf8_jax.codec import pad_stream
from ecf8_jax.format import encode
from ecf8_jax.nn.layers import Ecf8Embed, Ecf8Linear, Fp8Embed, Fp8Linear
from ecf8_jax.nn.stack import Stacked

Where = Callable[[str, nnx.Module], bool]


def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _set(node, key, value) -> None:
    if isinstance(key, int):
        node[key] = value
    else:
        setattr(node, key, value)


def _encode(w, chunk_steps: int | None, pad: bool):
    t = encode(np.asarray(w), chunk_steps=chunk_steps)
    return pad_stream(t) if pad else t


def compress_layer(
    layer: Fp8Linear | Fp8Embed,
    *,
    chunk_steps: int | None = None,
    pad: bool = False,
    implementation: str | None = None,
) -> Ecf8Linear | Ecf8Embed:
    """The ECF8 twin of one raw-FP8 layer (same scale, bias, block size and compute dtype).

    Args:
      layer: an :class:`Fp8Linear` or :class:`Fp8Embed`.
      chunk_steps: encoder option (default: the format's default).
      pad: zero-pad each stream with :func:`ecf8_jax.pad_stream` (fewer distinct shapes, so
        fewer compilations across models; costs memory).
      implementation: decode backend stored on the new layer.
    """
    if isinstance(layer, Fp8Linear):
        bias = layer.bias[...] if layer.bias is not None else None
        return Ecf8Linear(
            _encode(layer.weight[...], chunk_steps, pad),
            layer.scale[...],
            bias,
            block_size=layer.block_size or (128, 128),
            dtype=layer.dtype,
            implementation=implementation,
        )
    if isinstance(layer, Fp8Embed):
        return Ecf8Embed(
            _encode(layer.table[...], chunk_steps, pad),
            layer.scale[...],
            dtype=layer.dtype,
            implementation=implementation,
        )
    raise TypeError(f"compress_layer converts Fp8Linear / Fp8Embed, not {type(layer).__name__}")


def compress_model(
    model: nnx.Module,
    where: Where | None = None,
    *,
    chunk_steps: int | None = None,
    pad: bool = False,
    implementation: str | None = None,
) -> nnx.Module:
    """Replaces the model's :class:`Fp8Linear` / :class:`Fp8Embed` layers by their ECF8 twins.

    The conversion is lossless: the compressed model decodes bit-identical FP8 weights and runs
    the same matmul code, so its outputs are bit-identical to the raw-FP8 model's. A layer shared
    by several paths (a tied embedding) is encoded once and stays shared. The layers of a
    :class:`~ecf8_jax.nn.Stacked` are converted one by one and stacked again (their streams
    zero-padded to the longest, see :func:`ecf8_jax.stack`).

    Args:
      model: any NNX module; modified in place.
      where: ``where(path, layer) -> bool`` selecting which FP8 layers to convert, ``path`` being
        the dotted attribute path (``"layers.0.attn.q_proj"``, also inside a stack); default: all
        of them. In a stack it must choose alike in every layer.
      chunk_steps, pad, implementation: see :func:`compress_layer`.

    Returns:
      ``model`` (for chaining).
    """
    # Stacks first: convert their layers one by one and stack the results again.
    stacks = [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, Stacked)]
    inside: set[int] = set()
    for path, stacked in stacks:
        prefix = _path_str(path)
        layers = stacked.unstack()
        for i, layer in enumerate(layers):
            at = functools.partial(_join, prefix, str(i))
            if isinstance(layer, Fp8Linear | Fp8Embed):  # a stack of bare linear layers
                if where is None or where(at(""), layer):
                    layers[i] = compress_layer(
                        layer, chunk_steps=chunk_steps, pad=pad, implementation=implementation
                    )
                continue
            sub = None if where is None else (lambda p, m, at=at: where(at(p), m))
            compress_model(
                layer, sub, chunk_steps=chunk_steps, pad=pad, implementation=implementation
            )
        try:
            restacked = Stacked(layers)
        except ValueError as e:
            raise ValueError(
                f"compress_model: after conversion the layers of the stack {prefix!r} differ "
                "(`where` must select the same layers in each of them)"
            ) from e
        stacked.layer, stacked.fp8_leaves = restacked.layer, restacked.fp8_leaves
        inside.update(id(m) for _, m in nnx.iter_modules(stacked.layer))
    # iter_modules yields each module once (at its first path); a shared layer is replaced at
    # every parent that refers to it, so walk each module's direct children.
    parents = [(p, m) for p, m in nnx.iter_modules(model) if id(m) not in inside]
    paths: dict[int, str] = {}
    for path, module in parents:
        if path and isinstance(module, Fp8Linear | Fp8Embed):
            paths.setdefault(id(module), _path_str(path))
    done: dict[int, nnx.Module] = {}
    for _, parent in parents:
        for key, child in list(nnx.iter_children(parent)):
            if not isinstance(child, Fp8Linear | Fp8Embed) or id(child) in inside:
                continue
            if where is not None and not where(paths[id(child)], child):
                continue
            new = done.get(id(child))
            if new is None:
                new = compress_layer(
                    child, chunk_steps=chunk_steps, pad=pad, implementation=implementation
                )
                done[id(child)] = new
            _set(parent, key, new)
    return model
