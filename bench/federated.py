"""Meerkat over Flower: bytes measured on the wire, accuracy against bytes, wall time per round.

Run as::

    python -m bench.federated [--clients 2 4 8] [--rounds 10] [--local-steps 10] [--json FILE]

Every run is a real federation on 127.0.0.1: one Flower server process and K client processes
(:func:`training.federated.launch.run_local`) talking over Flower's gRPC transport. The task is
:mod:`training.federated.task`'s MLP on Gaussian clusters (``--dim``, ``--hidden``), not
SmolLM2: K + 1 processes each holding and replaying a 135 M-parameter model do not fit this
2-core machine's time; the bytes per round do not depend on the model for Meerkat (4 bytes per
local step) and grow with the mask for the dense baseline.

Table 1, quality: IID and Dirichlet(``--alpha``) splits, K = ``--quality-clients``; Meerkat
(``exchange=scalars``: projected gradients up, every client's scalars down) against the dense
sparse-delta baseline (``exchange=dense``: each client sends its trained masked values as
float32, the server averages and sends them back: what a Flower user would run with FedAvg on
the masked weights). Bytes are gRPC message bytes counted by the server's servicer
(serialized protobuf + 5-byte gRPC prefix, both directions, all messages of the round:
instructions, replies, property queries), beside the arithmetic count of
:func:`training.meerkat.federated_mezo` (``4·T`` up per client, ``4·T·K`` down per client).

Table 2, accuracy against measured bytes: the server model's held-out accuracy after each
``--curve-every`` rounds, with the cumulative bytes.

Table 3, wall time per round for each K in ``--clients``, both exchanges: the median of rounds
1.. (round 0 also waits for the client processes to start and compile).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import Column, add_json_arg, format_table, run_metadata, write_json
from training.federated.launch import run_local
from training.federated.task import TaskSpec, build_task, masked_values


def run(spec: TaskSpec, workdir: Path, timeout: float) -> dict:
    result = run_local(spec, workdir=workdir, timeout=timeout)
    K, T = spec.clients, spec.local_steps
    up = [r["uplink_bytes"] for r in result.rounds]
    down = [r["downlink_bytes"] for r in result.rounds]
    task = build_task(spec)
    masked = len(masked_values(task.params, task.mask))
    if spec.exchange == "scalars":
        arith_up, arith_down = 4 * T * K, 4 * T * K * K
    else:
        arith_up, arith_down = 4 * masked * K, 4 * masked * K
    seconds = [r["seconds"] for r in result.rounds]
    return {
        "split": spec.split if spec.split == "iid" else f"dirichlet a={spec.alpha:g}",
        "exchange": spec.exchange,
        "clients": K,
        "rounds": len(result.rounds),
        "local_steps": T,
        "trainable": masked,
        "accuracy_0": task.accuracy_fn(task.params, task.test),
        "accuracy": result.rounds[-1]["accuracy"],
        "uplink_per_round": float(np.median(up[1:] or up)),
        "downlink_per_round": float(np.median(down[1:] or down)),
        "arith_uplink_per_round": arith_up,
        "arith_downlink_per_round": arith_down,
        "total_bytes": int(sum(up) + sum(down)),
        "s_per_round": float(np.median(seconds[1:] or seconds)),
        "in_sync": sum(e["in_sync"] for e in result.evaluation.values()),
        "curve": [
            (r, int(np.sum(up[: r + 1]) + np.sum(down[: r + 1])), result.rounds[r]["accuracy"])
            for r in range(len(result.rounds))
        ],
    }


QUALITY = [
    Column("split", "split"),
    Column("exchange", "exchange"),
    Column("clients", "K"),
    Column("rounds", "rounds"),
    Column("local_steps", "T"),
    Column("trainable", "trainable"),
    Column("accuracy_0", "acc before", ".3f"),
    Column("accuracy", "acc after", ".3f"),
    Column("uplink_per_round", "up B/round (wire)", ",.0f"),
    Column("arith_uplink_per_round", "up B/round (arith.)", ",d"),
    Column("downlink_per_round", "down B/round (wire)", ",.0f"),
    Column("arith_downlink_per_round", "down B/round (arith.)", ",d"),
    Column("total_bytes", "total B", ",d"),
    Column("s_per_round", "s/round", ".3f"),
    Column("in_sync", "clients in sync"),
]
WALL = [
    Column("exchange", "exchange"),
    Column("clients", "K"),
    Column("s_per_round", "s/round", ".3f"),
    Column("uplink_per_round", "up B/round (wire)", ",.0f"),
    Column("downlink_per_round", "down B/round (wire)", ",.0f"),
    Column("accuracy", "acc after", ".3f"),
]
CURVE = [
    Column("run", "run"),
    Column("round", "round"),
    Column("bytes", "bytes so far (wire)", ",d"),
    Column("accuracy", "accuracy", ".3f"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.federated", description=__doc__.split("\n")[0]
    )
    p.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8], help="K for Table 3")
    p.add_argument("--quality-clients", type=int, default=4, help="K for Tables 1 and 2")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--curve-every", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="bound on each federation")
    p.add_argument("--only", choices=["quality", "wall"], default=None)
    add_json_arg(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    base = TaskSpec(
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch=args.batch,
        classes=args.classes,
        dim=args.dim,
        hidden=args.hidden,
        examples=args.examples,
        density=args.density,
        alpha=args.alpha,
        learning_rate=args.learning_rate,
        distribution="rademacher",
    )
    tables: dict[str, list[dict]] = {"quality": [], "curve": [], "wall": []}
    done: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:

        def federate(**kw):
            spec = dataclasses.replace(base, **kw)
            key = tuple(sorted(kw.items()))
            if key not in done:
                done[key] = run(spec, Path(tmp) / str(len(done)), args.timeout)
                row = done[key]
                print(
                    f"  {row['split']} {row['exchange']} K={row['clients']}: "
                    f"acc {row['accuracy']:.3f}, {row['s_per_round']:.3f} s/round",
                    flush=True,
                )
            return done[key]

        if args.only in (None, "quality"):
            for split in ("iid", "dirichlet"):
                for exchange in ("scalars", "dense"):
                    row = federate(clients=args.quality_clients, split=split, exchange=exchange)
                    tables["quality"].append(row)
                    name = f"{row['split']} {exchange}"
                    for r, sent, acc in row["curve"]:
                        if (r + 1) % args.curve_every == 0 or r == 0:
                            tables["curve"].append(
                                {"run": name, "round": r, "bytes": sent, "accuracy": acc}
                            )
            print("\nTable 1: Meerkat over Flower vs the dense sparse-delta exchange")
            print(format_table(tables["quality"], QUALITY))
            print("\nTable 2: accuracy against bytes measured on the wire")
            print(format_table(tables["curve"], CURVE))
        if args.only in (None, "wall"):
            for k in args.clients:
                for exchange in ("scalars", "dense"):
                    tables["wall"].append(federate(clients=k, split="iid", exchange=exchange))
            print("\nTable 3: wall time per round (server + K client processes, this machine)")
            print(format_table(tables["wall"], WALL))
    if args.json:
        rows = [{"table": name, **row} for name, rows in tables.items() for row in rows]
        write_json(args.json, rows, meta=run_metadata(spec=dataclasses.asdict(base)))
    return tables


if __name__ == "__main__":
    main()
