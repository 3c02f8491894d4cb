"""Tests of the fine-tuning quality benchmark (bench/finetune.py) on its --tiny random model."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import training
from bench import finetune
from training.tasks import polarity


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``python -m bench.finetune --tiny`` (zero-shot, sparse MeZO, Meerkat), run once."""
    folder = tmp_path_factory.mktemp("finetune")
    argv = ["--tiny", "--json", str(folder / "f.json"), "--markdown", str(folder / "f.md"),
            "--only", "zero-shot", "mezo-sparse", "fed-sparse", "--eval-every", "1",
            "--eval-steps", "2"]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = finetune.main(argv)
    doc = json.loads((folder / "f.json").read_text())
    return rows, doc, (folder / "f.md").read_text(), finetune.parse_args(argv)


def test_tables_have_the_rows_asked_for(tiny_run):
    rows, doc, md, args = tiny_run
    assert [r["method"] for r in rows["quality"]] == ["zero-shot", "MeZO sparse 0.1 %"]
    assert [(r["method"], r["split"][:3]) for r in rows["federated"]] == [
        ("Meerkat (sparse)", "IID"),
        ("Meerkat (sparse)", "non"),
    ]
    assert [r["table"] for r in doc["rows"]] == ["quality"] * 2 + ["federated"] * 2
    assert doc["meta"]["benchmark"] == "finetune" and doc["meta"]["tiny"] is True
    for r in rows["quality"] + rows["federated"]:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert r["method"] in md
    for r in rows["quality"]:
        assert 0.0 <= r["dev_acc"] <= 1.0
    sparse = rows["quality"][1]
    assert sparse["steps"] == args.steps and sparse["wall_s"] > 0
    # --eval-steps 2: dev accuracy along the run; the last point is the final parameters'
    assert [c["step"] for c in sparse["dev_curve"]] == list(range(2, args.steps + 1, 2))
    assert sparse["dev_curve"][-1]["dev_acc"] == sparse["dev_acc"]
    assert len(sparse["losses"]) == args.steps
    assert md.count("\n|") >= 2 + 2 + 2 + 2  # two headers, two rules, four rows


def test_bytes_are_one_float32_per_local_step_relayed_to_every_client(tiny_run):
    rows, _, _, args = tiny_run
    k, r, t = args.clients, args.rounds, args.local_steps
    for row in rows["federated"]:
        assert (row["clients"], row["rounds"], row["local_steps"]) == (k, r, t)
        assert row["uplink_bytes"] == 4 * t * k * r
        assert row["downlink_bytes"] == 4 * t * k * k * r
        assert row["comm_bytes"] == row["uplink_bytes"] + row["downlink_bytes"]
        assert row["dense_bytes"] == 2 * 4 * row["trainable"] * k * r
        assert sum(row["client_sizes"]) == args.train_words
        # --eval-every 1: accuracy after every round, against the bytes sent so far
        per_round = row["comm_bytes"] // r
        assert [(c["round"], c["comm_bytes"]) for c in row["curve"]] == [
            (i + 1, per_round * (i + 1)) for i in range(r)
        ]
        assert row["curve"][-1]["test_acc"] == row["test_acc"]


@pytest.fixture(scope="module")
def tiny_setup():
    args = finetune.parse_args(["--tiny"])
    return finetune.setup(args), args


def test_last_logits_match_the_full_forward(tiny_setup):
    s, _ = tiny_setup
    from flax import nnx

    tokens, last, _ = finetune.take(s.data["dev"], np.arange(6))
    model = nnx.merge(s.graphdef, s.params, s.rest)
    full = model(tokens)[0][jnp.arange(6), last]
    np.testing.assert_allclose(
        np.asarray(finetune.last_logits(model, tokens, last)), np.asarray(full), atol=1e-5
    )
    assert s.label_ids == polarity.label_token_ids(finetune.toy_encode(512))


