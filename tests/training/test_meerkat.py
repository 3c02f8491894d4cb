"""Tests of the federated Meerkat simulation (training/meerkat.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import training
from training import meerkat

CLASSES, DIM = 4, 8
ROUNDS, CLIENTS, STEPS, BATCH = 3, 4, 5, 16


def make_task(seed=0, n=800):
    """Softmax regression on Gaussian clusters, one per class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, DIM)) * 2
    labels = rng.integers(0, CLASSES, size=n)
    x = (centers[labels] + rng.normal(size=(n, DIM))).astype(np.float32)
    params = {"w": jnp.zeros((DIM, CLASSES)), "b": jnp.zeros((CLASSES,))}

    def loss_fn(p, batch):
        xb, yb = batch
        logits = xb @ p["w"] + p["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    return params, loss_fn, x, labels.astype(np.int32)


def client_batches(x, labels, parts, seed=0):
    """[rounds, clients, steps, batch, ...] arrays sampled from each client's own examples."""
    rng = np.random.default_rng(seed)
    idx = np.stack(
        [
            np.stack([rng.choice(parts[k], (STEPS, BATCH)) for k in range(CLIENTS)])
            for _ in range(ROUNDS)
        ]
    )
    return jnp.asarray(x[idx]), jnp.asarray(labels[idx])


def run(seed=0, alpha=0.1, keep=False):
    params, loss_fn, x, labels = make_task()
    parts = meerkat.dirichlet_split(labels, CLIENTS, alpha, seed=seed)
    data = client_batches(x, labels, parts, seed=seed)
    pretrain = (jnp.asarray(x[:200]), jnp.asarray(labels[:200]))
    mask = training.gradient_mask(loss_fn, params, [pretrain], density=0.3)
    grad_pre = jax.grad(loss_fn)(params, pretrain)
    result = meerkat.federated_mezo(
        loss_fn,
        params,
        data,
        mask=mask,
        eps=1e-3,
        learning_rate=0.5,
        root_key=jax.random.key(seed),
        pretrain_grad=grad_pre,
        keep_client_params=keep,
    )
    return params, mask, result


def test_dirichlet_split_partitions_and_small_alpha_is_non_iid():
    labels = np.repeat(np.arange(CLASSES), 250)
    extreme = meerkat.dirichlet_split(labels, 5, 0.05, seed=1)
    iid = meerkat.dirichlet_split(labels, 5, 1000.0, seed=1)
    for parts in (extreme, iid):
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))

    def top_class_share(parts):
        return np.mean([np.bincount(labels[p], minlength=CLASSES).max() / len(p) for p in parts])

    assert top_class_share(extreme) > 0.7 > 0.35 > top_class_share(iid)
    again = meerkat.dirichlet_split(labels, 5, 0.05, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(extreme, again))


def test_federated_run_with_the_same_seeds_is_deterministic():
    _, _, a = run(seed=3)
    _, _, b = run(seed=3)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))
    for ra, rb in zip(a.rounds, b.rounds):
        np.testing.assert_array_equal(
            ra.projected_grads.view(np.uint32), rb.projected_grads.view(np.uint32)
        )


