"""Identical layers stored stacked (a leading ``[num_layers]`` axis) and run under ``lax.scan``.

Why: a Python loop over layers inlines every layer into the jitted program, and XLA then keeps
every layer's decoded (and dequantized) weights alive at once. Scanning one layer's code over
the stacked weights compiles the layer once and decodes one layer per scan step, so the peak
memory of a forward pass is the compressed model, one decoded layer and the activations.

How: :class:`Stacked` holds a single module whose variables carry the layer axis (FP8 weights
``[L, out, in]``, scales ``[L, out, 1]``, norms ``[L, dim]``; an ECF8 weight is one
:class:`~ecf8_jax.Ecf8Tensor` whose leaves are stacked with :func:`ecf8_jax.stack`, streams
zero-padded to the longest). :meth:`Stacked.scan` splits it into graph and state and runs
``lax.scan`` over the state, merging one layer per step. Indexing (``stack[i]``) returns an
unstacked *copy* of layer ``i``: read it, do not assign through it.

:func:`compress_model` understands stacks: it converts the layers one by one and stacks the
results again, so a :class:`Stacked` of FP8 layers becomes a :class:`Stacked` of ECF8 layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from ecf8_jax.codec import stack as stack_ecf8
from ecf8_jax.format.tensor import Ecf8Tensor


def _is_ecf8(x) -> bool:
    return isinstance(x, Ecf8Tensor)


def _stack_leaves(*leaves):
    if _is_ecf8(leaves[0]):
        return jax.tree.map(jnp.asarray, stack_ecf8(list(leaves)))
    return jnp.stack([jnp.asarray(x) for x in leaves])


def _is_fp8_dtype(dtype) -> bool:
    return jnp.dtype(dtype).itemsize == 1 and "float8" in jnp.dtype(dtype).name


def _index(x, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):  # a model built under nnx.eval_shape
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def _bitcast(x, dtype):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype)
    return lax.bitcast_convert_type(x, dtype)


class Stacked(nnx.Module):
    """``len(layers)`` modules of one structure, stored as one module with stacked variables.

    FP8 arrays are stored as their uint8 bit patterns (``fp8_leaves`` records which leaves and
    their dtypes): XLA:CPU widens every FP8 array that enters a loop to f16 before the loop starts,
    a converted copy of the whole stack; uint8 enters as it is and each layer's slice is cast
    back to FP8 inside the loop. ``layer`` is therefore not meant to be called directly: use
    :meth:`scan` or ``stack[i]``.

    Args:
      layers: modules with equal graph structure and static attributes (same classes, shapes,
        dtypes, block sizes, ECF8 metadata).

    Raises:
      ValueError: no layers, or layers that differ in structure (the message names the first).
    """

    def __init__(self, layers: Sequence[nnx.Module]):
        layers = list(layers)
        if not layers:
            raise ValueError("Stacked needs at least one layer")
        graphdef, state0 = nnx.split(layers[0])
        states = [state0]
        for i, layer in enumerate(layers[1:], 1):
            g, s = nnx.split(layer)
            if g != graphdef or jax.tree.structure(s) != jax.tree.structure(state0):
                raise ValueError(
                    f"Stacked: layer {i} ({type(layer).__name__}) differs in structure or static "
                    "attributes from layer 0; layers under a scan must be alike"
                )
            states.append(s)
        state = jax.tree.map(_stack_leaves, *states, is_leaf=_is_ecf8)
        leaves, treedef = jax.tree.flatten(state)
        self.fp8_leaves = tuple(
            (k, jnp.dtype(x.dtype).name) for k, x in enumerate(leaves) if _is_fp8_dtype(x.dtype)
        )
        for k, _ in self.fp8_leaves:
            leaves[k] = _bitcast(leaves[k], jnp.uint8)
        self.num_layers = len(layers)
        self.layer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        self.placement = None  # (mesh, axis) once shard_model splits the layers over a mesh

    def _split(self, f: Callable = lambda x: x):
        """``(graphdef, treedef, leaves)`` of the stored layer, ``f`` applied to every leaf, and
        a function turning such leaves (FP8 still as uint8) back into a state with FP8 arrays."""
        graphdef, state = nnx.split(self.layer)
        leaves, treedef = jax.tree.flatten(state)

        def restore(ls):
            ls = list(ls)
            for k, name in self.fp8_leaves:
                ls[k] = _bitcast(ls[k], jnp.dtype(name))
            return jax.tree.unflatten(treedef, ls)

        return graphdef, [f(x) for x in leaves], restore

    def __len__(self) -> int:
        return self.num_layers

    def __getitem__(self, i: int) -> nnx.Module:
        """An unstacked copy of layer ``i`` (an ECF8 stream keeps its zero padding)."""
        if not -self.num_layers <= i < self.num_layers:
            raise IndexError(f"layer {i} of a stack of {self.num_layers}")
        graphdef, leaves, restore = self._split(lambda x: _index(x, i))
        return nnx.merge(graphdef, restore(leaves))

    def __iter__(self) -> Iterator[nnx.Module]:
        return (self[i] for i in range(self.num_layers))

    def unstack(self) -> list[nnx.Module]:
        """Every layer as its own module (copies)."""
        return list(self)

    def scan(
        self, fn: Callable[[nnx.Module, Any, Any], tuple[Any, Any]], carry, xs=None, **kw
    ) -> tuple[Any, Any]:
        """``lax.scan`` of ``fn(layer, carry, x) -> (carry, y)`` over the layers.

        Args:
          fn: called once per layer (traced once); changes it makes to the layer are dropped.
          carry: the loop state (the activations).
          xs: a pytree of per-layer inputs with a leading ``[num_layers]`` axis (a KV cache),
            or None.
          **kw: passed to ``lax.scan`` (``unroll``).

        Returns:
          ``(carry, ys)``, ``ys`` stacked along a leading layer axis.
        """
        graphdef, leaves, restore = self._split()

        def body(c, inputs):
            layer, x = inputs
            return fn(nnx.merge(graphdef, restore(layer)), c, x)

        if self.placement is None:
            return lax.scan(body, carry, (leaves, xs), length=self.num_layers, **kw)
        mesh, axis = self.placement
        return _scan_placed(body, leaves, carry, xs, mesh, axis, self.num_layers, **kw)


def _as_bits(x: jax.Array) -> jax.Array:
    """``x``'s bit pattern as unsigned integers of at least 32 bits (what ``psum`` moves)."""
    width = max(32, 8 * jnp.dtype(x.dtype).itemsize)
    unsigned = jnp.dtype(f"uint{8 * jnp.dtype(x.dtype).itemsize}")
    bits = x if x.dtype == unsigned else lax.bitcast_convert_type(x, unsigned)
    return bits.astype(jnp.dtype(f"uint{width}"))


