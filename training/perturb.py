"""Seeded perturbations of a parameter pytree, regenerated from one key, leaf by leaf.

Why: zeroth-order training never stores z. Every consumer (the ``θ ± εz`` forward passes, the
``g·z`` update, the server replaying a client's path) regenerates it from the step key, so the
definition of z below is part of the training log's format: change it and old logs no longer
replay.

Definition of z for ``key`` and a pytree ``params`` (leaves in ``jax.tree.leaves`` order)::

    leaf_key[i]     = fold_in(key, i)                        # i: the leaf's flat index
    L               = min(n, chunk_size)                      # n: the leaf's element count
    chunk_key[i, j] = fold_in(leaf_key[i], j)                 # j < ceil(n / L)
    chunk[i, j]     = normal(chunk_key[i, j], (L,), float32)           # distribution="normal"
                    = 1 - 2 * bit_c(bits(chunk_key[i, j], (ceil(L / 32),), uint32))
                                                                      # distribution="rademacher"
    z[i]            = concat_j(chunk[i, j])[:n].reshape(leaf.shape)
    z[i]            = where(mask[i], z[i], 0)                 # when a mask is given

``normal`` is ``jax.random.normal`` (MeZO's Gaussian z, the default). ``rademacher`` draws
independent ±1 signs: element ``c`` of a chunk is ``+1`` where bit ``c % 32`` of word ``c // 32``
is 0, ``-1`` where it is 1. Both have ``E[z zᵀ] = I``, so ``g·z`` is the same SPSA estimate of
the gradient (Rademacher is Spall's original SPSA; its ``|z|² = d`` exactly, which makes the
estimate's variance slightly lower). Rademacher is about 20 times cheaper to draw on a CPU (32
signs per hash instead of one hash and an inverse erf per element), which is most of a step's
time there; on a GPU both are cheap next to the forward passes. A log must be replayed with the
distribution, chunk size and mask it was trained with: :class:`Perturbation` holds the three,
and every consumer of z takes it whole.

z is always float32, whatever the leaf dtype; a leaf whose mask is the Python value ``False`` is
frozen and draws nothing. Keys may be raw ``PRNGKey`` arrays or typed ``jax.random.key`` arrays.

Memory and speed: z is never stored. For threefry keys (jax's default) the threefry hash of
``jax.random.bits`` is written out here in ``jnp`` integer ops (bit-identical to
``jax.random.bits``/``normal``, checked by the tests), so XLA fuses the generation of z into the
elementwise op that consumes it (``θ + εz``, ``g·z``, the update): no z-sized buffer exists, only,
for Rademacher, the random words (1/32 of the leaf). jax's own threefry primitive cannot fuse on
CPU (a rolled loop whose state is three times the draw). Other PRNG implementations go through
``jax.random`` and materialise each leaf's z. Measured with
``jit(...).lower(...).compile().memory_analysis()`` (``bench/training.py`` and
``tests/training/test_mezo.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Array = jax.Array

DEFAULT_CHUNK_SIZE = 1 << 20
"""Elements per z chunk: each chunk of a leaf draws from its own key (part of the z definition)."""

DISTRIBUTIONS = ("normal", "rademacher")
"""The distributions z can be drawn from (see the module docstring)."""

DEFAULT_DISTRIBUTION = "normal"
"""MeZO's Gaussian z."""

Z_DTYPE = jnp.float32

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def check_distribution(distribution: str) -> str:
    """``distribution``, after checking it is one of :data:`DISTRIBUTIONS`."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size``, after checking it is in ``[1, 2**32)``."""
    if not 1 <= chunk_size < 2**32:
        raise ValueError(f"chunk_size must be in [1, 2**32), got {chunk_size}")
    return chunk_size


@dataclasses.dataclass(frozen=True, eq=False)
class Perturbation:
    """Everything that defines z besides the key: one object for estimate, update and replay.

    A MeZO run draws z in three places (the ``θ ± εz`` forward passes, the ``g·z`` update, and
    any later replay of its log, on this machine or a federated server); all three must draw the
    same z. Built once and passed whole (``perturbation=``) to :func:`perturb`,
    :func:`perturbation`, :func:`training.mezo_value_and_grad`, :func:`training.zo_gradient`,
    :func:`training.zo_update`, :func:`training.mezo_step`, :func:`training.replay`, the
    Meerkat programs and :func:`training.valuation.linfik_zo`, they cannot disagree. Those
    functions also accept the loose keywords ``mask=``, ``chunk_size=``, ``distribution=``
    (shorthand for ``Perturbation(distribution, chunk_size, mask)``), but never both forms in
    one call.

    Attributes:
      distribution: ``"normal"`` (MeZO's Gaussian z, the default) or ``"rademacher"`` (±1
        signs; see the module docstring).
      chunk_size: elements per z chunk; each chunk of a leaf draws from its own key (part of
        the definition of z).
      mask: ``None`` (every entry trainable) or a pytree with the structure of the parameters,
        of Python/numpy bools (whole leaves) or bool arrays broadcastable to the leaves
        (:func:`mask_leaves`): z is 0 outside it, and the MeZO update leaves those entries
        unchanged, bit for bit.

    Frozen and compared by identity (the mask may hold arrays); ``dataclasses.replace`` makes a
    variant.

    Example::

        p = training.Perturbation("rademacher", mask=mask)
        step = training.mezo_step(loss_fn, tx, eps=1e-3, perturbation=p)
        ...
        params, _ = training.replay(params0, log, tx, root_key=root, perturbation=p)
    """

    distribution: str = DEFAULT_DISTRIBUTION
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mask: PyTree | None = None

    def __post_init__(self):
        check_distribution(self.distribution)
        check_chunk_size(self.chunk_size)

    def __repr__(self) -> str:
        mask = "None" if self.mask is None else f"<{len(jax.tree.leaves(self.mask))} leaves>"
        return (
            f"Perturbation(distribution={self.distribution!r}, chunk_size={self.chunk_size}, "
            f"mask={mask})"
        )


