"""ToM-sensitive parameters (arXiv 2504.04238): diagonal Fisher masks and mean replacement.

The diagonal empirical Fisher of a loss is the mean over examples of the squared per-example
gradient, ``F = E_x[(∂ℓ(θ; x)/∂θ)²]`` (here ``ℓ`` is the negative log-likelihood of the supervised
last token: the answer). The paper's mask keeps, in each weight matrix, the entries in the top
``k`` of the Fisher on ToM prompts that are *not* in the top ``k`` of the Fisher on generic text:

    M = top_k(F_ToM) ∧ ¬top_k(F_generic)        (k a fraction of the matrix, per matrix)

and perturbs the model by replacing the masked entries with the mean of the matrix's unmasked
entries, ``W ← W ⊙ ¬M + M ⊙ μ``. The control is a random mask with the same count per matrix.

Parameters are any pytree of float arrays; a leaf with two dimensions is one matrix, a leaf with
three (layers stacked by :class:`~ecf8_jax.nn.Stacked`) is one matrix per leading index; leaves
with fewer dimensions (norm scales, biases) are never masked (their mask is all False).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def diagonal_fisher(
    loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, examples: Any, chunk: int = 1
) -> PyTree:
    """Per-example diagonal empirical Fisher, averaged over ``examples``.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example (a log-likelihood loss).
      params: float pytree.
      examples: a pytree of arrays with a leading example axis ``[n, ...]``.
      chunk: examples per ``vmap(grad)`` call (memory: ``chunk`` gradients at once); ``n`` must
        be a multiple of ``chunk``.

    Returns:
      float32 pytree like ``params``: ``mean_i grad_i ** 2``.

    Raises:
      ValueError: no examples, or ``n`` not a multiple of ``chunk``.
    """
    n = len(jax.tree.leaves(examples)[0])
    if n == 0 or n % chunk:
        raise ValueError(f"{n} examples: need at least one and a multiple of chunk={chunk}")

    @jax.jit
    def sq_grad_sum(p, batch):
        grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(p, batch)
        return jax.tree.map(lambda g: jnp.square(g.astype(jnp.float32)).sum(0), grads)

    total = None
    for start in range(0, n, chunk):
        batch = jax.tree.map(lambda x, s=start: jnp.asarray(x[s : s + chunk]), examples)
        g2 = sq_grad_sum(params, batch)
        total = g2 if total is None else jax.tree.map(jnp.add, total, g2)
    return jax.tree.map(lambda t: t / n, total)


def _matrices(x: np.ndarray) -> np.ndarray | None:
    """``x`` as ``[m, rows, cols]`` matrices, or None for vectors and scalars."""
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    return None


def count_per_matrix(size: int, fraction: float) -> int:
    """Entries kept per matrix: ``round(fraction * size)`` (0 for fraction 0).

    Raises:
      ValueError: ``fraction`` outside [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(size, int(round(fraction * size)))


def top_k_per_matrix(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool ``[m, r, c]``: the ``k`` largest entries of each matrix (ties to the lower index)."""
    m = scores.reshape(scores.shape[0], -1)
    out = np.zeros(m.shape, bool)
    if k:
        idx = np.argsort(-m, axis=1, kind="stable")[:, :k]
        np.put_along_axis(out, idx, True, axis=1)
    return out.reshape(scores.shape)


def sensitive_mask(fisher_tom: PyTree, fisher_generic: PyTree, fraction: float) -> PyTree:
    """``top_k(F_ToM) ∧ ¬top_k(F_generic)`` per matrix, ``k = round(fraction * matrix size)``.

    Args:
      fisher_tom, fisher_generic: pytrees like the parameters (:func:`diagonal_fisher`).
      fraction: of each matrix (the paper sweeps up to about 5e-5).

    Returns:
      A pytree of numpy bool arrays like the parameters (all False for non-matrix leaves).
    """

    def one(ft, fg):
        ft, fg = np.asarray(ft, np.float32), np.asarray(fg, np.float32)
        mt, mg = _matrices(ft), _matrices(fg)
        if mt is None:
            return np.zeros(ft.shape, bool)
        k = count_per_matrix(mt[0].size, fraction)
        return (top_k_per_matrix(mt, k) & ~top_k_per_matrix(mg, k)).reshape(ft.shape)

    return jax.tree.map(one, fisher_tom, fisher_generic)


def random_like(mask: PyTree, seed: int) -> PyTree:
    """A random mask with the same number of True entries as ``mask`` in every matrix."""
    rng = np.random.default_rng(seed)

    def one(m):
        m = np.asarray(m, bool)
        mats = _matrices(m)
        if mats is None:
            return np.zeros(m.shape, bool)
        out = np.zeros(mats.shape, bool)
        for i, mat in enumerate(mats):
            flat = out[i].reshape(-1)
            flat[rng.choice(mat.size, int(mat.sum()), replace=False)] = True
        return out.reshape(m.shape)

    return jax.tree.map(one, mask)


def mean_replace(params: PyTree, mask: PyTree) -> PyTree:
    """``W ← W ⊙ ¬M + M ⊙ μ`` per matrix, ``μ`` the mean of the matrix's unmasked entries.

    Unmasked entries are returned bit for bit; ``μ`` is computed in float64 and cast to the
    leaf's dtype. Matrices without masked entries are unchanged.

    Returns:
      A pytree of numpy arrays like ``params``.
    """

    def one(w, m):
        w, m = np.asarray(w), np.asarray(m, bool)
        mats, masks = _matrices(w), _matrices(m)
        if mats is None or not m.any():
            return w
        out = mats.copy()
        for i, (mat, mm) in enumerate(zip(mats, masks)):
            if mm.any():
                mu = mat[~mm].astype(np.float64).mean() if (~mm).any() else 0.0
                out[i][mm] = np.asarray(mu, w.dtype)
        return out.reshape(w.shape)

    return jax.tree.map(one, params, mask)


def mask_size(mask: PyTree) -> int:
    """How many entries ``mask`` selects."""
    return int(sum(np.asarray(m).sum() for m in jax.tree.leaves(mask)))
