"""Hugging Face checkpoints (safetensors + ``config.json``) to FP8 NNX models.

What is kept and what is lossy:

* FP8 weights (``float8_e4m3fn`` / ``e5m2``) are loaded as they are, with their scale:
  ``<name>.weight_scale`` (per tensor or per output channel, "FP8-dynamic" / compressed-tensors
  checkpoints) or ``<name>.weight_scale_inv`` (per 128×128 block, DeepSeek-V3 / Qwen3-FP8; the
  block shape comes from ``quantization_config.weight_block_size``). Activation scales
  (``input_scale``) are ignored: activations stay in float32.
* BF16/FP16/FP32 weights are kept (trainable float layers, ``nnx.Param``) with ``cast=None``,
  quantized to FP8 with one scale per output row with ``cast="fp8-row"`` (**lossy**: each weight
  rounds to 3 mantissa bits, see :func:`ecf8_jax.quantize.quantize_fp8`), or held as frozen BF16
  layers (:class:`~ecf8_jax.nn.Bf16Linear`, :class:`~ecf8_jax.nn.Bf16Embed`) with
  ``cast="bf16"``: a BF16 checkpoint's weights **unmodified**, bit for bit; FP32 and FP16 ones
  rounded to bfloat16 (nearest even, lossy). Norms and biases always stay float32.

A model loaded with FP8 or BF16 layers is turned into an ECF8 one with
:func:`ecf8_jax.nn.compress_model` (lossless).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecf8_jax.io.safetensors import read_safetensors
from ecf8_jax.models.llama import DecoderLayer, LlamaConfig, LlamaForCausalLM, rope_inv_freq
from ecf8_jax.nn.layers import Bf16Embed, Bf16Linear, Embed, Fp8Embed, Fp8Linear, Linear
from ecf8_jax.nn.stack import stack_or_list

Cast = Literal["fp8-row", "bf16"] | None
CASTS = ("fp8-row", "bf16")
"""The ``cast`` values besides None (see the module docstring)."""


def _is_fp8(arr) -> bool:
    return np.dtype(arr.dtype).itemsize == 1 and "float8" in np.dtype(arr.dtype).name


def _f32(arr) -> jnp.ndarray:
    return jnp.asarray(np.asarray(arr, dtype=np.float32))


def linear_from_tensors(
    tensors: Mapping[str, np.ndarray],
    prefix: str,
    *,
    cast: Cast = None,
    block_size: tuple[int, int] = (128, 128),
    dtype=None,
    bias: bool = True,
) -> Linear | Fp8Linear | Bf16Linear:
    """The layer stored under ``prefix`` (``prefix.weight``, its scale and ``prefix.bias``).

    ``dtype`` is the compute dtype; None: float32, or bfloat16 for ``cast="bf16"`` layers.
    """
    _check_cast(cast)
    w = tensors[f"{prefix}.weight"]
    b = tensors.get(f"{prefix}.bias") if bias else None
    b = None if b is None else np.asarray(b, np.float32)
    if _is_fp8(w):
        if f"{prefix}.weight_scale_inv" in tensors:
            scale = tensors[f"{prefix}.weight_scale_inv"]
        elif f"{prefix}.weight_scale" in tensors:
            scale = tensors[f"{prefix}.weight_scale"]
        else:
            raise KeyError(f"{prefix}.weight is FP8 but has no weight_scale / weight_scale_inv")
        return Fp8Linear(np.asarray(w), scale, b, block_size=block_size, dtype=_compute_f32(dtype))
    if cast == "bf16":
        return Bf16Linear.from_float(w, b, dtype=jnp.bfloat16, **_compute(dtype))
    if cast == "fp8-row":
        return Fp8Linear.from_float(w, b, dtype=_compute_f32(dtype))
    return Linear(jnp.asarray(np.asarray(w)), b, dtype=_compute_f32(dtype))


def _check_cast(cast) -> None:
    if cast is not None and cast not in CASTS:
        raise ValueError(f"cast must be None or one of {CASTS}, got {cast!r}")


def _compute_f32(dtype):
    """A compute dtype, float32 when None."""
    return jnp.float32 if dtype is None else dtype


def _compute(dtype) -> dict:
    """``dtype=`` for a BF16 layer: only when given (else the layer's default, its own dtype)."""
    return {} if dtype is None else {"dtype": dtype}


def embed_from_tensors(
    tensors: Mapping[str, np.ndarray], name: str, *, cast: Cast = None, dtype=None
) -> Embed | Fp8Embed | Bf16Embed:
    """The embedding table ``name`` (FP8 with ``<prefix>.weight_scale``, BF16, or float)."""
    _check_cast(cast)
    w = tensors[name]
    if _is_fp8(w):
        scale_name = name.removesuffix(".weight") + ".weight_scale"
        return Fp8Embed(np.asarray(w), tensors[scale_name], dtype=_compute_f32(dtype))
    if cast == "bf16":
        return Bf16Embed.from_float(w, dtype=jnp.bfloat16, **_compute(dtype))
    if cast == "fp8-row":
        return Fp8Embed.from_float(w, dtype=_compute_f32(dtype))
    return Embed(jnp.asarray(np.asarray(w)), dtype=_compute_f32(dtype))


def _param(arr) -> nnx.Param:
    return nnx.Param(_f32(arr))


def llama_from_tensors(
    config: LlamaConfig,
    tensors: Mapping[str, np.ndarray],
    *,
    cast: Cast = None,
    block_size: tuple[int, int] = (128, 128),
    dtype=None,
) -> LlamaForCausalLM:
    """Builds a :class:`LlamaForCausalLM` from Hugging Face tensor names (``model.layers.0...``).

    Args:
      config: the hyper-parameters (``LlamaConfig.from_hf(config_json)``).
      tensors: name -> array (numpy / ml_dtypes).
      cast: ``None`` (keep float weights float), ``"fp8-row"`` (quantize them, lossy) or
        ``"bf16"`` (frozen BF16 layers; BF16 weights unmodified), see the module docstring.
      block_size: block shape of ``weight_scale_inv`` scales.
      dtype: compute dtype of the linear layers (None: float32; bfloat16 for BF16 layers).

    Raises:
      KeyError: a weight the config needs is missing.
    """
    model = nnx.eval_shape(lambda: LlamaForCausalLM(config, nnx.Rngs(0), fp8=False))
    lin = dict(cast=cast, block_size=block_size, dtype=dtype)
    model.embed_tokens = embed_from_tensors(
        tensors, "model.embed_tokens.weight", cast=cast, dtype=dtype
    )
    layers = []
    for i in range(config.num_hidden_layers):
        layer = nnx.eval_shape(lambda: DecoderLayer(config, nnx.Rngs(0), fp8=False))
        layers.append(layer)
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(
                layer.self_attn, name, linear_from_tensors(tensors, f"{p}.self_attn.{name}", **lin)
            )
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(layer.mlp, name, linear_from_tensors(tensors, f"{p}.mlp.{name}", **lin))
        layer.input_layernorm.weight = _param(tensors[f"{p}.input_layernorm.weight"])
        layer.post_attention_layernorm.weight = _param(
            tensors[f"{p}.post_attention_layernorm.weight"]
        )
        if config.qk_norm:
            layer.self_attn.q_norm.weight = _param(tensors[f"{p}.self_attn.q_norm.weight"])
            layer.self_attn.k_norm.weight = _param(tensors[f"{p}.self_attn.k_norm.weight"])
    model.layers = stack_or_list(layers)  # scanned; a list if some layers differ (warns)
    model.norm.weight = _param(tensors["model.norm.weight"])
    if not config.tie_word_embeddings:
        model.lm_head = linear_from_tensors(tensors, "lm_head", **lin)
    model.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(config)))
    return model


def read_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a model folder (or of the folder holding a safetensors file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return json.loads((folder / "config.json").read_text())


def load_llama(
    path: str | os.PathLike,
    *,
    cast: Cast = None,
    config: dict | None = None,
    dtype=None,
) -> LlamaForCausalLM:
    """Loads a Llama-family checkpoint (Llama 2/3, SmolLM2, Fox-1, Qwen2/3 dense).

    Args:
      path: a model folder (``config.json`` + ``model.safetensors`` or a sharded index) or one
        ``.safetensors`` file with ``config.json`` beside it.
      cast: ``None``, ``"fp8-row"`` (lossy quantization of float weights) or ``"bf16"`` (a
        BF16 checkpoint loaded unmodified, as frozen BF16 layers), see the module docs.
      config: the ``config.json`` dict, if not read from ``path``.
      dtype: compute dtype of the linear layers (None: float32; bfloat16 for BF16 layers).
    """
    cfg = config if config is not None else read_config(path)
    block = (cfg.get("quantization_config") or {}).get("weight_block_size") or (128, 128)
    return llama_from_tensors(
        LlamaConfig.from_hf(cfg),
        read_safetensors(path),
        cast=cast,
        block_size=tuple(block),
        dtype=dtype,
    )