def as_perturbation(
    perturbation: Perturbation | None = None,
    *,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> Perturbation:
    """The :class:`Perturbation` of a call: ``perturbation``, or one built from the loose keywords.

    Raises:
      TypeError: both forms were given, or ``perturbation`` is not a :class:`Perturbation`.
    """
    loose = {
        k: v
        for k, v in (("mask", mask), ("chunk_size", chunk_size), ("distribution", distribution))
        if v is not None
    }
    if perturbation is None:
        return Perturbation(**loose)
    if not isinstance(perturbation, Perturbation):
        raise TypeError(f"perturbation must be a Perturbation, got {type(perturbation).__name__}")
    if loose:
        raise TypeError(
            f"pass z's settings whole (perturbation=) or loose ({', '.join(loose)}=), not both"
        )
    return perturbation


def _threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds), written out in ``jnp`` ops so that XLA fuses it.

    The same function as ``jax.random``'s ``threefry2x32`` primitive, which XLA:CPU computes in a
    rolled loop with three draw-sized buffers of state; unrolled, it fuses into its consumer.
    """
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _threefry_words(keys: Array) -> tuple[Array, Array] | None:
    """The two uint32 words of threefry keys (``[..., 1]``-shaped), or ``None`` for other PRNGs."""
    if (
        str(jax.random.key_impl(keys)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
    ):
        return None
    data = jax.random.key_data(keys)
    return data[..., 0:1], data[..., 1:2]


def _normal_from_bits(bits: Array) -> Array:
    """``jax.random.normal``'s float32 transform of 32 random bits: ``√2·erfinv(u)``."""
    lo = np.nextafter(np.float32(-1), np.float32(0))
    mantissa = (bits >> np.uint32(32 - 23)) | np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type(mantissa, Z_DTYPE) - np.float32(1)
    u = jax.lax.max(lo, floats * (np.float32(1) - lo) + lo)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def _chunk_bits(chunk_keys: Array, length: int) -> Array:
    """``bits(chunk_keys[j], (length,), uint32)`` for every chunk ``j``: ``[num_chunks, length]``.

    For threefry keys the hash is written out here, so that XLA fuses it into the consumer of
    z; other key implementations go through ``jax.random.bits``.
    """
    words = _threefry_words(chunk_keys)
    if words is None:
        # A loop, not vmap: batched, RngBitGenerator-based keys draw other bits than one by one.
        return jax.lax.map(lambda k: jax.random.bits(k, (length,), jnp.uint32), chunk_keys)
    counter = jax.lax.iota(jnp.uint32, length)[None, :]
    # jax's partitionable threefry: element c hashes the 64-bit counter (0, c), xors the halves.
    y0, y1 = _threefry2x32(*words, jnp.zeros_like(counter), counter)
    return y0 ^ y1


