"""ecf8-jax: lossless entropy-coded FP8 (and, format version 2, BF16 / FP16) weights for JAX.

The short tour::

    import ecf8_jax
    t = ecf8_jax.encode(w_fp8)            # host-side numpy encoder -> Ecf8Tensor (a pytree)
    t16 = ecf8_jax.encode(w_bf16)         # bfloat16 / float16 too (~10.7 bits/weight)
    ecf8_jax.validate(t)                  # sizes and tables, before any decode
    ecf8_jax.verify_checksums(t)          # CRC-32 per chunk, on request
    w = jax.jit(ecf8_jax.decode)(t)       # bit-identical FP8 array
    print(ecf8_jax.stats(w_fp8))          # entropies, bits/weight, byte breakdown
    ecf8_jax.compress_model(model)        # an NNX model's FP8 layers -> ECF8, in place
"""

from ecf8_jax.codec import decode, decode_chunks, matmul, pad_stream, stack
from ecf8_jax.format import (
    FORMAT_VERSION,
    Ecf8Tensor,
    FormatError,
    encode,
    validate,
    verify_checksums,
)
from ecf8_jax.stats import Stats, stats

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "Ecf8Tensor",
    "FormatError",
    "Stats",
    "compress_model",
    "decode",
    "decode_chunks",
    "encode",
    "matmul",
    "pad_stream",
    "stack",
    "stats",
    "validate",
    "verify_checksums",
]


def __getattr__(name: str):
    # Flax is imported only by those who use the models (``ecf8_jax.nn``).
    if name == "compress_model":
        from ecf8_jax.nn import compress_model

        return compress_model
    raise AttributeError(f"module 'ecf8_jax' has no attribute {name!r}")
