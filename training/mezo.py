"""MeZO: zeroth-order gradients from two forward passes, applied through an Optax chain.

For a step key ``k`` and the perturbation ``z = perturbation(k, θ)`` (see
:mod:`training.perturb`)::

    g      = (L(θ + εz) - L(θ - εz)) / (2ε)      # the projected gradient, one scalar
    ∇̂L(θ) = g · z                              # regenerated from k, never stored

With ``num_samples = n > 1`` (n-SPSA), sample ``i`` uses the key ``fold_in(k, i)``, ``g`` is a
vector of n scalars and ``∇̂L = (1/n) Σ g_i z_i``. Both losses are computed from the same,
unchanged θ: nothing is added and subtracted back in place, so no rounding drift accumulates in
low precision (docs/background.md, section 4).

The gradient estimate goes through an ordinary ``optax.GradientTransformation``; MeZO's own
update ``θ ← θ - η(g·z + λθ)`` is ``optax.chain(optax.add_decayed_weights(λ, mask),
optax.sgd(η))`` (:func:`training.zo_sgd`), ZO-Adam is ``optax.adam`` on the same estimate.

Reproducibility: step ``t`` uses ``key = jax.random.fold_in(root_key, t)``; the log of
``(t, g)`` pairs is enough to rebuild every parameter bit for bit (:func:`replay`).

Memory: the step is jitted with the parameters (and optimizer state) donated. z is regenerated
inside each consumer, fused into its elementwise loop (:mod:`training.perturb`), and an
``optimization_barrier`` on the key orders the three uses (``+εz`` forward, ``-εz`` forward,
update) so XLA can neither merge them into one stored z nor overlap the two forward passes. On
CPU the step is compiled with :data:`CPU_LEAN_COMPILER_OPTIONS` (memory-optimised scheduling).
With ``optax.sgd`` the step then needs the forward pass's memory plus one perturbed leaf (the
largest): 1.12x the forward on an MLP whose largest tensor is 1/8 of the parameters
(``python -m bench.training``). That extra leaf is the price of computing both losses from the
unchanged θ: ``θ ↦ fl(θ + εz)`` is not injective, so θ cannot be recovered from a perturbed
buffer and must stay alive next to the perturbed copy of the leaf in use. The opt-in
``mezo_step(..., in_place=True)`` drops that leaf (1.00x the forward) at the price of a rounding
drift (see :func:`mezo_step`). Clipping by global norm needs every ``g·z`` leaf at once and
costs one parameter-sized temporary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from training.perturb import (
    Z_DTYPE,
    Perturbation,
    as_perturbation,
    map_with_z,
    mask_leaves,
    perturb,
)

PyTree = Any
Array = jax.Array
LossFn = Callable[[PyTree, Any], Array]


CPU_LEAN_COMPILER_OPTIONS: dict[str, Any] = {
    # XLA:CPU's default scheduler favours concurrency: it computes every perturbed leaf up
    # front, so all of them are alive at once (4x the params in temporaries on a 16-layer MLP).
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    # YNNPACK dot fusions keep their operands' buffers from being reused (0.8x -> 0.07x the
    # params on the same MLP, measured with jax 0.10.2 and 0.12.0.1).
    "xla_cpu_experimental_ynn_fusion_type": "",
}
"""XLA options that let a CPU step reuse one buffer for the perturbed leaves, one after another."""


def lean_compiler_options(backend: str | None = None) -> dict[str, Any]:
    """Compiler options for a memory-lean step on ``backend`` (default: jax's default backend).

    :data:`CPU_LEAN_COMPILER_OPTIONS` on CPU; nothing elsewhere (the GPU and TPU schedulers are
    memory-aware already).
    """
    backend = jax.default_backend() if backend is None else backend
    return dict(CPU_LEAN_COMPILER_OPTIONS) if backend == "cpu" else {}


def _jit(fn, compiler_options: Mapping[str, Any] | None, **kw):
    options = lean_compiler_options() if compiler_options is None else dict(compiler_options)
    return jax.jit(fn, compiler_options=options or None, **kw)


def step_key(root_key: Array, step: int | Array) -> Array:
    """The key of training step ``step``: ``jax.random.fold_in(root_key, step)``."""
    return jax.random.fold_in(root_key, step)


def _after(key: Array, *deps: Any) -> Array:
    """``key``, made to depend on ``deps`` for XLA (identity on the value).

    z drawn from the returned key cannot be computed before ``deps`` are, nor be merged (CSE)
    with z drawn from ``key`` elsewhere; that is what keeps one z per use instead of one stored
    z alive across both forward passes.
    """
    key, _ = jax.lax.optimization_barrier((key, deps))
    return key


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def mezo_value_and_grad(
    loss_fn: LossFn,
    *,
    eps: float,
    num_samples: int = 1,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> Callable[[PyTree, Any, Array], tuple[Array, Array]]:
    """Zeroth-order counterpart of ``jax.value_and_grad``: loss and projected gradient(s).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; called on perturbed copies of ``params``.
      eps: the perturbation scale ε (MeZO's default for full fine-tuning: 1e-3).
      num_samples: perturbations averaged per step (n-SPSA); sample ``i`` uses
        ``fold_in(key, i)``. ``1`` uses ``key`` itself.
      perturbation: the definition of z, a :class:`training.Perturbation`: its
        ``distribution`` (``"normal"``, MeZO's Gaussian z, the default, or ``"rademacher"``, ±1
        signs, much cheaper to draw on CPU), ``chunk_size`` and trainable ``mask`` (z is 0
        outside it, so only masked entries are perturbed). Pass the same object to the update
        (:func:`zo_gradient`, :func:`zo_update`) and to :func:`replay`.
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.

    Returns:
      ``grad_fn(params, batch, key) -> (loss, projected_grad)``: ``loss`` is the mean of
      ``L(θ+εz)`` and ``L(θ-εz)`` (over all samples), an O(ε²) estimate of ``L(θ)``;
      ``projected_grad`` is a float32 scalar ``(L(θ+εz) - L(θ-εz)) / (2ε)`` for one sample, a
      float32 vector of ``num_samples`` such values otherwise. Turn it into a gradient pytree
      with :func:`zo_gradient`. Not jitted itself; it is meant to run under ``jax.jit``.

    Example::

        grad_fn = training.mezo_value_and_grad(loss_fn, eps=1e-3)
        loss, g = jax.jit(grad_fn)(params, batch, key)
        grads = training.zo_gradient(g, key, params)   # ≈ jax.grad(loss_fn)(params, batch)
    """
    _check_eps(eps)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)

    def two_point(params, batch, key):
        loss_plus = loss_fn(perturb(params, key, eps, perturbation=pz), batch)
        key_minus = _after(key, loss_plus)
        loss_minus = loss_fn(perturb(params, key_minus, -eps, perturbation=pz), batch)
        loss_plus = jnp.asarray(loss_plus, Z_DTYPE)
        loss_minus = jnp.asarray(loss_minus, Z_DTYPE)
        g = (loss_plus - loss_minus) / (2 * eps)
        return (loss_plus + loss_minus) / 2, g

    def grad_fn(params, batch, key):
        if num_samples == 1:
            return two_point(params, batch, key)

        def body(carry, i):
            # The carry chains the samples so XLA runs them one after another.
            sample_key = _after(jax.random.fold_in(key, i), carry)
            loss, g = two_point(params, batch, sample_key)
            return g, (loss, g)

        _, (losses, gs) = jax.lax.scan(
            body, jnp.zeros((), Z_DTYPE), jnp.arange(num_samples, dtype=jnp.uint32)
        )
        return jnp.mean(losses), gs

    return grad_fn


def zo_gradient(
    projected_grad: Array,
    key: Array,
    params: PyTree,
    *,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> PyTree:
    """The gradient estimate ``g·z`` as a pytree like ``params``, z regenerated from ``key``.

    Args:
      projected_grad: a scalar ``g`` (z from ``key``), or a vector of ``n`` values from
        ``num_samples = n`` (z_i from ``fold_in(key, i)``; the result is ``(1/n) Σ g_i z_i``).
      key: the key the projected gradient was computed with.
      params: the parameters (shapes and dtypes of the result).
      perturbation: the :class:`training.Perturbation` of the estimate (zeros outside its mask).
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.

    Returns:
      A pytree of ``params``' structure; each leaf in the leaf's dtype, computed in float32.
    """
    g = jnp.asarray(projected_grad, Z_DTYPE)
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)

    def scaled(scale):
        def one(p, z, m):
            if z is None:
                return jnp.zeros(jnp.shape(p), Z_DTYPE)
            return scale * z

        return one

    def cast(tree):
        return jax.tree.map(lambda u, p: u.astype(jnp.result_type(p)), tree, params)

    if g.ndim == 0:
        return cast(map_with_z(scaled(g), key, params, pz))
    if g.ndim != 1:
        raise ValueError(f"projected_grad must be a scalar or a vector, got shape {g.shape}")
    n = g.shape[0]

    def body(i, acc):
        term = map_with_z(scaled(g[i]), jax.random.fold_in(key, i), params, pz)
        return jax.tree.map(jnp.add, acc, term)

    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), Z_DTYPE), params)
    total = jax.lax.fori_loop(0, n, body, zeros)
    return cast(jax.tree.map(lambda t: t / n, total))


def zo_directional(
    tree: PyTree,
    key: Array,
    *,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> Array:
    """``⟨tree, z⟩`` for the z of ``key`` (regenerated, zero outside the mask): float32 scalar.

    z is that of ``perturbation`` (or the loose ``mask``, ``chunk_size``, ``distribution``).

    With ``tree`` an exact gradient this is the projected gradient a two-point estimate measures
    along the same z, up to O(ε²). Meerkat's GradIP and LinFiK's ZO estimator
    (:func:`training.valuation.linfik_zo`) pair it with the projected gradients of a run:
    ``E_z[g·⟨tree, z⟩] = ⟨∇L, tree⟩`` because ``E[zzᵀ] = I``.
    """
    products = map_with_z(
        lambda g, z, m: jnp.zeros((), Z_DTYPE) if z is None else g.astype(Z_DTYPE) * z,
        key,
        tree,
        as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution),
    )
    return sum(jnp.sum(x) for x in jax.tree.leaves(products))


def restore_outside_mask(new_params: PyTree, params: PyTree, mask: PyTree | None) -> PyTree:
    """``new_params`` inside the mask, ``params`` (bit for bit) outside it."""
    if mask is None:
        return new_params
    new_leaves, treedef = jax.tree.flatten(new_params)
    old_leaves = jax.tree.leaves(params)
    out = []
    for new, old, m in zip(new_leaves, old_leaves, mask_leaves(mask, params)):
        if m is True:
            out.append(new)
        elif m is False:
            out.append(old)
        else:
            out.append(jnp.where(m, new, old))
    return jax.tree.unflatten(treedef, out)


def zo_update(
    tx: optax.GradientTransformation,
    *,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
) -> Callable[[PyTree, Any, Array, Array], tuple[PyTree, Any]]:
    """The update half of a MeZO step: ``(params, opt_state, g, key) -> (params, opt_state)``.

    The estimate :func:`zo_gradient` (z of ``perturbation``, a :class:`training.Perturbation`,
    or of the loose ``mask``, ``chunk_size``, ``distribution``) goes through ``tx`` and
    ``optax.apply_updates``; entries outside the mask are then restored bit for bit (weight
    decay or ``-0.0 + 0.0`` would otherwise touch them). :func:`mezo_step` and :func:`replay`
    share this function, which is what makes a replay bit-exact. Not jitted.
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)

    def update(params, opt_state, projected_grad, key):
        grads = zo_gradient(projected_grad, key, params, perturbation=pz)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return restore_outside_mask(new_params, params, pz.mask), opt_state

    return update


def mezo_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    eps: float,
    num_samples: int = 1,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
    return_projected_grad: bool = False,
    in_place: bool = False,
    jit: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable[..., tuple]:
    """One MeZO training step: estimate, Optax update, in place.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      tx: any Optax transformation (``optax.sgd``, schedules, ``optax.add_decayed_weights`` with
        a mask, ``optax.clip_by_global_norm``, ``optax.adam``...); it sees ``g·z`` as the
        gradient. See :func:`training.zo_sgd` and :func:`training.zo_adam`.
      eps: perturbation scale ε.
      num_samples: perturbations averaged per step (n-SPSA).
      perturbation: the definition of z, a :class:`training.Perturbation` (distribution, chunk
        size, trainable mask: only masked entries are perturbed and updated, the others never
        change, not even by a bit). Keep it for :func:`replay`.
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.
      return_projected_grad: also return ``g``, the one number (``num_samples`` numbers) per
        step that, with the key, reproduces the update (log it for :func:`replay`).
      in_place: opt-in memory mode (``num_samples=1`` only): perturb the donated parameters in
        place, ``θ+εz``, then ``-2εz``, then ``+εz`` back (fused into the update), as the
        PyTorch MeZO does, instead of computing both losses from the unchanged θ. It saves the
        perturbed copy of the largest leaf (the step needs no more memory than the forward
        pass), but the round trip is inexact: each step adds three roundings, each at most half
        an ulp of ``|θ| + 2ε|z|``, on top of the update (a random walk that does not cancel;
        ``L(θ-εz)`` is also evaluated at ``θ+εz-2εz``, one rounding off). Deterministic:
        :func:`replay` with ``in_place_eps=eps`` reproduces it bit for bit. Avoid it for
        parameters kept in bfloat16 or lower precision (docs/background.md, section 4).
      jit: return ``jax.jit(step, donate_argnums=(0, 1))`` (default), else the plain function.
      compiler_options: XLA options for that jit; default :func:`lean_compiler_options`
        (memory-optimised scheduling on CPU). ``{}`` keeps XLA's defaults.

    Returns:
      ``step(params, opt_state, batch, key) -> (params, opt_state, loss)`` (``+ (g,)`` with
      ``return_projected_grad``). ``key`` should be ``training.step_key(root_key, t)``. The
      ``params`` and ``opt_state`` passed in are donated: do not use them after the call.

    Example::

        tx = training.zo_sgd(1e-6, weight_decay=0.0)
        step = training.mezo_step(loss_fn, tx, eps=1e-3, return_projected_grad=True)
        opt_state = tx.init(params)
        for t, batch in enumerate(batches):
            params, opt_state, loss, g = step(params, opt_state, batch, step_key(root, t))
            log.append((t, g))
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    grad_fn = mezo_value_and_grad(loss_fn, eps=eps, num_samples=num_samples, perturbation=pz)
    update = zo_update(tx, perturbation=pz)
    if in_place and num_samples != 1:
        raise ValueError(f"in_place needs num_samples=1, got {num_samples}")

    def step(params, opt_state, batch, key):
        if in_place:
            params, losses = _in_place_passes(params, key, eps, pz, loss_fn, batch)
            loss, g = jnp.mean(losses), (losses[0] - losses[1]) / (2 * eps)
        else:
            loss, g = grad_fn(params, batch, key)
        # g goes through the barrier too: the update then sees an opaque g, as replay does, so
        # XLA cannot fold the estimate's constants into the update's (replay is bit-exact).
        key, g_opaque = jax.lax.optimization_barrier((key, g))
        if in_place:
            params = perturb(params, key, eps, perturbation=pz)  # θ-εz back to ≈θ, fused in
        params, opt_state = update(params, opt_state, g_opaque, key)
        if return_projected_grad:
            return params, opt_state, loss, g
        return params, opt_state, loss

    return _jit(step, compiler_options, donate_argnums=(0, 1)) if jit else step


def _in_place_passes(params, key, eps, pz, loss_fn=None, batch=None):
    """``θ+εz`` then ``-2εz``, written over ``params``; the loss after each (``loss_fn`` given).

    A two-iteration loop carries the parameters, so XLA writes each perturbation into the
    (donated) parameter buffers instead of a copy. :func:`replay` runs the same loop without
    ``loss_fn``, so the roundings, and the parameters, are the same bit for bit.
    """

    def body(i, carry):
        params, losses = carry
        # The barrier orders this pass after the previous loss (which read the params).
        key_i, _ = jax.lax.optimization_barrier((key, losses))
        scale = jnp.where(i == 0, np.float32(eps), np.float32(-2 * eps))
        params = perturb(params, key_i, scale, perturbation=pz)
        if loss_fn is not None:
            losses = losses.at[i].set(jnp.asarray(loss_fn(params, batch), Z_DTYPE))
        return params, losses

    return jax.lax.fori_loop(0, 2, body, (params, jnp.zeros((2,), Z_DTYPE)))


def _log_entries(log: Iterable[Any] | np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Normalises a log to ``[(step, g), ...]``: pairs, or an array of rows ``[step, g...]``."""
    if isinstance(log, (np.ndarray, jax.Array)):
        rows = np.asarray(log)
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"an array log must have shape [steps, 1 + n], got {rows.shape}")
        entries = []
        for row in rows:
            g = row[1:].astype(np.float32) if rows.shape[1] > 2 else np.float32(row[1])
            entries.append((int(row[0]), g))
        return entries
    return [(int(step), np.asarray(g, np.float32)) for step, g in log]


