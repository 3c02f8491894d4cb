"""Training benchmark: memory and time of a MeZO step against a forward pass and first-order Adam.

Run as::

    python -m bench.training [--json FILE] [--layers N] [--width N] [--batch N] [--repeats N]
                             [--chunk-size N] [--smoke]

Model: a tanh MLP of ``--layers`` square ``[width, width]`` float32 layers with biases, mean
squared error on a random batch. Its largest tensor is ``1 / layers`` of the parameters (the
default 8 layers: 1/8), so a program that held z, or every perturbed leaf, for the whole model at
once would show it.

Rows (each one jitted program, compiled with :func:`training.lean_compiler_options`, the options
``mezo_step`` uses, so all rows are compiled alike):

- ``forward``: ``loss_fn(params, batch)``.
- ``mezo_sgd``: ``training.mezo_step(loss_fn, optax.sgd(lr), eps=1e-3)``, params donated.
- ``mezo_adam``: the same step with ``optax.adam`` (ZO-Adam: two more parameter-sized states).
- ``adam_first_order``: ``jax.value_and_grad`` + ``optax.adam``, params and state donated.

Columns: ``memory_mb`` = arguments + outputs - aliased (donated) + temporaries, from
``jit(...).lower(...).compile().memory_analysis()``, in MB (10**6 bytes); ``temp_mb`` the
temporaries alone; ``memory_vs_forward`` and ``memory_vs_params``; ``time_ms`` the median wall
time of one call on the default device and ``time_vs_forward``. On CPU a MeZO step costs far
more than two forward passes: drawing z three times (threefry + inverse erf per weight)
dominates the small matmuls.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import training
from bench.common import Column, add_json_arg, format_table, median_time, run_metadata, write_json

MB = 1e6
DEFAULT_LAYERS, DEFAULT_WIDTH, DEFAULT_BATCH, DEFAULT_REPEATS = 8, 1024, 16, 5
SMOKE_LAYERS, SMOKE_WIDTH, SMOKE_BATCH = 4, 64, 4
SMOKE_CHUNK_SIZE = 1024  # smaller than a smoke leaf, so the chunked z path is measured too
EPS, LEARNING_RATE = 1e-3, 1e-4  # MeZO's ε; the learning rate does not affect cost
SEED = 0


def make_mlp(layers: int, width: int, batch: int):
    """(params, loss_fn, batch) of a tanh MLP with ``layers`` square layers."""
    key = jax.random.key(SEED)
    params = {
        f"layer{i:03d}": {
            "w": jax.random.normal(jax.random.fold_in(key, i), (width, width)) / np.sqrt(width),
            "b": jnp.zeros((width,)),
        }
        for i in range(layers)
    }

    def loss_fn(p, data):
        x, y = data
        for i in range(layers):
            layer = p[f"layer{i:03d}"]
            x = jnp.tanh(x @ layer["w"] + layer["b"])  # [batch, width]
        return jnp.mean((x - y) ** 2)

    data = (
        jax.random.normal(jax.random.fold_in(key, 10**6), (batch, width)),
        jax.random.normal(jax.random.fold_in(key, 10**6 + 1), (batch, width)),
    )
    return params, loss_fn, data


def memory_columns(compiled) -> dict[str, float]:
    """Memory columns of a compiled program (MB): arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
    return {
        "argument_mb": m.argument_size_in_bytes / MB,
        "output_mb": m.output_size_in_bytes / MB,
        "alias_mb": m.alias_size_in_bytes / MB,
        "temp_mb": m.temp_size_in_bytes / MB,
        "memory_mb": total / MB,
    }


def _copy(tree):
    return jax.tree.map(jnp.array, tree)