def _from_bits(bits: jax.Array, dtype) -> jax.Array:
    unsigned = jnp.dtype(f"uint{8 * jnp.dtype(dtype).itemsize}")
    bits = bits.astype(unsigned)
    return bits if jnp.dtype(dtype) == unsigned else lax.bitcast_convert_type(bits, dtype)


def _scan_placed(body, leaves, carry, xs, mesh, axis: str, num_layers: int, **kw):
    """``lax.scan(body, carry, (leaves, xs))`` with ``leaves`` split by layer over ``axis``.

    Runs under ``shard_map``: at step ``i`` the device holding layer ``i`` contributes its
    (compressed) leaves to a ``psum`` of bit patterns, every other device zeros, so each device
    receives exactly that one layer (bit for bit) and never holds the whole stack. ``carry``,
    ``xs`` and the outputs are replicated; every device runs every layer.
    """
    from jax.sharding import PartitionSpec as P

    per_device = num_layers // mesh.shape[axis]

    def local(leaves, carry, xs):
        me = lax.axis_index(axis)

        def step(c, inputs):
            i, x = inputs
            owner = i // per_device

            def fetch(leaf):
                mine = lax.dynamic_index_in_dim(leaf, i % per_device, keepdims=False)
                bits = jnp.where(me == owner, _as_bits(mine), 0)
                return _from_bits(lax.psum(bits, axis), mine.dtype)

            return body(c, ([fetch(leaf) for leaf in leaves], x))

        return lax.scan(step, carry, (jnp.arange(num_layers), xs), **kw)

    placed = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=([P(axis)] * len(leaves), P(), P()),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return placed(leaves, carry, xs)


