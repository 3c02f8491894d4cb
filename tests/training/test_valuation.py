"""Tests of LinFiK data valuation (training/valuation.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tests.tiny_configs import TINY_LLAMA
from training import valuation

SEQ, POOL = 12, 24


def tiny_llama_task():
    """A random tiny Llama, an LM loss, a pool of token rows and a target batch."""
    config = LlamaConfig(**TINY_LLAMA, head_dim=16)
    model = LlamaForCausalLM(config, nnx.Rngs(0), fp8=False)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, tokens):
        logits = nnx.merge(graphdef, p, rest)(tokens)[0][:, :-1].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    rng = np.random.default_rng(0)
    # A few repeated patterns, so samples differ in how much they help the target.
    patterns = rng.integers(1, config.vocab_size, (4, SEQ))
    pool = patterns[rng.integers(0, 4, POOL)].copy()
    noise = rng.random(pool.shape) < rng.random((POOL, 1))  # each row its own noise level
    pool[noise] = rng.integers(1, config.vocab_size, noise.sum())
    target = patterns[[0, 0, 1, 2]]
    return loss_fn, params, jnp.asarray(pool, jnp.int32), jnp.asarray(target, jnp.int32)


@pytest.fixture(scope="module")
def llama_values():
    loss_fn, params, pool, target = tiny_llama_task()
    values = valuation.linfik(loss_fn, params, pool, target, chunk=5)  # the last chunk wraps
    return loss_fn, params, pool, target, values


def test_linfik_ranks_samples_like_the_actual_sgd_step_on_a_tiny_llama(llama_values):
    loss_fn, params, pool, target, values = llama_values
    scale = 1.0 / np.abs(values).max()
    lrs = [1e-3 * scale, 3.0 * scale]
    deltas = valuation.sgd_delta(loss_fn, params, pool, target, lrs)
    small = valuation.spearman(-values, deltas[:, 0])
    assert small >= 0.95, small
    # At small η the first-order prediction -η·v is also right in size, not only in rank.
    np.testing.assert_allclose(deltas[:, 0], -lrs[0] * values, rtol=0.1, atol=2e-6)
    # At a large η the linearisation is off (the ground truth is not a rescaled copy of v).
    assert np.abs(deltas[:, 1] + lrs[1] * values).max() > 0.1 * np.abs(lrs[1] * values).max()


def test_linfik_equals_the_inner_product_of_per_sample_gradients(llama_values):
    loss_fn, params, pool, target, values = llama_values
    grad = jax.jit(jax.grad(loss_fn))
    g_t = grad(params, target)
    for i in (0, 7, POOL - 1):
        g_i = grad(params, pool[i : i + 1])
        dot = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g_t), jax.tree.leaves(g_i)))
        np.testing.assert_allclose(values[i], dot, rtol=1e-3, atol=1e-7)


def quadratic_task(d=6, n=5, seed=0):
    """Least squares: ℓ(z; θ) = ½(a_z·θ - y_z)², exactly quadratic in θ."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=d), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}

    def loss_fn(p, batch):
        a, y = batch
        pred = a @ p["w"] + p["b"].sum()
        return 0.5 * jnp.mean((pred - y) ** 2)

    pool = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(rng.normal(size=n)))
    target = (jnp.asarray(rng.normal(size=(8, d)), jnp.float32), jnp.asarray(rng.normal(size=8)))
    return loss_fn, params, pool, target


@pytest.mark.parametrize("distribution", ["normal", "rademacher"])
def test_zo_linfik_is_unbiased_on_a_quadratic(distribution):
    loss_fn, params, pool, target = quadratic_task()
    exact = valuation.linfik(loss_fn, params, pool, target, chunk=2)
    k = 3000
    est = valuation.linfik_zo(
        loss_fn,
        params,
        pool,
        target,
        key=jax.random.key(1),
        num_samples=k,
        eps=1e-2,
        chunk=5,
        distribution=distribution,
    )
    products = est.pool.astype(np.float64) * est.target[None].astype(np.float64)
    se = products.std(axis=1) / np.sqrt(k)
    z = (est.values - exact) / se
    assert np.abs(z).max() < 4.5, (est.values, exact, se)
    # Not only consistent with zero bias: close, and a factor-2 or sign error would be far off.
    assert se.max() < 0.1 * np.abs(exact).max(), (se, exact)


def test_zo_linfik_with_an_exact_target_gradient_is_gradip_and_unbiased():
    loss_fn, params, pool, target = quadratic_task(seed=1)
    exact = valuation.linfik(loss_fn, params, pool, target)
    g_t = valuation.target_gradient(loss_fn, params, target)
    est = valuation.linfik_zo(
        loss_fn,
        params,
        pool,
        target,
        key=jax.random.key(2),
        num_samples=3000,
        eps=1e-2,
        target_grad=g_t,
    )
    products = est.pool.astype(np.float64) * est.target[None]
    se = products.std(axis=1) / np.sqrt(3000)
    assert np.abs((est.values - exact) / se).max() < 4.5
    # The target's scalars are ⟨∇L_T, z_k⟩, what the two-point estimate of a quadratic measures.
    two_point = valuation.linfik_zo(
        loss_fn, params, pool, target, key=jax.random.key(2), num_samples=4, eps=1e-2
    )
    np.testing.assert_allclose(two_point.target, est.target[:4], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_masked_linfik_counts_only_the_trainable_subspace(mode):
    loss_fn, params, pool, target = quadratic_task()
    mask = {"w": np.arange(6) < 3, "b": False}
    values = valuation.linfik(loss_fn, params, pool, target, mask=mask, mode=mode, chunk=2)
    g_t = jax.grad(loss_fn)(params, target)
    for i in range(2):
        g_i = jax.grad(loss_fn)(params, (pool[0][i : i + 1], pool[1][i : i + 1]))
        expect = float(jnp.vdot(g_t["w"][:3], g_i["w"][:3]))
        np.testing.assert_allclose(values[i], expect, rtol=1e-5)


def test_spearman_and_top_k_overlap():
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert valuation.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert valuation.spearman(a, -a) == pytest.approx(-1.0)
    assert valuation.spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == (
        pytest.approx(np.sqrt(3) / 2)
    )
    assert valuation.top_k_overlap(a, np.array([0.0, 1.0, 0.2, 2.0]), 2) == 1.0
    assert valuation.top_k_overlap(a, np.array([1.0, 0.0, 2.0, 0.1]), 2) == 0.0
    with pytest.raises(ValueError, match="common leading axis"):
        valuation.pool_size((np.zeros(3), np.zeros(4)))