def bench_programs(
    layers: int, width: int, batch: int, repeats: int, chunk_size: int
) -> list[dict[str, Any]]:
    params, loss_fn, data = make_mlp(layers, width, batch)
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    largest = max(x.nbytes for x in jax.tree.leaves(params))
    options = training.lean_compiler_options() or None
    rows = []

    forward = jax.jit(loss_fn, compiler_options=options)
    compiled = forward.lower(params, data).compile()
    rows.append(
        {
            "program": "forward",
            **memory_columns(compiled),
            "time_ms": 1e3
            * median_time(lambda: jax.block_until_ready(compiled(params, data)), repeats),
        }
    )

    def timed_step(name: str, step, opt_state_of):
        state = {"p": _copy(params)}
        state["s"] = opt_state_of(state["p"])
        compiled = step.lower(state["p"], state["s"], data, jax.random.key(0)).compile()
        counter = iter(range(10**9))

        def run():
            out = compiled(state["p"], state["s"], data, jax.random.key(next(counter)))
            state["p"], state["s"] = out[0], out[1]
            jax.block_until_ready(out)

        rows.append(
            {
                "program": name,
                **memory_columns(compiled),
                "time_ms": 1e3 * median_time(run, repeats),
            }
        )

    for name, tx in (
        ("mezo_sgd", optax.sgd(LEARNING_RATE)),
        ("mezo_adam", optax.adam(LEARNING_RATE)),
    ):
        timed_step(name, training.mezo_step(loss_fn, tx, eps=EPS, chunk_size=chunk_size), tx.init)

    adam = optax.adam(LEARNING_RATE)

    def first_order(p, opt_state, batch_, key):
        del key  # same signature as the MeZO step
        loss, grads = jax.value_and_grad(loss_fn)(p, batch_)
        updates, opt_state = adam.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    timed_step(
        "adam_first_order",
        jax.jit(first_order, donate_argnums=(0, 1), compiler_options=options),
        adam.init,
    )

    fwd = rows[0]
    for row in rows:
        row.update(
            layers=layers,
            width=width,
            batch=batch,
            params_mb=params_bytes / MB,
            largest_leaf_fraction=largest / params_bytes,
            memory_vs_forward=row["memory_mb"] / fwd["memory_mb"],
            memory_vs_params=row["memory_mb"] * MB / params_bytes,
            temp_vs_params=row["temp_mb"] * MB / params_bytes,
            time_vs_forward=row["time_ms"] / fwd["time_ms"],
        )
    return rows


COLUMNS = [
    Column("program", "program"),
    Column("memory_mb", "memory MB", ".2f"),
    Column("temp_mb", "temp MB", ".2f"),
    Column("alias_mb", "aliased MB", ".2f"),
    Column("memory_vs_params", "mem/params", ".2f"),
    Column("memory_vs_forward", "mem/fwd", ".2f"),
    Column("time_ms", "time ms", ".2f"),
    Column("time_vs_forward", "time/fwd", ".1f"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training",
        description="Memory and time of a MeZO step vs a forward pass and first-order Adam.",
    )
    add_json_arg(parser)
    parser.add_argument("--layers", type=int, default=None, help=f"default {DEFAULT_LAYERS}")
    parser.add_argument("--width", type=int, default=None, help=f"default {DEFAULT_WIDTH}")
    parser.add_argument("--batch", type=int, default=None, help=f"default {DEFAULT_BATCH}")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed calls (default {DEFAULT_REPEATS})"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"z chunk size of the MeZO steps (default {training.DEFAULT_CHUNK_SIZE}; "
        f"{SMOKE_CHUNK_SIZE} with --smoke)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny run for tests: {SMOKE_LAYERS} layers of {SMOKE_WIDTH}, 1 repeat",
    )
    args = parser.parse_args(argv)
    args.layers = args.layers or (SMOKE_LAYERS if args.smoke else DEFAULT_LAYERS)
    args.width = args.width or (SMOKE_WIDTH if args.smoke else DEFAULT_WIDTH)
    args.batch = args.batch or (SMOKE_BATCH if args.smoke else DEFAULT_BATCH)
    args.repeats = args.repeats or (1 if args.smoke else DEFAULT_REPEATS)
    if args.chunk_size is None:
        args.chunk_size = SMOKE_CHUNK_SIZE if args.smoke else training.DEFAULT_CHUNK_SIZE
    if args.layers < 4:
        parser.error("--layers must be >= 4 (the largest tensor must be <= 1/4 of the params)")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its table and optionally writes ``--json``; returns the rows."""
    args = parse_args(argv)
    print(
        f"MLP {args.layers} x [{args.width}, {args.width}], batch {args.batch} ...",
        file=sys.stderr,
        flush=True,
    )
    rows = bench_programs(args.layers, args.width, args.batch, args.repeats, args.chunk_size)
    params_mb = rows[0]["params_mb"]
    print(
        f"Params {params_mb:.2f} MB; memory = arguments + outputs - aliased + temporaries "
        f"(XLA memory_analysis); time: median of {args.repeats} on {jax.default_backend()}."
    )
    print(format_table(rows, COLUMNS))
    if args.json is not None:
        meta = run_metadata(
            benchmark="training",
            layers=args.layers,
            width=args.width,
            batch=args.batch,
            repeats=args.repeats,
            smoke=args.smoke,
            eps=EPS,
            chunk_size=args.chunk_size,
            compiler_options=training.lean_compiler_options(),
            argv=list(sys.argv[1:] if argv is None else argv),
            seed=SEED,
        )
        write_json(args.json, rows, meta=meta)
    return rows


if __name__ == "__main__":
    main()