def _leaf_z(leaf_key: Array, n: int, chunk_size: int, distribution: str) -> Array:
    """A leaf's flat z, ``[n]`` float32 (see the module docstring), as one fusible expression."""
    length = min(n, chunk_size)
    num_chunks = -(-n // length)
    chunk_ids = jnp.arange(num_chunks, dtype=jnp.uint32)
    chunk_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(leaf_key, chunk_ids)
    if distribution == "normal":
        z = _normal_from_bits(_chunk_bits(chunk_keys, length))
    else:
        num_words = -(-length // 32)
        # One 32-bit draw feeds 32 signs. The barrier keeps the draws a buffer (1/32 of the
        # leaf): fused into the sign extraction, XLA would hash each word once per bit.
        words = jax.lax.optimization_barrier(_chunk_bits(chunk_keys, num_words))
        shifts = jax.lax.iota(jnp.uint32, 32)
        signs = ((words[:, :, None] >> shifts) & np.uint32(1)) << np.uint32(31)
        ones = signs | np.array(1.0, np.float32).view(np.uint32)  # bit 0: +1.0, bit 1: -1.0
        z = jax.lax.bitcast_convert_type(ones, Z_DTYPE).reshape(num_chunks, num_words * 32)
        z = z[:, :length]
    return z.reshape(num_chunks * length)[:n]


def leaf_normal(
    leaf_key: Array,
    shape: tuple[int, ...],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    distribution: str = DEFAULT_DISTRIBUTION,
) -> Array:
    """z for one leaf, materialised: float32 of ``shape`` (see the module docstring).

    Args:
      leaf_key: the leaf's key, ``fold_in(key, leaf_index)``.
      shape: the leaf's shape.
      chunk_size: elements per chunk (static).
      distribution: ``"normal"`` (N(0, 1)) or ``"rademacher"`` (±1).

    Returns:
      A float32 array of ``shape``.
    """
    return leaf_map(
        lambda x, z, m: z, jnp.zeros(shape, Z_DTYPE), leaf_key, True, chunk_size, distribution
    )


def leaf_map(
    fn: Callable[[Array, Array, Any], Array],
    x: Array,
    leaf_key: Array,
    mask: Any = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    distribution: str = DEFAULT_DISTRIBUTION,
) -> Array:
    """``fn(x, z, mask)`` for one leaf, with z regenerated inside the expression.

    ``fn`` must be elementwise: it gets ``x``, z (already zero outside the mask, float32) and the
    mask broadcast to ``x`` (``True`` for an unmasked leaf). z is built from the chunk keys by
    elementwise integer ops (threefry written out) and broadcasts, so XLA fuses its generation
    into ``fn``'s loop: no z-sized buffer exists (for ``"rademacher"``, one of 1/32 of the leaf
    holds the random words).

    Args:
      fn: ``fn(x, z, mask) -> result``.
      x: the leaf (or any array of the leaf's shape).
      leaf_key: ``fold_in(key, leaf_index)``.
      mask: ``True`` or a bool array broadcastable to ``x``.
      chunk_size: elements per chunk (static; part of the definition of z).
      distribution: ``"normal"`` or ``"rademacher"``.

    Returns:
      An array of ``x``'s shape and the dtype ``fn`` returns.
    """
    check_chunk_size(chunk_size)
    check_distribution(distribution)
    shape = jnp.shape(x)
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0:
        return fn(x, jnp.zeros(shape, Z_DTYPE), mask)
    z = _leaf_z(leaf_key, n, chunk_size, distribution).reshape(shape)
    if mask is True:
        return fn(x, z, True)
    mask = jnp.broadcast_to(mask, shape)
    return fn(x, jnp.where(mask, z, jnp.zeros((), Z_DTYPE)), mask)


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
    perturbation: Perturbation | None = None,
    *,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> PyTree:
    """``fn(leaf, z_leaf, mask_leaf)`` for every leaf, z regenerated leaf by leaf.

    z is that of ``perturbation`` (a :class:`Perturbation`, or the loose ``mask``,
    ``chunk_size``, ``distribution``). ``z_leaf`` is already masked, and ``None`` for a leaf
    frozen by a Python ``False`` in the mask (nothing drawn); ``mask_leaf`` is that leaf's entry
    of :func:`mask_leaves`. ``fn`` must be elementwise: it is applied chunk by chunk (see
    :func:`leaf_map`). Returns the pytree of results.
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    leaves, treedef = jax.tree.flatten(params)
    check_float_leaves(params)
    masks = mask_leaves(pz.mask, params)
    out = []
    for i, (p, m) in enumerate(zip(leaves, masks)):
        if m is False:
            out.append(fn(p, None, m))
        else:
            leaf_key = jax.random.fold_in(key, i)
            out.append(leaf_map(fn, p, leaf_key, m, pz.chunk_size, pz.distribution))
    return jax.tree.unflatten(treedef, out)


def perturbation(
    key: Array,
    params: PyTree,
    *,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> PyTree:
    """The perturbation z for ``key``, materialised (for tests, analysis and small models).

    Args:
      key: the step's key (``jax.random.fold_in(root_key, step)``), or one sample's key
        ``fold_in(step_key, i)`` when several samples are averaged.
      params: the parameter pytree (only shapes are used).
      perturbation: the :class:`Perturbation` of the run (distribution, chunk size, mask; z is
        0 outside the mask).
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.

    Returns:
      A float32 pytree with the structure and shapes of ``params``.
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    return map_with_z(
        lambda p, z, m: jnp.zeros(jnp.shape(p), Z_DTYPE) if z is None else z, key, params, pz
    )


def perturb(
    params: PyTree,
    key: Array,
    scale: float | Array,
    *,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> PyTree:
    """``θ + scale·z`` leaf by leaf, computed in float32 and cast back to each leaf's dtype.

    z is that of ``perturbation`` (or the loose ``mask``, ``chunk_size``, ``distribution``).
    Entries outside the mask are returned unchanged (bit for bit).
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)

    def one(p, z, m):
        if z is None:
            return p
        moved = (p.astype(Z_DTYPE) + scale * z).astype(p.dtype)
        return moved if m is True else jnp.where(m, moved, p)

    return map_with_z(one, key, params, pz)
