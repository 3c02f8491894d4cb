"""Seeded Gaussian perturbations of a parameter pytree, regenerated from one key, leaf by leaf.

Why: zeroth-order training never stores z. Every consumer (the ``θ ± εz`` forward passes, the
``g·z`` update, the server replaying a client's path) regenerates it from the step key, so the
definition of z below is part of the training log's format: change it and old logs no longer
replay.

Definition of z for ``key`` and a pytree ``params`` (leaves in ``jax.tree.leaves`` order)::

    leaf_key[i]     = fold_in(key, i)                        # i: the leaf's flat index
    L               = min(n, chunk_size)                      # n: the leaf's element count
    chunk[i, j]     = normal(fold_in(leaf_key[i], j), (L,), float32)  for j < ceil(n / L)
    z[i]            = concat_j(chunk[i, j])[:n].reshape(leaf.shape)
    z[i]            = where(mask[i], z[i], 0)                 # when a mask is given

z is always float32, whatever the leaf dtype; a leaf whose mask is the Python value ``False`` is
frozen and draws nothing. Keys may be raw ``PRNGKey`` arrays or typed ``jax.random.key`` arrays.

Memory: z is never stored for the model. Leaves of up to ``chunk_size`` elements draw z in one
piece inside the op that consumes it; larger leaves run a ``fori_loop`` over chunks that writes
``fn(θ, z)`` into the result in place, so z and its random-bit temporaries exist for one chunk
at a time. On GPU, XLA fuses threefry into its consumer; on CPU it computes threefry in a rolled
loop whose state is about three times the size of the draw, which is what chunks bound. Measured
with ``jit(...).lower(...).compile().memory_analysis()`` (``bench/training.py`` and
``tests/training/test_mezo.py::test_jitted_step_temporaries_are_below_half_the_params``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Array = jax.Array

DEFAULT_CHUNK_SIZE = 1 << 20
"""Elements per z chunk (4 MiB of float32): large leaves draw z in pieces of this size."""

Z_DTYPE = jnp.float32


def _chunk_normal(leaf_key: Array, chunk_id: Array | int, length: int) -> Array:
    """Chunk ``chunk_id`` of a leaf's z: ``normal(fold_in(leaf_key, chunk_id), (length,))``."""
    return jax.random.normal(jax.random.fold_in(leaf_key, chunk_id), (length,), Z_DTYPE)


def leaf_normal(leaf_key: Array, shape: tuple[int, ...], chunk_size: int = DEFAULT_CHUNK_SIZE):
    """z for one leaf, materialised: float32 N(0, 1) of ``shape`` (see the module docstring).

    Args:
      leaf_key: the leaf's key, ``fold_in(key, leaf_index)``.
      shape: the leaf's shape.
      chunk_size: elements per chunk (static).

    Returns:
      A float32 array of ``shape``.
    """
    return leaf_map(lambda x, z, m: z, jnp.zeros(shape, Z_DTYPE), leaf_key, True, chunk_size)


