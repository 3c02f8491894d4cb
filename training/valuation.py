"""LinFiK data valuation (arXiv 2503.01052): a sample's linearised influence on a target loss.

One SGD step of size η on a training sample z changes the target loss ``L_T`` by::

    ΔL_T(z) = L_T(θ - η∇ℓ(z; θ)) - L_T(θ) = -η·⟨∇L_T(θ), ∇ℓ(z; θ)⟩ + O(η²)

so the value of z is the inner product ``v(z) = ⟨∇L_T(θ), ∇ℓ(z; θ)⟩`` (positive: a step on z
lowers the target loss). Three ways to get it here:

- :func:`linfik`: exact. One ``jax.grad`` of the target loss, then one ``jax.jvp`` of the pool's
  per-sample losses along it (forward mode: ``⟨∇ℓ(z), g_T⟩`` for a whole chunk of samples in
  one pass; no per-sample gradient is ever stored).
- :func:`linfik_zo`: forward passes only, from seeds and projected gradients as in MeZO. For
  ``z_k`` drawn from ``fold_in(key, k)`` (the keys of an n-SPSA estimate,
  :func:`training.mezo_value_and_grad`), the projected gradients of the target and of each
  sample, ``g_T,k`` and ``g_z,k``, give ``v̂(z) = (1/K) Σ_k g_T,k·g_z,k``, unbiased for
  ``v(z)`` up to O(ε²) because ``E[z zᵀ] = I``. With an exact target gradient it is GradIP
  (Meerkat's ``⟨∇L_pre, z⟩·g``, :func:`training.zo_directional`).
- :func:`sgd_delta`: the ground truth, the actual ΔL_T after one SGD step on each sample.

A ``mask`` restricts everything to a subspace (the sparse mask MeZO trains); a LoRA or other
adapter subspace is a ``loss_fn`` over the adapter parameters.

Pools are pytrees of arrays with a leading sample axis ``[N, ...]``; ``loss_fn(params,
batch)`` is called with batches of one sample (leading axis 1), as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from training.mezo import lean_compiler_options, mezo_value_and_grad, zo_directional
from training.perturb import Perturbation, as_perturbation, mask_leaves

PyTree = Any
Array = jax.Array
LossFn = Callable[[PyTree, Any], Array]


def pool_size(pool: PyTree) -> int:
    """The number of samples of ``pool`` (its leaves' common leading axis)."""
    sizes = {int(np.shape(x)[0]) for x in jax.tree.leaves(pool)}
    if len(sizes) != 1:
        raise ValueError(f"pool leaves need one common leading axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def _chunks(pool: PyTree, chunk: int) -> tuple[PyTree, int]:
    """``pool`` as ``[ceil(N / chunk), chunk, ...]`` (the last chunk wraps around) and N."""
    n = pool_size(pool)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    count = -(-n // chunk)
    idx = np.arange(count * chunk) % n
    return jax.tree.map(lambda x: jnp.asarray(x)[idx].reshape(count, chunk, *x.shape[1:]), pool), n


def per_sample_losses(loss_fn: LossFn, params: PyTree, chunk: PyTree) -> Array:
    """``ℓ(z_i; params)`` for each sample of ``chunk`` (leading axis): float32 ``[chunk]``."""
    one = lambda sample: loss_fn(params, jax.tree.map(lambda x: x[None], sample))  # noqa: E731
    return jax.vmap(one)(chunk).astype(jnp.float32)


def masked(tree: PyTree, mask: PyTree | None) -> PyTree:
    """``tree`` with zeros outside ``mask`` (the projection onto the trainable subspace)."""
    if mask is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for leaf, m in zip(leaves, mask_leaves(mask, tree), strict=True):
        if m is True:
            out.append(leaf)
        elif m is False:
            out.append(jnp.zeros_like(leaf))
        else:
            out.append(jnp.where(m, leaf, jnp.zeros_like(leaf)))
    return jax.tree.unflatten(treedef, out)


def target_gradient(
    loss_fn: LossFn, params: PyTree, target: Any, *, mask: PyTree | None = None
) -> PyTree:
    """``∇L_T(params)`` on the ``target`` batch, zero outside ``mask``; leaves in params' dtypes."""
    return masked(jax.jit(jax.grad(loss_fn))(params, target), mask)


def linfik(
    loss_fn: LossFn,
    params: PyTree,
    pool: PyTree,
    target: Any,
    *,
    mask: PyTree | None = None,
    chunk: int = 8,
    target_grad: PyTree | None = None,
    mode: str = "jvp",
    compiler_options: dict | None = None,
) -> np.ndarray:
    """Exact LinFiK values ``⟨∇L_T(θ), ∇ℓ(z_i; θ)⟩`` of every pool sample.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: the model's parameters θ.
      pool: samples with a leading axis ``[N, ...]``.
      target: one batch of the target task (``loss_fn(params, target)`` is ``L_T``).
      mask: optional trainable mask (bool pytree like ``params``): values in that subspace.
      chunk: samples per forward-mode pass (memory: ``chunk`` forward passes with tangents).
      target_grad: ``∇L_T`` if already computed (else :func:`target_gradient`).
      mode: ``"jvp"`` (forward mode, a chunk per pass) or ``"vjp"`` (reverse mode: one
        sample's gradient at a time, dotted with the target gradient and dropped). For a small
        trainable vector over a large frozen model (a sparse delta scattered into the weights)
        the forward mode carries a tangent for every weight it reaches; on SmolLM2-135M with a
        0.1 % delta it went past 9 GB and was killed, while ``"vjp"`` needs one backward pass.
      compiler_options: XLA options; default :func:`training.lean_compiler_options`
        (memory-optimised scheduling on CPU: without it XLA:CPU keeps several parameter-sized
        tangents alive at once, 10 GB on SmolLM2-135M).

    Returns:
      float64 ``[N]``; the first-order ΔL_T of an SGD step of size η on sample i is
      ``-η·values[i]``.
    """
    g = target_gradient(loss_fn, params, target, mask=mask) if target_grad is None else target_grad
    g = jax.tree.map(lambda t, p: jnp.asarray(t, jnp.result_type(p)), masked(g, mask), params)
    chunks, n = _chunks(pool, chunk)

    if mode not in ("jvp", "vjp"):
        raise ValueError(f"mode must be 'jvp' or 'vjp', got {mode!r}")

    def dot(a, b):
        return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)) for x, y in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip

    @_lean_jit(compiler_options)
    def values(params, g, chunks):
        def one(c):
            if mode == "jvp":
                return jax.jvp(lambda p: per_sample_losses(loss_fn, p, c), (params,), (g,))[1]

            def sample(x):
                batch = jax.tree.map(lambda t: t[None], x)
                return dot(jax.grad(loss_fn)(params, batch), g)

            return jax.lax.map(sample, c)

        return jax.lax.map(one, chunks)

    return np.asarray(values(params, g, chunks), np.float64).reshape(-1)[:n]


def _lean_jit(compiler_options):
    options = lean_compiler_options() if compiler_options is None else dict(compiler_options)
    return lambda fn: jax.jit(fn, compiler_options=options or None)


class ZoValues(NamedTuple):
    """LinFiK from forward passes (:func:`linfik_zo`).

    Attributes:
      values: float64 ``[N]``, ``(1/K) Σ_k t_k·g[i, k]``.
      target: float32 ``[K]``, the target's projected gradients ``t_k`` (or ``⟨∇L_T, z_k⟩``
        when an exact target gradient was given).
      pool: float32 ``[N, K]``, each sample's projected gradient along ``z_k``.
    """

    values: np.ndarray
    target: np.ndarray
    pool: np.ndarray


def linfik_zo(
    loss_fn: LossFn,
    params: PyTree,
    pool: PyTree,
    target: Any,
    *,
    key: Array,
    num_samples: int,
    eps: float = 1e-3,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk: int = 8,
    chunk_size: int | None = None,
    distribution: str | None = None,
    target_grad: PyTree | None = None,
) -> ZoValues:
    """LinFiK from forward passes only: seeds and projected gradients.

    Direction ``k`` is the z of ``fold_in(key, k)`` (the n-SPSA keys of
    :func:`training.mezo_value_and_grad` with ``num_samples=K``, so a logged MeZO estimate of
    the target can be reused). Per direction: two forward passes of the target batch and two
    of the pool (chunked), each at ``θ ± εz_k`` regenerated from the key; nothing of the size
    of θ is stored beyond the perturbed copy.

    Args:
      loss_fn, params, pool, target, chunk: as in :func:`linfik`.
      key: the root key of the directions.
      num_samples: K, the number of directions (the estimate's variance falls as 1/K).
      eps: the perturbation scale ε.
      perturbation: the definition of z, a :class:`training.Perturbation` (its mask: the
        subspace, as ``mask`` in :func:`linfik`); the same one as a MeZO run's to reuse its
        estimates.
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.
      target_grad: an exact ``∇L_T``; then ``t_k = ⟨∇L_T, z_k⟩`` (GradIP,
        :func:`training.zo_directional`) instead of a two-point estimate of the target.

    Returns:
      :class:`ZoValues`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    target_fn = mezo_value_and_grad(loss_fn, eps=eps, perturbation=pz)
    pool_fn = mezo_value_and_grad(
        lambda p, c: per_sample_losses(loss_fn, p, c), eps=eps, perturbation=pz
    )  # a vector of per-sample projected gradients per chunk
    chunks, n = _chunks(pool, chunk)
    exact = target_grad is not None

    @_lean_jit(None)
    def directions(params, target, chunks, keys, tgrad):
        def one(key_k):
            if exact:
                t = zo_directional(masked(tgrad, pz.mask), key_k, perturbation=pz)
            else:
                t = target_fn(params, target, key_k)[1]
            gs = jax.lax.map(lambda c: pool_fn(params, c, key_k)[1], chunks)
            return t, gs.reshape(-1)

        return jax.lax.map(one, keys)  # one direction after another: one perturbed copy alive

    keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(num_samples))
    t, g = directions(params, target, chunks, keys, target_grad)
    t = np.asarray(t, np.float32)
    g = np.asarray(g, np.float32)[:, :n].T
    return ZoValues((g.astype(np.float64) * t.astype(np.float64)).mean(axis=1), t, g)


def sgd_delta(
    loss_fn: LossFn,
    params: PyTree,
    pool: PyTree,
    target: Any,
    learning_rates: Sequence[float],
    *,
    mask: PyTree | None = None,
) -> np.ndarray:
    """Ground truth: ``L_T(θ - η∇ℓ(z_i)) - L_T(θ)`` for every sample and step size.

    Each sample's gradient is computed (one at a time), the SGD step taken (inside ``mask``
    only) and the target loss measured again.

    Returns:
      float64 ``[N, len(learning_rates)]``.
    """
    lrs = jnp.asarray(learning_rates, jnp.float32)
    n = pool_size(pool)
    arrays = jax.tree.map(jnp.asarray, pool)

    @_lean_jit(None)
    def deltas(params, arrays, target):
        base = loss_fn(params, target).astype(jnp.float32)

        def one(sample):
            batch = jax.tree.map(lambda x: x[None], sample)
            g = masked(jax.grad(loss_fn)(params, batch), mask)

            def after(lr):
                stepped = jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), params, g)
                return loss_fn(stepped, target).astype(jnp.float32) - base

            return jax.lax.map(after, lrs)

        return jax.lax.map(one, arrays)

    out = np.asarray(deltas(params, arrays, target), np.float64)
    if out.shape != (n, len(learning_rates)):
        raise AssertionError(f"unexpected shape {out.shape}")
    return out


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (0-based; ties share the mean of their ranks), float64 ``[N]``."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length vectors (nan if either is constant)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two vectors of one length, got {a.shape} and {b.shape}")
    ra, rb = ranks(a) - (len(a) - 1) / 2, ranks(b) - (len(b) - 1) / 2
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first (ties: the lower index first)."""
    values = np.asarray(values)
    if not 0 < k <= len(values):
        raise ValueError(f"k must be in 1..{len(values)}, got {k}")
    return np.argsort(-values, kind="stable")[:k]


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The share of ``a``'s top ``k`` that is also in ``b``'s top ``k`` (1 = the same set)."""
    return len(set(top_k(a, k).tolist()) & set(top_k(b, k).tolist())) / k


__all__ = [
    "ZoValues",
    "linfik",
    "linfik_zo",
    "masked",
    "per_sample_losses",
    "pool_size",
    "ranks",
    "sgd_delta",
    "spearman",
    "target_gradient",
    "top_k",
    "top_k_overlap",
]
