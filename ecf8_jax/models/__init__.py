"""Flax NNX models on FP8 / ECF8 weights: a Llama-family decoder and a BERT encoder."""

from ecf8_jax.models.llama import (
    KVCache,
    LlamaConfig,
    LlamaForCausalLM,
    generate,
    init_cache,
)

__all__ = ["KVCache", "LlamaConfig", "LlamaForCausalLM", "generate", "init_cache"]
