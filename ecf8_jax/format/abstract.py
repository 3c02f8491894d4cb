"""Encodings whose data is not known yet: shapes for ahead-of-time compilation.

A compressed tensor's stream length depends on its data, so a model cannot be compiled before
its weights are encoded -- unless every stream gets a fixed capacity. ``abstract_encoding``
gives the arrays a version-2 encoding of ``shape`` would have, with a stream of
``code_bits_per_weight`` bits per weight (plus each lane's look-ahead words); real tensors are
then zero-padded to that capacity (``codec.pad_stream``, which refuses a stream that does not
fit), and a program compiled for the abstract arrays runs them. Under ``jax.eval_shape`` /
``nnx.eval_shape`` the zeros are abstract: nothing is allocated.
"""

from __future__ import annotations

import math

import numpy as np

from ecf8_jax.format import grouped
from ecf8_jax.format.constants import LANES
from ecf8_jax.format.encoder import choose_chunk_steps, num_chunks
from ecf8_jax.format.tensor import Ecf8Tensor

CODE_BITS_CAPACITY = 3.5
"""Default stream capacity in code bits per weight (the exponent symbols; the raw plane is
extra). Measured: MiniLM per-row FP8 2.71, SmolLM2 FP8 ~2.9, MiniLM BF16 2.74; random bytes
4.0 would not fit (they compress to nothing: keep such tensors raw or raise the capacity)."""


def stream_capacity(size: int, chunks: int, steps: int, code_bits_per_weight: float) -> int:
    """Stream words for ``size`` weights at ``code_bits_per_weight``: the codes, two look-ahead
    words per lane and chunk, never more than the format's per-chunk bound allows."""
    words = math.ceil(size * code_bits_per_weight / 32) + 2 * LANES * chunks
    return max(1, min(words, chunks * grouped.max_chunk_words(steps)))


def abstract_encoding(
    shape: tuple[int, ...],
    dtype: str,
    *,
    chunk_steps: int | None = None,
    balance: bool = True,
    code_bits_per_weight: float = CODE_BITS_CAPACITY,
    zeros=np.zeros,
) -> Ecf8Tensor:
    """The version-2 ``Ecf8Tensor`` of a ``shape``/``dtype`` tensor, filled with zeros.

    Args:
      shape: the tensor's shape.
      dtype: its dtype name (FP8, ``bfloat16`` or ``float16``).
      chunk_steps, balance: as for ``encode``.
      code_bits_per_weight: the stream's capacity.
      zeros: ``(shape, dtype) -> array`` (``jnp.zeros`` under ``eval_shape``).

    Returns:
      An ``Ecf8Tensor`` with the leaf shapes and static metadata ``encode`` would give a tensor
      whose stream fits the capacity (its checksums are zeros: it holds no data).
    """
    width = grouped.width_of_dtype(dtype)
    n = math.prod(shape)
    steps = choose_chunk_steps(n, chunk_steps, version=2, balance=balance)
    chunks = num_chunks(n, steps)
    words = stream_capacity(n, chunks, steps, code_bits_per_weight)
    return Ecf8Tensor(
        stream=zeros((words,), np.uint32),
        chunk_offsets=zeros((chunks + 1,), np.uint32),
        signs=zeros((chunks, steps // width.raws_per_word, LANES), np.uint32),
        code_lengths=zeros((chunks, width.num_symbols), np.uint8),
        checksums=zeros((chunks + 1,), np.uint32),
        shape=tuple(int(d) for d in shape),
        dtype=dtype,
        chunk_steps=steps,
        version=2,
        layout="flat",
    )
