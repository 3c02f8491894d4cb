"""Tests of the mask builders (training/masks.py) and the ZO optimizer chains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import training


def params_tree():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(50, 40)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(40,)), jnp.float32),
        },
        "norm": {"scale": jnp.ones((40,))},
    }


def total(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def test_default_density_is_one_in_a_thousand_and_keeps_at_least_one():
    assert training.DEFAULT_DENSITY == 1e-3
    mask = training.magnitude_mask(params_tree())
    assert training.mask_count(mask, params_tree()) == 2  # round(1e-3 * 2080)
    tiny = training.magnitude_mask({"a": jnp.ones((10,))})
    assert training.mask_count(tiny, {"a": jnp.ones((10,))}) == 1
    with pytest.raises(ValueError, match="density"):
        training.top_k_mask({"a": jnp.ones(3)}, density=0.0)


def test_magnitude_mask_keeps_exactly_the_largest_entries_over_all_leaves():
    params = params_tree()
    mask = training.magnitude_mask(params, density=0.05)
    k = round(0.05 * total(params))
    assert training.mask_count(mask, params) == k
    flat_abs = np.concatenate([np.abs(np.ravel(x)) for x in jax.tree.leaves(params)])
    flat_mask = np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)])
    assert flat_abs[flat_mask].min() >= flat_abs[~flat_mask].max()


def test_random_mask_is_seeded_and_has_the_requested_size():
    params = params_tree()
    a = training.random_mask(jax.random.key(1), params, density=0.1)
    b = training.random_mask(jax.random.key(1), params, density=0.1)
    c = training.random_mask(jax.random.key(2), params, density=0.1)
    assert training.mask_count(a, params) == round(0.1 * total(params))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_gradient_mask_picks_the_entries_with_the_largest_mean_squared_gradient():
    # L = Σ c ⊙ θ per batch: the gradient is c, so the mask must be the largest |c|.
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(30,)), jnp.float32)
    params = {"theta": jnp.zeros((30,))}
    batches = [weights, 2 * weights, -weights]
    mask = training.gradient_mask(lambda p, c: jnp.sum(c * p["theta"]), params, batches, 0.1)
    chosen = np.flatnonzero(np.asarray(mask["theta"]))
    np.testing.assert_array_equal(np.sort(chosen), np.sort(np.argsort(-np.abs(weights))[:3]))
    sq = training.mean_squared_gradient(lambda p, c: jnp.sum(c * p["theta"]), params, batches)
    np.testing.assert_allclose(sq["theta"], weights**2 * (1 + 4 + 1) / 3, rtol=1e-6)


def test_decay_mask_excludes_biases_and_norms():
    assert training.decay_mask(params_tree()) == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False},
    }


def test_zo_sgd_is_mezo_update_with_decay_only_on_matrices():
    params = params_tree()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = training.zo_sgd(0.1, weight_decay=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    # θ ← θ - η (g + λ θ) for the kernel, θ - η g elsewhere.
    np.testing.assert_allclose(
        updates["dense"]["kernel"], -0.1 * (1 + 0.5 * params["dense"]["kernel"]), rtol=1e-6
    )
    np.testing.assert_allclose(updates["dense"]["bias"], -0.1 * np.ones(40), rtol=1e-6)


def test_zo_adam_is_optax_adam_on_the_estimate():
    params = params_tree()
    grads = jax.tree.map(lambda x: 0.3 * x, params)
    ours, theirs = training.zo_adam(1e-2), optax.adam(1e-2)
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = theirs.update(grads, theirs.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
    clipped = training.zo_adam(1e-2, max_norm=1e-3)
    u3, _ = clipped.update(grads, clipped.init(params), params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u3))
