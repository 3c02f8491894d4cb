"""Tests of ToM-sensitive parameter masks and mean replacement (training/tom/fisher.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.tom import fisher


def linear_loss(params, x):
    """ℓ = x · W[:, 5]: its gradient is x in column 5 of W, zero elsewhere."""
    return x @ params["w"][:, 5]


def planted_examples(center, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(center + 0.1 * rng.standard_normal((n, 8)), jnp.float32)


def test_diagonal_fisher_is_the_mean_squared_per_example_gradient():
    params = {"w": jnp.zeros((8, 8)), "b": jnp.zeros(3)}
    xs = planted_examples(np.zeros(8))
    f1 = fisher.diagonal_fisher(linear_loss, params, xs, chunk=1)
    f4 = fisher.diagonal_fisher(linear_loss, params, xs, chunk=4)
    want = np.zeros((8, 8), np.float32)
    want[:, 5] = (np.asarray(xs) ** 2).mean(0)
    np.testing.assert_allclose(f1["w"], want, rtol=1e-6)
    np.testing.assert_allclose(f4["w"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of chunk"):
        fisher.diagonal_fisher(linear_loss, params, xs, chunk=3)


def test_planted_sensitive_weight_is_found_and_a_shared_one_is_excluded():
    params = {"w": jnp.zeros((8, 8)), "norm": jnp.ones(8)}
    tom = np.zeros(8)
    tom[3], tom[1] = 5.0, 3.0  # ToM prompts load W[3, 5] most, W[1, 5] next
    gen = np.zeros(8)
    gen[1], gen[7] = 4.0, 2.0  # generic text loads W[1, 5] and W[7, 5]
    f_tom = fisher.diagonal_fisher(linear_loss, params, planted_examples(tom))
    f_gen = fisher.diagonal_fisher(linear_loss, params, planted_examples(gen, seed=1))
    mask = fisher.sensitive_mask(f_tom, f_gen, fraction=2 / 64)  # k = 2 per matrix
    assert list(zip(*np.nonzero(mask["w"]))) == [(3, 5)]  # W[1, 5] is generic-sensitive too
    assert not mask["norm"].any()  # vectors are never masked
    assert fisher.mask_size(fisher.sensitive_mask(f_tom, f_gen, 0.0)) == 0


def test_masks_are_per_matrix_over_a_stacked_leading_axis():
    rng = np.random.default_rng(0)
    f = {"w": rng.random((3, 10, 20))}
    zero = {"w": np.zeros((3, 10, 20))}
    zero["w"][:, 0, :2] = 1.0  # generic top-2 of each matrix: row 0, columns 0-1
    mask = fisher.sensitive_mask(f, zero, fraction=0.01)  # k = 2 of 200 per matrix
    for m, fm, g in zip(mask["w"], f["w"], zero["w"]):
        top = set(np.argsort(-fm.ravel(), kind="stable")[:2])
        assert set(np.flatnonzero(m)) == top - set(np.argsort(-g.ravel(), kind="stable")[:2])
    rand = fisher.random_like(mask, seed=0)
    np.testing.assert_array_equal(rand["w"].sum((1, 2)), mask["w"].sum((1, 2)))
    assert not (rand["w"] == mask["w"]).all()


def test_mean_replacement_is_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 16, 12)).astype(np.float32)
    v = rng.standard_normal(5).astype(np.float32)
    mask = {"w": rng.random(w.shape) < 0.1, "v": np.zeros(5, bool)}
    mask["w"][1] = False  # a matrix without masked entries stays as it is
    out = fisher.mean_replace({"w": w, "v": v}, mask)
    m = mask["w"]
    # unmasked entries are the same bits
    np.testing.assert_array_equal(out["w"].view(np.uint32)[~m], w.view(np.uint32)[~m])
    mu = np.float32(w[0][~m[0]].astype(np.float64).mean())
    np.testing.assert_array_equal(
        out["w"][0][m[0]].view(np.uint32), np.full(m[0].sum(), mu).view(np.uint32)
    )
    np.testing.assert_array_equal(out["v"].view(np.uint32), v.view(np.uint32))
    # the replaced matrix's mean is the old unmasked mean
    assert np.isclose(out["w"][0].astype(np.float64).mean(), mu, atol=1e-6)


def test_fraction_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="fraction"):
        fisher.sensitive_mask({"w": np.ones((2, 2))}, {"w": np.ones((2, 2))}, 1.5)


def test_fisher_accepts_jax_pytrees_of_stacked_params():
    params = {"w": jnp.ones((2, 4, 4))}
    xs = jnp.ones((2, 4))

    def loss(p, x):
        return jnp.sum(p["w"] @ x)

    f = fisher.diagonal_fisher(loss, params, xs, chunk=2)
    assert jax.tree.map(jnp.shape, f) == {"w": (2, 4, 4)}