def replay(
    params0: PyTree,
    log: Sequence[tuple[int, Any]] | np.ndarray,
    tx: optax.GradientTransformation,
    *,
    root_key: Array,
    perturbation: Perturbation | None = None,
    mask: PyTree | None = None,
    chunk_size: int | None = None,
    distribution: str | None = None,
    opt_state: Any = None,
    in_place_eps: float | None = None,
    compiler_options: Mapping[str, Any] | None = None,
) -> tuple[PyTree, Any]:
    """Rebuilds trained parameters from the initial ones and the log of projected gradients.

    No forward pass is run: step ``t`` regenerates its z from ``fold_in(root_key, t)`` and
    applies ``g_t·z`` through ``tx`` exactly as :func:`mezo_step` did, so the result matches the
    trained parameters bit for bit (same ``tx``, :class:`training.Perturbation` and backend).

    Args:
      params0: the parameters before the first logged step (not modified).
      log: ``[(step, g), ...]`` in training order (``g`` a scalar, or a vector with
        ``num_samples > 1``), or an array of rows ``[step, g...]``. float32 g values must be
        kept exactly (float64 storage is exact).
      tx: the Optax transformation used in training.
      root_key: the key the step keys were folded from.
      perturbation: the :class:`training.Perturbation` of the training run.
      mask, chunk_size, distribution: instead of ``perturbation``, its fields loose.
      opt_state: optimizer state before the first logged step (default ``tx.init(params0)``).
      in_place_eps: for a run trained with ``mezo_step(..., in_place=True)``, its ``eps``: each
        step then repeats the in-place ``+εz, -2εz, +εz`` round trip before the update.
      compiler_options: as for :func:`mezo_step`.

    Returns:
      ``(params, opt_state)`` after the last logged step.
    """
    pz = as_perturbation(perturbation, mask=mask, chunk_size=chunk_size, distribution=distribution)
    zo = zo_update(tx, perturbation=pz)
    if in_place_eps is not None:
        _check_eps(in_place_eps)

        def zo(params, opt_state, projected_grad, key, _update=zo):
            params, _ = _in_place_passes(params, key, in_place_eps, pz)
            key, projected_grad = jax.lax.optimization_barrier((key, projected_grad))
            params = perturb(params, key, in_place_eps, perturbation=pz)
            return _update(params, opt_state, projected_grad, key)

    update = _jit(zo, compiler_options, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.array, params0)  # copies: the update donates its inputs
    opt_state = tx.init(params) if opt_state is None else jax.tree.map(jnp.array, opt_state)
    for step, g in _log_entries(log):
        params, opt_state = update(params, opt_state, jnp.asarray(g), step_key(root_key, step))
    return params, opt_state


