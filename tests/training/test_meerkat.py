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