def leaf_map(
    fn: Callable[[Array, Array, Any], Array],
    x: Array,
    leaf_key: Array,
    mask: Any = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Array:
    """``fn(x, z, mask)`` for one leaf, with z generated (and ``fn`` applied) chunk by chunk.

    ``fn`` must be elementwise: it gets matching flat pieces of ``x``, of z (already zero
    outside the mask) and of the mask (``True`` for an unmasked leaf), and returns a piece of the
    result. Leaves of at most ``chunk_size`` elements take one piece; larger ones run a
    ``fori_loop`` over chunks that writes into the result in place, so z and the random-bit
    temporaries only ever exist for one chunk (XLA:CPU computes threefry in a rolled loop whose
    state is three times the size of what it draws: it cannot be fused away).

    Args:
      fn: ``fn(x_piece, z_piece, mask_piece) -> result_piece``.
      x: the leaf (or any array of the leaf's shape).
      leaf_key: ``fold_in(key, leaf_index)``.
      mask: ``True`` or a bool array broadcastable to ``x``.
      chunk_size: elements per chunk (static).

    Returns:
      An array of ``x``'s shape and the dtype ``fn`` returns.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = jnp.shape(x)
    n = int(np.prod(shape, dtype=np.int64))
    full_mask = mask is True

    def piece(x_piece, z_piece, m_piece):
        if not full_mask:
            z_piece = jnp.where(m_piece, z_piece, jnp.zeros((), Z_DTYPE))
        return fn(x_piece, z_piece, m_piece)

    if n == 0:
        return fn(x, jnp.zeros(shape, Z_DTYPE), mask)
    if n <= chunk_size:
        z = _chunk_normal(leaf_key, 0, n).reshape(shape)
        return piece(x, z, True if full_mask else jnp.broadcast_to(mask, shape))
    length = chunk_size
    num_full, rest = divmod(n, length)
    x_flat = jnp.reshape(x, (n,))
    m_flat = None if full_mask else jnp.broadcast_to(mask, shape).reshape(n)
    out_aval = jax.eval_shape(
        lambda a: fn(a, jnp.zeros((length,), Z_DTYPE), True),
        jax.ShapeDtypeStruct((length,), x.dtype),
    )
    in_place = out_aval.dtype == x.dtype

    def apply(out, start, size, z):
        src = out if in_place else x_flat
        x_piece = jax.lax.dynamic_slice(src, (start,), (size,))
        m_piece = True if full_mask else jax.lax.dynamic_slice(m_flat, (start,), (size,))
        return jax.lax.dynamic_update_slice(out, piece(x_piece, z, m_piece), (start,))

    def body(j, out):
        start = j * length
        return apply(out, start, length, _chunk_normal(leaf_key, j.astype(jnp.uint32), length))

    out = x_flat if in_place else jnp.zeros((n,), out_aval.dtype)
    out = jax.lax.fori_loop(0, num_full, body, out)
    if rest:
        z_rest = _chunk_normal(leaf_key, num_full, length)[:rest]
        out = apply(out, num_full * length, rest, z_rest)
    return out.reshape(shape)


def mask_leaves(mask: PyTree | None, params: PyTree) -> list[Any]:
    """The mask as one entry per params leaf: ``True``, ``False`` or a bool array.

    Args:
      mask: ``None`` (everything trainable), or a pytree with the structure of ``params`` whose
        leaves are Python/numpy bools (the whole leaf) or bool arrays broadcastable to the leaf.
      params: the parameter pytree.

    Returns:
      A list aligned with ``jax.tree.leaves(params)``.
    """
    leaves, treedef = jax.tree.flatten(params)
    if mask is None:
        return [True] * len(leaves)
    try:
        entries = treedef.flatten_up_to(mask)
    except (ValueError, TypeError) as e:
        raise ValueError(f"mask must have the structure of params ({treedef}): {e}") from None
    out = []
    for i, (m, p) in enumerate(zip(entries, leaves)):
        if m is None or isinstance(m, (bool, np.bool_)):
            out.append(True if m is None else bool(m))
            continue
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            raise TypeError(f"mask leaf {i} has dtype {m.dtype}, expected bool")
        try:
            np.broadcast_shapes(m.shape, p.shape)
        except ValueError:
            raise ValueError(
                f"mask leaf {i} of shape {m.shape} does not broadcast to params leaf {p.shape}"
            ) from None
        out.append(m)
    return out


def check_float_leaves(params: PyTree) -> list[Array]:
    """``jax.tree.leaves(params)``, after checking every leaf is a floating-point array."""
    leaves = jax.tree.leaves(params)
    for i, p in enumerate(leaves):
        if not jnp.issubdtype(jnp.result_type(p), jnp.floating):
            raise TypeError(
                f"params leaf {i} has dtype {jnp.result_type(p)}; zeroth-order training needs "
                "floating-point leaves (split frozen or integer state out of params)"
            )
    return leaves


def map_with_z(
    fn: Callable[[Array, Array | None, Any], Array],
    key: Array,
    params: PyTree,
    *,
    mask: PyTree | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PyTree:
    """``fn(leaf, z_leaf, mask_leaf)`` for every leaf, z regenerated leaf by leaf.

    ``z_leaf`` is already masked, and ``None`` for a leaf frozen by a Python ``False`` in the mask
    (nothing drawn); ``mask_leaf`` is that leaf's entry of :func:`mask_leaves`. ``fn`` must be
    elementwise: it is applied chunk by chunk (see :func:`leaf_map`). Returns the pytree of
    results.
    """
    leaves, treedef = jax.tree.flatten(params)
    check_float_leaves(params)
    masks = mask_leaves(mask, params)
    out = []
    for i, (p, m) in enumerate(zip(leaves, masks)):
        if m is False:
            out.append(fn(p, None, m))
        else:
            out.append(leaf_map(fn, p, jax.random.fold_in(key, i), m, chunk_size))
    return jax.tree.unflatten(treedef, out)


def perturbation(
    key: Array,
    params: PyTree,
    *,
    mask: PyTree | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PyTree:
    """The perturbation z for ``key``, materialised (for tests, analysis and small models).

    Args:
      key: the step's key (``jax.random.fold_in(root_key, step)``), or one sample's key
        ``fold_in(step_key, i)`` when several samples are averaged.
      params: the parameter pytree (only shapes are used).
      mask: optional trainable mask (see :func:`mask_leaves`); z is 0 outside it.
      chunk_size: elements per chunk; must match the value used in training.

    Returns:
      A float32 pytree with the structure and shapes of ``params``.
    """
    return map_with_z(
        lambda p, z, m: jnp.zeros(jnp.shape(p), Z_DTYPE) if z is None else z,
        key,
        params,
        mask=mask,
        chunk_size=chunk_size,
    )


def perturb(
    params: PyTree,
    key: Array,
    scale: float | Array,
    *,
    mask: PyTree | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PyTree:
    """``θ + scale·z`` leaf by leaf, computed in float32 and cast back to each leaf's dtype.

    Entries outside the mask are returned unchanged (bit for bit).
    """

    def one(p, z, m):
        if z is None:
            return p
        moved = (p.astype(Z_DTYPE) + scale * z).astype(p.dtype)
        return moved if m is True else jnp.where(m, moved, p)

    return map_with_z(one, key, params, mask=mask, chunk_size=chunk_size)
