"""Meerkat over Flower (training/federated): real gRPC on 127.0.0.1, same bits as in-process.

Needs the ``federated`` extra (``flwr``); skipped where it is missing.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flwr")

from training.federated import TaskSpec, apply_round, build_task, wire  # noqa: E402
from training.federated.launch import run_in_threads, run_local  # noqa: E402

STEPS = 4


def bits(tree):
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def assert_same_bits(a, b):
    for x, y in zip(bits(a), bits(b), strict=True):
        np.testing.assert_array_equal(x, y)


def reply(gs, *, client=1, round_=2):
    return wire.encode_reply(np.asarray(gs, np.float32)), {"client": client, "round": round_}


@pytest.mark.parametrize(
    ("tensors", "metrics", "why"),
    [
        (*reply(np.ones(STEPS), round_=1), "round 1, expected 2"),  # stale
        (*reply(np.ones(STEPS), round_=3), "round 3, expected 2"),  # from the future
        (*reply(np.ones(STEPS), client=0), "client 0, expected 1"),  # another client's
        (*reply(np.ones(STEPS + 1)), "expected 4 float32 scalars"),  # wrong length
        (*reply(np.ones(STEPS - 1)), "expected 4 float32 scalars"),
        (*reply([1.0, np.nan, 0.0, 0.0]), "non-finite"),
        (*reply([1.0, np.inf, 0.0, 0.0]), "non-finite"),
        (*reply([1.0, 1e9, 0.0, 0.0]), "exceeds"),  # finite lie beyond max_abs
        ([b"", b""], {"client": 1, "round": 2}, "one tensor"),
    ],
)
def test_server_refuses_stale_foreign_misshapen_and_non_finite_replies(tensors, metrics, why):
    with pytest.raises(wire.RefusedReply, match=why):
        wire.check_reply(tensors, metrics, client=1, round_=2, local_steps=STEPS, max_abs=1e6)


def test_a_valid_reply_passes_bit_for_bit_and_the_catch_up_log_round_trips():
    gs = np.array([0.5, -1e-30, 3.0, -0.0], np.float32)
    got = wire.check_reply(*reply(gs), client=1, round_=2, local_steps=STEPS)
    np.testing.assert_array_equal(got.view(np.uint32), gs.view(np.uint32))
    rounds = [np.arange(3 * STEPS, dtype=np.float32).reshape(3, STEPS) * -1.5] * 2
    active = [np.array([True, False, True]), np.array([False, True, True])]
    back = wire.decode_rounds(wire.encode_rounds(rounds, active), clients=3, local_steps=STEPS)
    for (g, a), g0, a0 in zip(back, rounds, active, strict=True):
        np.testing.assert_array_equal(g.view(np.uint32), g0.view(np.uint32))
        np.testing.assert_array_equal(a, a0)
    with pytest.raises(ValueError, match="do not fit"):
        wire.decode_rounds(wire.encode_rounds(rounds, active), clients=2, local_steps=STEPS)


def test_one_client_alone_computes_the_bits_of_the_sequential_simulation():
    task = build_task(TaskSpec(clients=2, rounds=2, local_steps=STEPS))
    programs = task.programs()
    x, y = task.client_batches
    finals, gs, _ = programs.run_clients(task.params, (jnp.asarray(x[1]), jnp.asarray(y[1])), 1)
    for k in range(2):
        final, g, _ = programs.client(
            task.params, (jnp.asarray(x[1, k]), jnp.asarray(y[1, k])), 1, k
        )
        np.testing.assert_array_equal(
            np.asarray(g).view(np.uint32), np.asarray(gs[k]).view(np.uint32)
        )
        assert_same_bits(final, jax.tree.map(lambda a, k=k: a[k], finals))


def test_flower_federation_over_grpc_equals_federated_mezo_bit_for_bit():
    task = build_task(TaskSpec(clients=2, rounds=2, local_steps=STEPS))
    strategy = run_in_threads(task, timeout=120.0)
    expected = task.federated_mezo()
    assert_same_bits(strategy.params, expected.params)
    for rec, sim in zip(strategy.records, expected.rounds, strict=True):
        np.testing.assert_array_equal(
            rec.projected_grads.view(np.uint32), sim.projected_grads.view(np.uint32)
        )
        np.testing.assert_array_equal(rec.active, [True, True])
        np.testing.assert_array_equal(rec.gradip.view(np.uint32), sim.gradip.view(np.uint32))
        # Measured on the wire: at least the scalars, and far below one dense model.
        assert 2 * 4 * STEPS <= rec.uplink_bytes < expected.dense_bytes / 2
        assert rec.downlink_bytes > 0
    # Round 1's downlink carries round 0's scalars of both clients to both clients.
    assert strategy.records[1].downlink_bytes >= 2 * (2 * 4 * STEPS)
    assert expected.uplink_bytes == 2 * 2 * 4 * STEPS
    # Every client replayed the scalars into exactly the server's model.
    assert strategy.evaluation == {
        k: {"accuracy": pytest.approx(strategy.records[-1].accuracy), "in_sync": True}
        for k in range(2)
    }


def test_dense_delta_baseline_over_flower_equals_averaging_the_clients_parameters():
    task = build_task(TaskSpec(clients=2, rounds=2, local_steps=STEPS, exchange="dense"))
    strategy = run_in_threads(task, timeout=120.0)
    assert_same_bits(strategy.params, task.federated_mezo(server_replay=False).params)
    masked = strategy.width
    assert masked == int(sum(np.sum(m) for m in jax.tree.leaves(task.mask)))
    for rec in strategy.records:  # every client's masked values, up and (from round 1) down
        assert rec.uplink_bytes >= 2 * 4 * masked
    assert strategy.records[1].downlink_bytes >= 2 * 4 * masked
    assert all(e["in_sync"] for e in strategy.evaluation.values())


def reference(task, active_rows):
    """The rounds in process, each averaging only ``active_rows[r]``: (params, gs per round)."""
    programs, params = task.programs(), task.params
    x, y = task.client_batches
    log = []
    for r, active in enumerate(np.asarray(active_rows, bool)):
        _, gs, _ = programs.run_clients(params, (jnp.asarray(x[r]), jnp.asarray(y[r])), r)
        gs = np.where(active[:, None], np.asarray(gs), 0.0).astype(np.float32)
        log.append(gs)
        params = apply_round(programs, params, gs, r, active)
    return params, log


def test_meerkat_vp_over_flower_stops_clients_as_the_simulation_does():
    # Everyone converges after round 1 (a rule every trajectory passes): no round 2 is sent.
    spec = TaskSpec(clients=2, rounds=3, local_steps=STEPS, early_stop=(1, 1e9, 2))
    task = build_task(spec)
    strategy = run_in_threads(task, timeout=120.0)
    expected = task.federated_mezo()
    assert len(strategy.records) == len(expected.rounds) == 2
    assert_same_bits(strategy.params, expected.params)
    assert not strategy.enabled.any()
    assert all(e["in_sync"] for e in strategy.evaluation.values())


def test_a_client_that_drops_mid_round_is_left_out_then_rejoins_and_catches_up():
    task = build_task(TaskSpec(clients=2, rounds=3, local_steps=STEPS))
    strategy = run_in_threads(
        task,
        client_options={1: {"crash_round": 1, "crash": "raise"}},
        rejoin=(1,),
        rejoin_timeout=60.0,
        timeout=120.0,
    )
    active = [rec.active.tolist() for rec in strategy.records]
    assert active == [[True, True], [True, False], [True, True]]
    assert strategy.records[1].failures == 1  # the round went on without it
    # The restarted client synced rounds 0 and 1 from scalars alone, then trained round 2 from
    # exactly the server's parameters: its round-2 scalars are the in-process ones.
    params, log = reference(task, active)
    for rec, gs in zip(strategy.records, log, strict=True):
        np.testing.assert_array_equal(rec.projected_grads.view(np.uint32), gs.view(np.uint32))
    assert_same_bits(strategy.params, params)
    assert all(e["in_sync"] for e in strategy.evaluation.values())
    assert sorted(strategy.evaluation) == [0, 1]


def test_killed_client_process_and_a_refused_nan_reply_do_not_stop_the_federation(tmp_path):
    spec = TaskSpec(clients=2, rounds=2, local_steps=STEPS)
    result = run_local(
        spec,
        workdir=tmp_path,
        client_args={0: ["--lie", "nan:0"], 1: ["--crash-round", "1"]},
        server_args=["--round-timeout", "60"],
        timeout=180.0,
    )
    # Round 0: client 0's NaN refused, never averaged in; round 1: client 1's process killed
    # (SIGKILL) mid-round: a failure under Flower's fit, the round goes on with client 0.
    np.testing.assert_array_equal(result.active, [[False, True], [True, False]])
    assert "non-finite" in result.rounds[0]["refused"]["0"]
    assert result.rounds[1]["failures"] == 1 and result.rounds[1]["sent"] == [True, True]
    for rec in result.rounds:  # measured on the wire: scalars, never a model
        assert 4 * STEPS <= rec["uplink_bytes"] < 1000 and 0 < rec["downlink_bytes"] < 1000
    task = build_task(spec)
    params, log = reference(task, result.active)
    for r, gs in enumerate(log):
        np.testing.assert_array_equal(result.projected_grads[r].view(np.uint32), gs.view(np.uint32))
    for a, b in zip(bits(params), result.params, strict=True):
        np.testing.assert_array_equal(a, b.view(np.uint32))
    assert result.evaluation == {
        0: {"accuracy": pytest.approx(result.rounds[-1]["accuracy"]), "in_sync": True}
    }
    full = task.federated_mezo()  # everyone averaged in every round: another model
    assert any(not np.array_equal(a, b) for a, b in zip(bits(params), bits(full.params)))
