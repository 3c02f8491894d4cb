"""Flax NNX layers on scaled FP8 or BF16 weights, raw or ECF8-coded, and in-place model conversion.

The short tour::

    from ecf8_jax import nn as enn
    layer = enn.Fp8Linear(w_fp8, scale)          # [out, in] FP8 + per-channel/tensor/block scale
    y = layer(x)                                 # float32, see ``layers`` for the numerics
    layer = enn.Bf16Linear(w_bf16)              # BF16, no scale: bf16 x bf16 -> float32
    model = enn.compress_model(model)            # every Fp8* / Bf16* layer -> Ecf8*
    y2 = nnx.jit(lambda m, x: m(x))(model, x)    # decodes inside the jitted forward; y2 == y bitwise
"""

from ecf8_jax.nn.adapters import (
    AdapterParam,
    LoRA,
    SparseDelta,
    add_lora,
    add_sparse_delta,
    linear_weights,
    merge_adapters,
    merge_delta,
    merge_lora,
)
from ecf8_jax.nn.convert import compress_layer, compress_model, pad_streams_like
from ecf8_jax.nn.layers import (
    Bf16Embed,
    Bf16Linear,
    Bf16Weight,
    Ecf8Embed,
    Ecf8Linear,
    Ecf8Weight,
    Embed,
    Fp8Embed,
    Fp8Linear,
    Fp8Scale,
    Fp8Weight,
    Linear,
    dequantize,
    fp8_linear,
)
from ecf8_jax.nn.stack import Stacked, scan_layers, shard_model, stack_or_list

__all__ = [
    "AdapterParam",
    "Bf16Embed",
    "Bf16Linear",
    "Bf16Weight",
    "Ecf8Embed",
    "Ecf8Linear",
    "Ecf8Weight",
    "Embed",
    "Fp8Embed",
    "Fp8Linear",
    "Fp8Scale",
    "Fp8Weight",
    "Linear",
    "LoRA",
    "SparseDelta",
    "Stacked",
    "add_lora",
    "add_sparse_delta",
    "compress_layer",
    "compress_model",
    "pad_streams_like",
    "linear_weights",
    "merge_adapters",
    "merge_delta",
    "merge_lora",
    "dequantize",
    "fp8_linear",
    "scan_layers",
    "shard_model",
    "stack_or_list",
]