def scan_layers(
    layers: Stacked | Sequence[nnx.Module],
    fn: Callable[[nnx.Module, Any, Any], tuple[Any, Any]],
    carry,
    xs=None,
) -> tuple[Any, Any]:
    """:meth:`Stacked.scan`, or the same contract as a Python loop over a list of layers.

    The loop serves models whose layers cannot be stacked (a checkpoint with some layers left in
    BF16); its ``ys`` are stacked with ``jnp.stack`` (``None`` stays ``None``).
    """
    if isinstance(layers, Stacked):
        return layers.scan(fn, carry, xs)
    ys = []
    for i, layer in enumerate(layers):
        x = None if xs is None else jax.tree.map(lambda a, i=i: a[i], xs)
        carry, y = fn(layer, carry, x)
        ys.append(y)
    if all(y is None for y in ys):
        return carry, None
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def stack_or_list(layers: Sequence[nnx.Module]) -> Stacked | nnx.List:
    """A :class:`Stacked` of ``layers``, or (with a warning) an ``nnx.List`` when they differ.

    A list runs as a Python loop: correct, but every layer's decoded weights may stay alive.
    """
    try:
        return Stacked(layers)
    except ValueError as e:
        warnings.warn(f"{e}; running the layers in a Python loop instead", stacklevel=2)
        return nnx.List(list(layers))


def shard_model(model: nnx.Module, mesh: jax.sharding.Mesh, axis: str) -> nnx.Module:
    """Places ``model`` on ``mesh``: stacked layers split along the layer axis, the rest replicated.

    Every array of a :class:`Stacked` whose layer count divides ``mesh.shape[axis]`` evenly is
    sharded on its leading axis with ``PartitionSpec(axis)`` (an ECF8 weight's stream, offsets,
    sign plane, code lengths and checksums alike, so each device holds whole compressed layers);
    everything else (embeddings, the head, norms outside the stack) is replicated. A jitted
    forward then runs SPMD over the mesh with results bit-identical to one device.

    Each device stores ``1 / n`` of the compressed layers. In a forward pass the layer loop runs
    under ``shard_map``: at each step the device holding that layer hands it (still compressed)
    to the others, so a device holds its share of the stack plus one compressed layer in flight
    and one decoded layer, never the whole stack; every device then decodes and runs that layer
    on replicated activations (a layer-by-layer broadcast, not pipeline parallelism). Inputs
    scanned along with the layers (a KV cache) enter and leave replicated.

    Args:
      model: modified in place.
      mesh: a ``jax.sharding.Mesh``.
      axis: the mesh axis to split the layers over.

    Returns:
      ``model`` (for chaining).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    n = mesh.shape[axis]
    replicated = NamedSharding(mesh, PartitionSpec())
    by_layer = NamedSharding(mesh, PartitionSpec(axis))
    for _, m in nnx.iter_modules(model):
        if isinstance(m, Stacked):
            split = m.num_layers % n == 0
            nnx.update(
                m.layer, jax.device_put(nnx.state(m.layer), by_layer if split else replicated)
            )
            m.placement = (mesh, axis) if split and n > 1 else None

    def place(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    nnx.update(model, jax.tree.map(place, nnx.state(model)))
    return model