def test_server_virtual_paths_match_what_the_clients_computed():
    params0, mask, result = run(keep=True)
    first = result.rounds[0]
    paths = meerkat.virtual_paths(
        params0,
        first.projected_grads,
        round_=0,
        mask=mask,
        learning_rate=0.5,
        root_key=jax.random.key(0),
    )
    # Equal up to float32 rounding (a few ulps): XLA compiles the vmapped scans of the client
    # program and of the replay program differently. Single-model replay is bit-exact.
    for x, y in zip(jax.tree.leaves(paths), jax.tree.leaves(first.client_params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_only_scalars_travel_and_entries_outside_the_mask_stay_put():
    params0, mask, result = run()
    assert result.uplink_bytes == 4 * ROUNDS * CLIENTS * STEPS
    assert result.downlink_bytes == result.uplink_bytes * CLIENTS
    assert result.dense_bytes > result.uplink_bytes
    for r in result.rounds:
        assert r.projected_grads.shape == r.losses.shape == (CLIENTS, STEPS)
        assert r.gradip.shape == (CLIENTS,) and np.all(np.isfinite(r.gradip))
    changed = 0
    leaves = zip(jax.tree.leaves(mask), jax.tree.leaves(params0), jax.tree.leaves(result.params))
    for m, old, new in leaves:
        m, old, new = (
            np.asarray(m),
            np.asarray(old).view(np.uint32),
            np.asarray(new).view(np.uint32),
        )
        np.testing.assert_array_equal(old[~m], new[~m])
        changed += int(np.sum(old[m] != new[m]))
    assert changed > 0


def test_federated_training_lowers_the_clients_loss():
    _, _, result = run(alpha=100.0)
    first, last = result.rounds[0].losses[:, 0].mean(), result.rounds[-1].losses[:, -1].mean()
    assert last < first


def test_bad_client_batches_are_rejected():
    params, loss_fn, _, _ = make_task()
    with pytest.raises(ValueError, match="rounds, clients, steps"):
        meerkat.federated_mezo(
            loss_fn,
            params,
            (jnp.zeros((2, 3)),),
            mask=None,
            eps=1e-3,
            learning_rate=0.1,
            root_key=jax.random.key(0),
        )


def test_converged_flags_flat_gradip_trajectories_only():
    rule = meerkat.EarlyStop(window=3, rel_tol=0.1, min_rounds=3)
    flat = [1.0, 0.50, 0.50, 0.501]
    wavy = [1.0, -0.8, 0.9, -1.1]
    history = np.array([flat, wavy]).T  # [rounds, clients]
    np.testing.assert_array_equal(meerkat.converged(history, rule), [True, False])
    np.testing.assert_array_equal(meerkat.converged(history[:2], rule), [False, False])


def _federated(data, early_stop=None, rounds=ROUNDS):
    params, loss_fn, x, labels = make_task()
    pretrain = (jnp.asarray(x[:200]), jnp.asarray(labels[:200]))
    mask = training.gradient_mask(loss_fn, params, [pretrain], density=0.3)
    return meerkat.federated_mezo(
        loss_fn,
        params,
        jax.tree.map(lambda a: a[:rounds], data),
        mask=mask,
        eps=1e-3,
        learning_rate=0.5,
        root_key=jax.random.key(0),
        pretrain_grad=jax.grad(loss_fn)(params, pretrain),
        early_stop=early_stop,
    )


def _data(seed=0):
    _, _, x, labels = make_task()
    parts = meerkat.dirichlet_split(labels, CLIENTS, 0.1, seed=0)
    return client_batches(x, labels, parts, seed=seed)


def test_meerkat_vp_stopped_clients_neither_send_nor_count(monkeypatch):
    # Stop client 0 after the first round, whatever its GradIP says.
    monkeypatch.setattr(meerkat, "converged", lambda history, rule: np.arange(CLIENTS) == 0)
    data = _data()
    result = _federated(data, meerkat.EarlyStop())
    assert [r.active.tolist() for r in result.rounds] == [
        [True] * CLIENTS,
        *[[False] + [True] * (CLIENTS - 1)] * (ROUNDS - 1),
    ]
    full = 4 * STEPS * CLIENTS * ROUNDS
    assert result.uplink_bytes == full - 4 * STEPS * (ROUNDS - 1)
    # Client 0's data after it stopped cannot change the model.
    x, y = data
    other = (x.at[1:, 0].set(x[1:, 0] * -3.0), y)
    again = _federated(other, meerkat.EarlyStop())
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


def test_meerkat_vp_stopping_everyone_ends_the_run_where_it_stood():
    data = _data()
    stop_all = meerkat.EarlyStop(window=1, rel_tol=1e9, min_rounds=2)
    stopped = _federated(data, stop_all)
    assert len(stopped.rounds) == 2
    baseline = _federated(data, None, rounds=2)
    for a, b in zip(jax.tree.leaves(stopped.params), jax.tree.leaves(baseline.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    assert stopped.uplink_bytes == baseline.uplink_bytes


def test_averaging_client_params_matches_the_server_replay():
    params, loss_fn, x, labels = make_task()
    parts = meerkat.dirichlet_split(labels, CLIENTS, 0.3, seed=0)
    data = client_batches(x, labels, parts)
    mask = training.gradient_mask(loss_fn, params, [(jnp.asarray(x), jnp.asarray(labels))], 0.3)
    kw = dict(mask=mask, eps=1e-3, learning_rate=0.5, root_key=jax.random.key(0))
    replayed = meerkat.federated_mezo(loss_fn, params, data, **kw)
    averaged = meerkat.federated_mezo(loss_fn, params, data, server_replay=False, **kw)
    for a, b in zip(jax.tree.leaves(replayed.params), jax.tree.leaves(averaged.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert replayed.uplink_bytes == averaged.uplink_bytes
    assert replayed.downlink_bytes == averaged.downlink_bytes
    np.testing.assert_array_equal(  # same start, same keys: the clients' first round agrees
        replayed.rounds[0].projected_grads, averaged.rounds[0].projected_grads
    )


def test_sequential_clients_take_the_same_steps_as_vmapped_ones():
    params, loss_fn, x, labels = make_task()
    parts = meerkat.dirichlet_split(labels, CLIENTS, 0.3, seed=0)
    data = client_batches(x, labels, parts)
    # Same keys and batches; only XLA's rounding differs between a vmapped and a plain forward
    # (by jax version), and g = ΔL / 2ε magnifies it: a larger ε and a small lr keep the two
    # paths within a tolerance that a different z or batch would break by orders of magnitude.
    kw = dict(mask=None, eps=1e-2, learning_rate=0.05, root_key=jax.random.key(0))
    side_by_side = meerkat.federated_mezo(loss_fn, params, data, **kw)
    one_by_one = meerkat.federated_mezo(loss_fn, params, data, sequential_clients=True, **kw)
    for a, b in zip(side_by_side.rounds, one_by_one.rounds, strict=True):
        np.testing.assert_allclose(a.projected_grads, b.projected_grads, rtol=1e-3, atol=1e-3)
    for a, b in zip(jax.tree.leaves(side_by_side.params), jax.tree.leaves(one_by_one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert side_by_side.uplink_bytes == one_by_one.uplink_bytes


def test_rademacher_clients_replay_with_rademacher_and_on_round_traces_bytes():
    params, loss_fn, x, labels = make_task()
    parts = meerkat.dirichlet_split(labels, CLIENTS, 0.3, seed=0)
    data = client_batches(x, labels, parts)
    mask = training.gradient_mask(loss_fn, params, [(jnp.asarray(x), jnp.asarray(labels))], 0.3)
    kw = dict(mask=mask, learning_rate=0.5, root_key=jax.random.key(0))
    seen = []
    result = meerkat.federated_mezo(
        loss_fn,
        params,
        data,
        eps=1e-3,
        keep_client_params=True,
        distribution="rademacher",
        on_round=lambda r, p, sent: seen.append((r, sent, p)),
        **kw,
    )
    per_round = 4 * STEPS * CLIENTS * (1 + CLIENTS)  # uplink + every client's scalars to all
    assert [(r, sent) for r, sent, _ in seen] == [(r, per_round * (r + 1)) for r in range(ROUNDS)]
    for a, b in zip(jax.tree.leaves(seen[-1][2]), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    first = result.rounds[0]
    for distribution, close in (("rademacher", True), ("normal", False)):
        paths = meerkat.virtual_paths(
            params, first.projected_grads, round_=0, distribution=distribution, **kw
        )
        agree = all(
            np.allclose(a, b, rtol=1e-6, atol=1e-7)
            for a, b in zip(jax.tree.leaves(paths), jax.tree.leaves(first.client_params))
        )
        assert agree == close, distribution