def fit(
    step: Callable[..., tuple],
    params: PyTree,
    opt_state: Any,
    batches: Iterable[Any],
    *,
    root_key: Array,
    start_step: int = 0,
    on_step: Callable[[int, PyTree, float], None] | None = None,
) -> tuple[PyTree, Any, list[tuple[int, np.ndarray]], list[float]]:
    """Runs a :func:`mezo_step` (built with ``return_projected_grad=True``) over ``batches``.

    The training loop of ``ecf8 finetune`` and ``bench.finetune``.

    Args:
      step: the step function.
      params: initial parameters (donated to the first step).
      opt_state: initial optimizer state (donated).
      batches: one batch per step (any iterable: a generator draws them as they are needed).
      root_key: step ``t`` uses ``fold_in(root_key, t)``.
      start_step: the number of the first step (to resume a run).
      on_step: called after step ``t`` as ``on_step(t, params, loss)`` (progress, evaluation);
        ``params`` are donated to the next step, so use them within the call only.

    Returns:
      ``(params, opt_state, log, losses)`` with ``log = [(t, g_t), ...]`` (numpy float32 g)
      ready for :func:`replay`, and the per-step losses as Python floats.
    """
    log, losses = [], []
    for t, batch in enumerate(batches, start=start_step):
        out = step(params, opt_state, batch, step_key(root_key, t))
        if len(out) != 4:
            raise ValueError("fit needs a step built with return_projected_grad=True")
        params, opt_state, loss, g = out
        log.append((t, np.asarray(g)))
        losses.append(float(loss))
        if on_step is not None:
            on_step(t, params, losses[-1])
    return params, opt_state, log, losses


__all__ = [
    "CPU_LEAN_COMPILER_OPTIONS",
    "fit",
    "lean_compiler_options",
    "mezo_step",
    "mezo_value_and_grad",
    "replay",
    "restore_outside_mask",
    "step_key",
    "zo_directional",
    "zo_gradient",
    "zo_update",
]
