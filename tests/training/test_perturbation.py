"""Tests of training.Perturbation (z's definition as one object), training.MaskedEntries and
training.choose_learning_rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import training
from training import meerkat


def bits(tree):
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def assert_bitwise_equal(a, b):
    for x, y in zip(bits(a), bits(b), strict=True):
        np.testing.assert_array_equal(x, y)


def problem():
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(20, 12)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(12,)), jnp.float32),
    }

    def loss_fn(p, batch):
        return jnp.mean((batch @ p["w"] + p["b"]) ** 2)

    data = jnp.asarray(rng.normal(size=(8, 20)), jnp.float32)
    mask = {"w": jnp.asarray(rng.random((20, 12)) < 0.2), "b": False}
    return params, loss_fn, data, mask


def test_a_perturbation_draws_the_z_of_its_loose_fields_bit_for_bit():
    params, _, _, mask = problem()
    key = jax.random.key(3)
    for distribution in training.DISTRIBUTIONS:
        whole = training.Perturbation(distribution, 64, mask)
        loose = dict(distribution=distribution, chunk_size=64, mask=mask)
        assert_bitwise_equal(
            training.perturbation(key, params, perturbation=whole),
            training.perturbation(key, params, **loose),
        )
        assert_bitwise_equal(
            training.perturb(params, key, 0.1, perturbation=whole),
            training.perturb(params, key, 0.1, **loose),
        )
    default = training.perturbation(key, params, perturbation=training.Perturbation())
    assert_bitwise_equal(default, training.perturbation(key, params))


def test_step_and_replay_given_one_perturbation_agree_bit_for_bit_with_the_loose_keywords():
    params0, loss_fn, data, mask = problem()
    tx, root = optax.sgd(1e-2), jax.random.key(1)
    z = training.Perturbation("rademacher", 64, mask)
    runs = []
    for kw in (dict(perturbation=z), dict(distribution="rademacher", chunk_size=64, mask=mask)):
        step = training.mezo_step(loss_fn, tx, eps=1e-3, return_projected_grad=True, **kw)
        p0 = jax.tree.map(jnp.array, params0)
        params, _, log, _ = training.fit(step, p0, tx.init(p0), [data] * 4, root_key=root)
        runs.append((params, log))
    assert_bitwise_equal(runs[0][0], runs[1][0])
    replayed, _ = training.replay(params0, runs[0][1], tx, root_key=root, perturbation=z)
    assert_bitwise_equal(replayed, runs[0][0])
    np.testing.assert_array_equal(np.asarray(replayed["b"]), np.asarray(params0["b"]))


def test_meerkat_server_replay_takes_the_perturbation_whole():
    params, loss_fn, data, mask = problem()
    batches = jnp.broadcast_to(data, (2, 2, 3, *data.shape))  # [rounds, clients, steps, ...]
    kw = dict(eps=1e-3, learning_rate=1e-2, root_key=jax.random.key(2))
    z = training.Perturbation("rademacher", mask=mask)
    whole = meerkat.federated_mezo(loss_fn, params, batches, perturbation=z, **kw)
    loose = meerkat.federated_mezo(
        loss_fn, params, batches, mask=mask, distribution="rademacher", **kw
    )
    assert_bitwise_equal(whole.params, loose.params)
    assert whole.dense_bytes == loose.dense_bytes > 0


def test_both_forms_at_once_or_bad_fields_are_refused():
    params, loss_fn, _, mask = problem()
    with pytest.raises(TypeError, match="not both"):
        training.mezo_step(
            loss_fn, optax.sgd(1.0), eps=1e-3, perturbation=training.Perturbation(), mask=mask
        )
    with pytest.raises(TypeError, match="Perturbation"):
        training.perturbation(jax.random.key(0), params, perturbation="normal")
    with pytest.raises(ValueError, match="distribution"):
        training.Perturbation("uniform")
    with pytest.raises(ValueError, match="chunk_size"):
        training.Perturbation(chunk_size=0)
    z = training.Perturbation(mask=mask)
    with pytest.raises(AttributeError):
        z.distribution = "rademacher"  # frozen
    assert "mask=<2 leaves>" in repr(z)


def test_masked_entries_train_only_the_selected_entries():
    params, loss_fn, data, mask = problem()
    entries = training.MaskedEntries.from_mask(mask, params)  # a Python False leaf: frozen
    assert entries.count == training.mask_count(mask, params) > 0
    assert len(entries.index[jax.tree.leaves(params).index(params["b"])]) == 0
    values = entries.values(params)
    assert sum(v.size for v in values.values()) == entries.count
    assert_bitwise_equal(entries.merge(params, values), params)
    moved = entries.merge(params, jax.tree.map(lambda v: v + 1.0, values))
    np.testing.assert_array_equal(np.asarray(moved["w"] != params["w"]), np.asarray(mask["w"]))
    assert_bitwise_equal(moved["b"], params["b"])
    loss = entries.loss(loss_fn, params)
    assert float(loss(values, data)) == float(loss_fn(params, data))
    whole = training.MaskedEntries.from_mask({"w": True, "b": False}, params)
    assert whole.count == params["w"].size


def test_choose_learning_rate_keeps_the_best_score_and_the_first_of_ties():
    trained = []

    def train(lr):
        trained.append(lr)
        return {"lr": lr}

    scores = {0.1: 0.5, 0.3: 0.9, 1.0: 0.9, 3.0: float("nan")}
    seen = []
    choice = training.choose_learning_rate(
        train,
        list(scores),
        lambda r: scores[r["lr"]],
        on_trial=lambda lr, s, r: seen.append(lr),
    )
    assert trained == seen == list(scores)
    assert (choice.learning_rate, choice.score, choice.result) == (0.3, 0.9, {"lr": 0.3})
    assert [lr for lr, _ in choice.scores] == list(scores)
    first_nan = training.choose_learning_rate(train, [3.0, 0.1], lambda r: scores[r["lr"]])
    assert first_nan.learning_rate == 0.1
    with pytest.raises(ValueError):
        training.choose_learning_rate(train, [], lambda r: 0.0)
