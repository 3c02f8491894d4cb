"""Trainable masks for sparse zeroth-order training (Meerkat, sparse deltas) and weight decay.

A mask is a pytree with the structure of the parameters whose leaves are bool arrays of the
leaves' shapes (or Python bools for whole leaves). The builders here keep the ``k`` entries with
the largest score over the whole model (one global ranking, not per leaf), with
``k = max(1, round(density * size))``; ties go to the lower flat index (``jax.lax.top_k``).

- :func:`magnitude_mask`: largest ``|θ|``.
- :func:`random_mask`: uniformly random entries (seeded).
- :func:`gradient_mask`: largest average squared gradient over calibration batches, Meerkat's
  choice (arXiv 2506.03337: ≈ 0.1 % of the weights, on pre-training-like data).

:func:`decay_mask` is the usual weight-decay mask (matrices yes, biases and norm scales no), for
``optax.add_decayed_weights(..., mask=decay_mask)``.

:class:`MaskedEntries` trains a mask's entries as a small dense vector over a frozen base (z is
drawn for the selected entries only, not for every parameter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from training.perturb import check_float_leaves, mask_leaves

PyTree = Any
Array = jax.Array

DEFAULT_DENSITY = 1e-3
"""Fraction of weights kept by the mask builders: 0.1 %, Meerkat's setting."""


