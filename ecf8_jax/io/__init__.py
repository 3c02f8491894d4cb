"""Checkpoint loaders: Hugging Face safetensors, all-MiniLM-L6-v2, GGUF."""

from ecf8_jax.io.hf import linear_from_tensors, llama_from_tensors, load_llama, read_config
from ecf8_jax.io.safetensors import read_safetensors, write_safetensors

__all__ = [
    "linear_from_tensors",
    "llama_from_tensors",
    "load_llama",
    "read_config",
    "read_safetensors",
    "write_safetensors",
]