def test_sparse_delta_changes_the_masked_entries_only(tiny_setup):
    s, _ = tiny_setup
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: rng.random(p.shape) < 0.01, s.params)
    sparse = finetune.MaskedEntries.from_mask(mask)
    assert sparse.count == training.mask_count(mask, s.params) > 0
    values = jax.jit(sparse.values)(s.params)
    assert sum(v.size for v in values.values()) == sparse.count
    merge = jax.jit(sparse.merge)
    same = merge(s.params, values)
    assert all(
        jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(s.params))
    )
    moved = merge(s.params, jax.tree.map(lambda v: v + 1.0, values))
    for a, b, m in zip(jax.tree.leaves(moved), jax.tree.leaves(s.params), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(np.asarray(a != b), np.asarray(m))


def test_mezo_runs_are_deterministic(tiny_setup):
    s, args = tiny_setup
    loss_fn, _ = finetune.task_fns(s)
    kw = dict(steps=3, batch=4, lr=1e-3, eps=1e-3, seed=1)
    p1, _, l1 = finetune.run_mezo(loss_fn, s.params, s.data["train"], **kw)
    p2, _, l2 = finetune.run_mezo(loss_fn, s.params, s.data["train"], **kw)
    assert l1 == l2
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    assert not all(
        jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(s.params))
    )


def test_client_splits_partition_the_training_words():
    labels = np.array([0, 1] * 20)
    for split in ("iid", "dirichlet"):
        parts = finetune.client_splits(labels, 4, split, 0.3, 2)
        assert sorted(np.concatenate(parts).tolist()) == list(range(40))
        assert min(len(p) for p in parts) >= 2


def test_zo_scale_measures_a_known_quadratic():
    # L_B(θ) = ½ Σ h (θ - c̄_B)²: ∇L_B = h (θ - c̄_B), H = diag(h), and with Rademacher z
    # zᵀHz = Σ h exactly, so every number zo_scale reports has a closed form here.
    rng = np.random.default_rng(0)
    d, n, batch, batches = 64, 200, 8, 6
    h = jnp.asarray(rng.uniform(0.5, 2.0, d), jnp.float32)
    centers = rng.normal(size=(n, d)).astype(np.float32)
    data = (centers, np.zeros(n, np.int32), np.zeros(n, np.int32))
    theta = {"w": jnp.asarray(rng.normal(size=d) + 3.0, jnp.float32)}

    def loss_fn(p, arrays):
        return 0.5 * jnp.sum(h * (p["w"] - arrays[0].mean(0)) ** 2)

    row = finetune.zo_scale(
        loss_fn, theta, data, batch=batch, batches=batches, probes=3, eps=0.1, lr=1e-3,
        seed=5, distribution="rademacher",
    )  # fmt: skip
    idx = finetune.sample_batches(n, batch, batches + 3, 5)[:batches]
    grads = np.stack([h * (theta["w"] - centers[i].mean(0)) for i in idx]).astype(np.float64)
    gram = grads @ grads.T
    pairs = (gram.sum() - np.trace(gram)) / (batches * (batches - 1))
    np.testing.assert_allclose(row["grad_sq"], pairs, rtol=1e-4)
    np.testing.assert_allclose(row["batch_grad_sq"], np.trace(gram) / batches, rtol=1e-4)
    np.testing.assert_allclose(row["trace_h"], float(h.sum()), rtol=1e-3)
    assert row["trace_h_sem"] < 1e-3 * row["trace_h"]
    # Here g = zᵀ∇L_B exactly (a quadratic) and zᵀHz = Σh for every z, so N = Σh·E[(zᵀ∇L_B)²].
    rows = finetune.sample_batches(n, batch, batches + 3, 5)[batches:]
    probes = [jax.random.fold_in(jax.random.key(6), j) for j in range(3)]
    g2 = [
        float(jnp.vdot(training.perturbation(k, theta, distribution="rademacher")["w"],
                       h * (theta["w"] - centers[i].mean(0))) ** 2)
        for i, k in zip(rows, probes)
    ]  # fmt: skip
    np.testing.assert_allclose(row["noise"], float(h.sum()) * np.mean(g2), rtol=1e-3)
    np.testing.assert_allclose(row["best_lr"], pairs / row["noise"], rtol=1e-6)
    np.testing.assert_allclose(row["best_decrease"], pairs**2 / (2 * row["noise"]), rtol=1e-6)
    np.testing.assert_allclose(row["steps_for_0_05"], 0.05 / row["best_decrease"], rtol=1e-6)
    np.testing.assert_allclose(
        row["decrease_at_lr"], 1e-3 * pairs - 0.5e-6 * row["noise"], rtol=1e-6
    )