def num_selected(size: int, density: float) -> int:
    """``max(1, round(density * size))``: how many entries a mask of ``density`` keeps."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, min(size, round(density * size)))


def top_k_mask(scores: PyTree, density: float = DEFAULT_DENSITY) -> PyTree:
    """Mask of the entries with the largest scores, ranked over all leaves together.

    Args:
      scores: a pytree of real arrays (one score per parameter entry).
      density: fraction of all entries to keep (at least one is kept).

    Returns:
      A bool pytree like ``scores`` with exactly ``num_selected(total, density)`` True entries.
    """
    leaves, treedef = jax.tree.flatten(scores)
    sizes = [int(np.prod(jnp.shape(s), dtype=np.int64)) for s in leaves]
    total = sum(sizes)
    k = num_selected(total, density)
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(s, jnp.float32)) for s in leaves])
    _, idx = jax.lax.top_k(flat, k)
    selected = jnp.zeros((total,), jnp.bool_).at[idx].set(True)
    out, offset = [], 0
    for s, n in zip(leaves, sizes):
        out.append(selected[offset : offset + n].reshape(jnp.shape(s)))
        offset += n
    return jax.tree.unflatten(treedef, out)


def magnitude_mask(params: PyTree, density: float = DEFAULT_DENSITY) -> PyTree:
    """Mask of the ``density`` fraction of weights with the largest magnitude ``|θ|``."""
    check_float_leaves(params)
    return top_k_mask(jax.tree.map(jnp.abs, params), density)


def random_mask(key: Array, params: PyTree, density: float = DEFAULT_DENSITY) -> PyTree:
    """Mask of a uniformly random ``density`` fraction of the weights (leaf i scored with
    ``uniform(fold_in(key, i))``)."""
    leaves, treedef = jax.tree.flatten(params)
    scores = [
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(p)) for i, p in enumerate(leaves)
    ]
    return top_k_mask(jax.tree.unflatten(treedef, scores), density)


def mean_squared_gradient(
    loss_fn: Callable[[PyTree, Any], Array], params: PyTree, batches: Iterable[Any]
) -> PyTree:
    """Average over ``batches`` of ``jax.grad(loss_fn)(params, batch) ** 2`` (float32)."""
    check_float_leaves(params)
    sq_grad = jax.jit(
        lambda p, b: jax.tree.map(
            lambda g: jnp.square(g.astype(jnp.float32)), jax.grad(loss_fn)(p, b)
        )
    )
    total, count = None, 0
    for batch in batches:
        g2 = sq_grad(params, batch)
        total = g2 if total is None else jax.tree.map(jnp.add, total, g2)
        count += 1
    if count == 0:
        raise ValueError("mean_squared_gradient needs at least one calibration batch")
    return jax.tree.map(lambda t: t / count, total)


def gradient_mask(
    loss_fn: Callable[[PyTree, Any], Array],
    params: PyTree,
    batches: Iterable[Any],
    density: float = DEFAULT_DENSITY,
) -> PyTree:
    """Meerkat's mask: the entries with the largest average squared gradient on calibration data.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (differentiable: first-order, once).
      params: the parameters (e.g. the pre-trained model).
      batches: calibration batches (pre-training-like data).
      density: fraction of weights to keep (default 0.1 %).

    Returns:
      A bool pytree like ``params``.
    """
    return top_k_mask(mean_squared_gradient(loss_fn, params, batches), density)


def decay_mask(params: PyTree) -> PyTree:
    """True for leaves with two or more dimensions (weight matrices, kernels); False for
    biases, norm scales and other vectors, which MeZO does not decay."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def mask_count(mask: PyTree, params: PyTree) -> int:
    """How many parameter entries ``mask`` selects (Python bools count whole leaves)."""
    count = 0
    for m, p in zip(mask_leaves(mask, params), jax.tree.leaves(params)):
        if m is True:
            count += int(np.prod(jnp.shape(p), dtype=np.int64))
        elif m is not False:
            count += int(jnp.sum(jnp.broadcast_to(m, jnp.shape(p))))
    return count


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedEntries:
    """The entries a mask selects, trained as dense vectors over a frozen parameter tree.

    Sparse MeZO with a mask of density 0.1 % can perturb the whole tree with z zero outside the
    mask (``training.Perturbation(mask=...)``), but then draws z for every parameter. Gathering
    the selected entries into vectors (:meth:`values`) and training those, scattered back into
    the frozen base inside the loss (:meth:`merge`, :meth:`loss`), draws z for the selected
    entries only: the same algorithm up to which z is drawn for them, much cheaper on CPU.

    Unlike ``ecf8_jax.nn.SparseDelta`` (an adapter module around one FP8/ECF8 linear layer,
    whose delta is added to the frozen weight), this works on any pytree of float leaves
    (norm scales and embeddings too) and replaces the selected entries by the trained values.

    Attributes:
      index: per params leaf, the flat indices the mask selects (int32, ascending; empty for a
        frozen leaf).
      count: how many entries are trainable.
    """

    index: tuple[np.ndarray, ...]
    count: int

    @classmethod
    def from_mask(cls, mask: PyTree, params: PyTree | None = None) -> MaskedEntries:
        """The entries of ``mask``.

        Args:
          mask: a bool pytree. Without ``params`` its leaves must be arrays of the parameter
            leaves' shapes; with ``params`` anything :func:`training.perturb.mask_leaves`
            accepts (Python bools for whole leaves, broadcastable arrays).
          params: the parameters (shapes only), to expand bools and broadcasts.
        """
        if params is None:
            entries = [np.asarray(m) for m in jax.tree.leaves(mask)]
        else:
            entries = [
                np.broadcast_to(np.asarray(m), np.shape(p))
                for m, p in zip(mask_leaves(mask, params), jax.tree.leaves(params), strict=True)
            ]
        index = tuple(np.flatnonzero(m).astype(np.int32) for m in entries)
        return cls(index, int(sum(len(i) for i in index)))

    def values(self, params: PyTree) -> dict[str, Array]:
        """The trainable vectors, keyed ``"0000"``, ``"0001"``... by params leaf number (leaves
        with no selected entry have no key), in each leaf's dtype."""
        leaves = jax.tree.leaves(params)
        return {
            f"{i:04d}": jnp.ravel(leaves[i])[idx] for i, idx in enumerate(self.index) if len(idx)
        }

    def merge(self, base: PyTree, values: dict[str, Array]) -> PyTree:
        """``base`` with the selected entries replaced by ``values`` (the others bit for bit)."""
        leaves, treedef = jax.tree.flatten(base)
        out = []
        for i, (leaf, idx) in enumerate(zip(leaves, self.index, strict=True)):
            if len(idx):
                leaf = jnp.ravel(leaf).at[idx].set(values[f"{i:04d}"]).reshape(leaf.shape)
            out.append(leaf)
        return jax.tree.unflatten(treedef, out)

    def loss(
        self, loss_fn: Callable[[PyTree, Any], Array], base: PyTree
    ) -> Callable[[dict[str, Array], Any], Array]:
        """``loss_fn`` as a function of the trainable vectors: ``merge(base, values)`` first."""
        return lambda values, batch: loss_fn(self.merge(base, values), batch)
