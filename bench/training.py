"""Training benchmark: memory and time of a MeZO step against a forward pass and first-order Adam.

Run as::

    python -m bench.training [--json FILE] [--layers N] [--width N] [--batch N] [--repeats N]
                             [--chunk-size N] [--smoke] [--llama smollm2|tiny]

Models: tanh MLPs of ``layers`` square ``[width, width]`` float32 layers with biases, mean
squared error on a random batch. Their largest tensor is ``1 / layers`` of the parameters, so a
program that held z, or every perturbed leaf, for the whole model at once would show it. Without
``--layers/--width/--batch`` three configurations run (:data:`DEFAULT_CONFIGS`):

- 8 x [1024, 1024], batch 16 (largest tensor 1/8 of the parameters);
- 4 x [1024, 1024], batch 16 (largest tensor 1/4: the perturbed copy of that leaf alone is a
  quarter of the parameters);
- 8 x [1024, 1024], batch 256: the same model with a forward pass that does real arithmetic
  (at batch 16 it is one streaming read of the weights, as cheap as any pass over them).

``--llama smollm2`` measures the same programs on a real model instead: SmolLM2-135M in float32
with ``bench.finetune``'s polarity loss on ``--batch`` prompts (``--llama tiny``: its random
2-layer Llama, for tests).

Rows (each one jitted program, compiled with :func:`training.lean_compiler_options`, the options
``mezo_step`` uses, so all rows are compiled alike):

- ``forward``: ``loss_fn(params, batch)``.
- ``mezo_sgd``: ``training.mezo_step(loss_fn, optax.sgd(lr), eps=1e-3)``, params donated, z
  Gaussian (the default).
- ``mezo_sgd_rademacher``: the same with ``distribution="rademacher"`` (±1 z).
- ``mezo_sgd_in_place``: the Gaussian step with ``in_place=True`` (perturbs the donated
  parameters in place, with a rounding drift; see :func:`training.mezo_step`).
- ``mezo_adam``: the Gaussian step with ``optax.adam`` (ZO-Adam: two more parameter-sized states).
- ``adam_first_order``: ``jax.value_and_grad`` + ``optax.adam``, params and state donated.
- ``weights_pass``: ``θ ← 1.0001·θ`` on the donated params, one elementwise pass over the
  weights. A MeZO step cannot beat two forward passes plus three such passes (``θ+εz``,
  ``θ-εz``, the update), which is its time floor.

Columns: ``memory_mb`` = arguments + outputs - aliased (donated) + temporaries, from
``jit(...).lower(...).compile().memory_analysis()``, in MB (10**6 bytes); ``temp_mb`` the
temporaries alone; ``memory_vs_forward`` and ``memory_vs_params``; ``time_ms`` the median wall
time of one call on the default device and ``time_vs_forward``. On CPU, drawing Gaussian z
(threefry and an inverse erf per weight, three times a step) dominates the step; Rademacher z
costs about as much as copying the weights.
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
DEFAULT_CONFIGS = ((8, 1024, 16), (4, 1024, 16), (8, 1024, 256))
"""(layers, width, batch) of the models measured by default."""
DEFAULT_REPEATS = 7
SMOKE_CONFIGS = ((4, 64, 4),)
SMOKE_CHUNK_SIZE = 1024  # smaller than a smoke leaf, so leaves of several chunks are measured too
EPS, LEARNING_RATE = 1e-3, 1e-4  # MeZO's ε; the learning rate does not affect cost
SEED = 0
PROGRAMS = (
    "forward",
    "mezo_sgd",
    "mezo_sgd_rademacher",
    "mezo_sgd_in_place",
    "mezo_adam",
    "adam_first_order",
    "weights_pass",
)
"""The programs measured, in table order (see the module docstring)."""


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
    params, loss_fn, data, repeats: int, chunk_size: int, programs: Sequence[str] = PROGRAMS
) -> list[dict[str, Any]]:
    """The rows of one model: forward, the MeZO steps and first-order Adam.

    Args:
      params: the float parameter pytree.
      loss_fn: ``loss_fn(params, data) -> scalar``.
      data: one batch.
      repeats: timed calls per program (the median is kept).
      chunk_size: z chunk size of the MeZO steps.
      programs: which of :data:`PROGRAMS` to measure (``forward`` always is: the ratios' base).
    """
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
        if name not in programs:
            return
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

    sgd, adam = optax.sgd(LEARNING_RATE), optax.adam(LEARNING_RATE)
    for name, tx, kw in (
        ("mezo_sgd", sgd, {}),
        ("mezo_sgd_rademacher", sgd, {"distribution": "rademacher"}),
        ("mezo_sgd_in_place", sgd, {"in_place": True}),
        ("mezo_adam", adam, {}),
    ):
        step = training.mezo_step(loss_fn, tx, eps=EPS, chunk_size=chunk_size, **kw)
        timed_step(name, step, tx.init)

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

    def weights_pass(p, opt_state, batch_, key):
        del batch_, key
        return jax.tree.map(lambda x: x * 1.0001, p), opt_state, jnp.zeros(())

    timed_step(
        "weights_pass",
        jax.jit(weights_pass, donate_argnums=(0, 1), compiler_options=options),
        lambda p: (),
    )

    fwd = rows[0]
    for row in rows:
        row.update(
            params_mb=params_bytes / MB,
            largest_leaf_fraction=largest / params_bytes,
            memory_vs_forward=row["memory_mb"] / fwd["memory_mb"],
            memory_vs_params=row["memory_mb"] * MB / params_bytes,
            temp_vs_params=row["temp_mb"] * MB / params_bytes,
            time_vs_forward=row["time_ms"] / fwd["time_ms"],
        )
    return rows


def mlp_rows(
    layers: int, width: int, batch: int, repeats: int, chunk_size: int, programs=PROGRAMS
) -> list[dict]:
    """:func:`bench_programs` of :func:`make_mlp`'s model."""
    rows = bench_programs(*make_mlp(layers, width, batch), repeats, chunk_size, programs)
    model = dict(model=f"{layers}x[{width},{width}] b{batch}", layers=layers, width=width)
    return [dict(row, **model, batch=batch) for row in rows]


def llama_rows(
    which: str, batch: int, repeats: int, chunk_size: int, programs=PROGRAMS
) -> list[dict]:
    """:func:`bench_programs` of ``bench.finetune``'s model and loss on ``batch`` polarity prompts.

    ``which``: ``"smollm2"`` (SmolLM2-135M dequantized to float32, every weight trainable; its
    largest tensor, the tied embedding, is 0.21 of the parameters) or ``"tiny"`` (the random
    2-layer Llama of ``bench.finetune --tiny``, for tests).
    """
    from bench import finetune_common as ft

    tiny = which == "tiny"
    words = ft.TINY_POLARITY_WORDS if tiny else ft.POLARITY_WORDS
    s = ft.polarity_setup(ft.load_model(tiny=tiny), **words)
    loss_fn, _ = ft.task_fns(s)
    data = ft.take(s.data["train"], np.arange(batch))
    rows = bench_programs(s.params, loss_fn, data, repeats, chunk_size, programs)
    model = dict(model=f"{s.name}, b{batch}", layers=None, width=None)
    return [dict(row, **model, batch=batch) for row in rows]


COLUMNS = [
    Column("model", "model"),
    Column("largest_leaf_fraction", "largest", ".3f"),
    Column("program", "program"),
    Column("memory_mb", "memory MB", ".2f"),
    Column("temp_mb", "temp MB", ".2f"),
    Column("alias_mb", "aliased MB", ".2f"),
    Column("memory_vs_params", "mem/params", ".2f"),
    Column("memory_vs_forward", "mem/fwd", ".3f"),
    Column("time_ms", "time ms", ".2f"),
    Column("time_vs_forward", "time/fwd", ".2f"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training",
        description="Memory and time of a MeZO step vs a forward pass and first-order Adam.",
    )
    add_json_arg(parser)
    layers, width, batch = DEFAULT_CONFIGS[0]
    parser.add_argument("--layers", type=int, default=None, help=f"one model (default {layers})")
    parser.add_argument("--width", type=int, default=None, help=f"one model (default {width})")
    parser.add_argument("--batch", type=int, default=None, help=f"one model (default {batch})")
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
        "--programs",
        nargs="+",
        choices=PROGRAMS,
        default=list(PROGRAMS),
        help="measure only these (forward always: the ratios' base)",
    )
    parser.add_argument(
        "--llama",
        choices=["smollm2", "tiny"],
        default=None,
        help="measure this Llama (bench.finetune's model and polarity loss) instead of the "
        "MLPs, at --batch (default 16)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run for tests: 4 layers of width 64, batch 4, 1 repeat",
    )
    args = parser.parse_args(argv)
    base = SMOKE_CONFIGS if args.smoke else DEFAULT_CONFIGS
    if args.layers is None and args.width is None and args.batch is None:
        args.configs = [tuple(c) for c in base]
    else:
        args.configs = [
            tuple(
                given if given is not None else default
                for given, default in zip((args.layers, args.width, args.batch), base[0])
            )
        ]
    args.repeats = args.repeats or (1 if args.smoke else DEFAULT_REPEATS)
    if args.chunk_size is None:
        args.chunk_size = SMOKE_CHUNK_SIZE if args.smoke else training.DEFAULT_CHUNK_SIZE
    if args.llama is None and any(layers < 4 for layers, _, _ in args.configs):
        parser.error("--layers must be >= 4 (the largest tensor must be <= 1/4 of the params)")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its table and optionally writes ``--json``; returns the rows."""
    args = parse_args(argv)
    rows = []
    if args.llama is not None:
        batch = args.batch or 16
        print(f"Llama {args.llama}, batch {batch} ...", file=sys.stderr, flush=True)
        rows += llama_rows(args.llama, batch, args.repeats, args.chunk_size, args.programs)
    else:
        for layers, width, batch in args.configs:
            print(
                f"MLP {layers} x [{width}, {width}], batch {batch} ...", file=sys.stderr, flush=True
            )
            rows += mlp_rows(layers, width, batch, args.repeats, args.chunk_size, args.programs)
    print(
        "memory = arguments + outputs - aliased + temporaries (XLA memory_analysis); "
        f"time: median of {args.repeats} on {jax.default_backend()}; "
        "largest = largest tensor / params."
    )
    print(format_table(rows, COLUMNS))
    if args.json is not None:
        meta = run_metadata(
            benchmark="training",
            configs=[] if args.llama else [list(c) for c in args.configs],
            llama=args.llama,
            programs=args.programs,
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
