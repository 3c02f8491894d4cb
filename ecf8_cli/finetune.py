"""``ecf8 finetune``: MeZO fine-tuning (``training``) on word polarity over a frozen ECF8 base.

The one command that joins the library (models, adapters, checkpoints) with ``training``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ecf8_cli.common import check_output, progress, pyplot, save_plot
from ecf8_cli.llm import _dtype_argument, load_causal_lm


def _add_adapters(model, args) -> None:
    """Wraps the ``--targets`` linear layers in the ``--adapter`` kind (see ``ecf8_jax.nn``)."""
    from flax import nnx

    from ecf8_jax import nn as enn

    targets = {t.strip() for t in args.targets.split(",") if t.strip()}

    def where(path, layer):
        return path.rsplit(".", 1)[-1] in targets

    if args.adapter == "lora":
        rngs = nnx.Rngs(args.seed)
        enn.add_lora(model, where=where, rank=args.lora_rank, alpha=args.lora_alpha, rngs=rngs)
    else:
        enn.add_sparse_delta(model, args.sparse_density, where=where)


def cmd_finetune(args: argparse.Namespace) -> int:
    """MeZO fine-tuning on word polarity over a frozen ECF8 base.

    Without ``--adapter`` the model's ``nnx.Param`` (norm scales) train; with ``--adapter lora``
    or ``sparse`` only the adapters train, and they are merged into re-encoded ECF8 layers
    (per-row FP8 requantization, or rounding to BF16 with ``--dtype bf16``: lossy) before the
    checkpoint is written.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import training
    from ecf8_jax import checkpoint
    from ecf8_jax.nn import AdapterParam, compress_model, merge_adapters
    from training.tasks import polarity

    out = Path(args.out)
    check_output(out, args.overwrite)
    if args.plot:
        pyplot()  # fail before training when matplotlib is missing
        check_output(Path(args.plot), True)
    model, tokenizer, name = load_causal_lm(args.model, args.dtype)
    compress_model(model)
    if args.adapter != "none":
        _add_adapters(model, args)
    splits = polarity.load()
    train, dev = splits["train"], splits["dev"][: args.eval_words]

    def encode(text):
        return tokenizer.encode(text).ids

    length = max(
        len(encode(polarity.PROMPT.format(word=e.word) + w))
        for e in train + dev
        for w in polarity.LABEL_WORDS
    )
    trainable = nnx.Param if args.adapter == "none" else AdapterParam
    graphdef, params, rest = nnx.split(model, trainable, ...)

    def model_metrics(m, arrays):
        tokens, targets, labels = arrays
        batch = polarity.Batch(tokens, targets, labels)
        b, _, t = tokens.shape
        return polarity.loss_and_accuracy(m(tokens.reshape(b * 2, t))[0], batch)

    def metrics(p, arrays):
        return model_metrics(nnx.merge(graphdef, p, rest), arrays)

    def arrays(examples):
        batch = polarity.make_batch(examples, encode, length)
        return jnp.asarray(batch.tokens), jnp.asarray(batch.targets), jnp.asarray(batch.labels)

    evaluate = jax.jit(lambda p, a: metrics(p, a)[1])
    dev_arrays = arrays(dev)
    tx = optax.sgd(args.learning_rate)
    step = training.mezo_step(
        lambda p, a: metrics(p, a)[0], tx, eps=args.eps, return_projected_grad=True
    )
    rng = np.random.default_rng(args.seed)
    history = {"step": [0], "dev_accuracy": [float(evaluate(params, dev_arrays))]}
    print(f"{name}: zero-shot dev accuracy {history['dev_accuracy'][0]:.3f} ({len(dev)} words)")

    def batches():
        for _ in range(args.steps):
            yield arrays([train[i] for i in rng.choice(len(train), args.batch_size, replace=False)])

    with progress("fine-tuning", args.steps, args.quiet, min_total=0) as advance:

        def on_step(t, p, loss):
            if (t + 1) % args.eval_every == 0 or t + 1 == args.steps:
                history["step"].append(t + 1)
                history["dev_accuracy"].append(float(evaluate(p, dev_arrays)))
            advance(1)

        params, _, log, history["loss"] = training.fit(
            step,
            params,
            tx.init(params),
            batches(),
            root_key=jax.random.key(args.seed),
            on_step=on_step,
        )
    history["projected_grads"] = [float(g) for _, g in log]  # with the seed: training.replay
    nnx.update(model, params)
    print(
        f"after {args.steps} MeZO steps: dev accuracy {history['dev_accuracy'][-1]:.3f}, "
        f"last loss {history['loss'][-1]:.4f}"
    )
    if args.adapter != "none":
        merge_adapters(model)
        merged = nnx.jit(lambda m, a: model_metrics(m, a)[1])(model, dev_arrays)
        history["merged_dev_accuracy"] = float(merged)
        how = "rounded to BF16" if args.dtype == "bf16" else "FP8 per row"
        print(
            f"merged the {args.adapter} adapters into re-encoded ECF8 layers ({how}, "
            f"lossy): dev accuracy {float(merged):.3f}"
        )
    metadata = {"task": "polarity", "adapter": args.adapter, "history": history}
    checkpoint.save_model(out, model, metadata=metadata, overwrite=args.overwrite)
    print(f"checkpoint -> {out}")
    if args.plot:
        _plot_history(history, Path(args.plot))
        print(f"plot -> {args.plot}")
    return 0


def _plot_history(history: dict, path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(np.arange(1, len(history["loss"]) + 1), history["loss"])
    left.set(title="MeZO training loss", xlabel="step", ylabel="cross-entropy")
    right.plot(history["step"], history["dev_accuracy"], marker="o")
    right.set(title="dev accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1))
    fig.tight_layout()
    save_plot(fig, path, dpi=100)


def add_commands(sub) -> None:
    """Registers ``finetune`` on the ``ecf8`` parser."""
    p = sub.add_parser("finetune", help="MeZO fine-tuning on word polarity over a frozen ECF8 base")
    p.add_argument("out", help="checkpoint folder to write")
    p.add_argument("--model", default=None, help="a .gguf file or HF folder (default: SmolLM2)")
    _dtype_argument(p)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-words", type=int, default=200)
    p.add_argument(
        "--adapter",
        choices=("none", "lora", "sparse"),
        default="none",
        help="train the norm scales (none) or adapters on --targets, merged before saving",
    )
    p.add_argument(
        "--targets", default="q_proj,v_proj", help="comma-separated linear layer names to adapt"
    )
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument(
        "--sparse-density",
        type=float,
        default=1e-3,
        help="fraction of each target weight trained by --adapter sparse (largest |w|)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)
