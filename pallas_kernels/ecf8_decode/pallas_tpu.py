"""ECF8 decode as a Pallas kernel for TPU (Mosaic).

Why: decoding inside a jitted program on TPU, where Mosaic accepts no integer indexing of refs
by vectors and no general gathers, so the two lane helpers of ``reference.decode_step`` are
rebuilt from what it does accept.

Numerics: integer only and bit-identical to ``reference.ecf8_decode_reference`` (it runs the
same ``decode_step``); every data-dependent index is clamped.

Backend: Pallas -> Mosaic TPU. A program decodes 8 chunks at once, one per sublane of an
(8, 128) vreg. The exclusive lane prefix sum is a log-step scan of ``pltpu.roll`` and
``jnp.where``. A lane's unit lies within 192 words of its chunk's next unit, so each chunk
loads two aligned 128-word rows of the stream at a scalar row offset and every lane picks its
word with ``take_along_axis`` within those rows; the symbol table is one 128-lane row read the
same way. The stream is held whole in VMEM, padded to whole rows (a copy): this bounds the
tensor size by VMEM and is the first thing to replace (windowed DMA) once measured on a TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.ecf8_decode.config import BlockSizes
from pallas_kernels.ecf8_decode.reference import (
    SIGN_WORD_BITS,
    LaneOps,
    decode_step,
    kernel_arrays,
    split_unit,
)

SUBLANES = 8  # chunks per program: one per sublane of a 32-bit vreg
ROW_WORDS = 128  # stream words per VMEM row


def _exclusive_prefix(x):
    lane = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    inclusive = x
    shift = 1
    while shift < x.shape[-1]:
        rolled = pltpu.roll(inclusive, shift, x.ndim - 1)
        inclusive = inclusive + jnp.where(lane >= shift, rolled, 0)
        shift *= 2
    return inclusive - x


def take_lanes(row_block, index):
    """``row_block[i, index[i, j]]``: a lane gather within each row (Mosaic's dynamic gather)."""
    return jnp.take_along_axis(row_block, index, axis=1, mode="promise_in_bounds")


def _decode_kernel(
    offsets_ref,
    limits_ref,
    deltas_ref,
    stream_ref,
    signs_ref,
    symbols_ref,
    out_ref,
    *,
    chunks,
    groups,
    num_units,
):
    b = pl.program_id(0)
    lanes = signs_ref.shape[-1]
    rows = stream_ref.shape[0]
    limits = [limits_ref[k] for k in range(limits_ref.shape[0])]
    deltas = [deltas_ref[k] for k in range(deltas_ref.shape[0])]
    symbols = symbols_ref[...]
    sublane = lax.broadcasted_iota(jnp.int32, (SUBLANES, 1), 0)

    def fetch(pos):
        word_pos = pos >> 1
        first = jnp.clip(word_pos[:, :1] // ROW_WORDS, 0, rows - 2)  # [8, 1]
        low = jnp.concatenate(
            [stream_ref[pl.ds(first[i, 0], 1), :] for i in range(SUBLANES)], axis=0
        )
        high = jnp.concatenate(
            [stream_ref[pl.ds(first[i, 0] + 1, 1), :] for i in range(SUBLANES)], axis=0
        )
        rel = jnp.clip(word_pos - first * ROW_WORDS, 0, 2 * ROW_WORDS - 1)
        lane_index = rel & (ROW_WORDS - 1)
        word = jnp.where(rel < ROW_WORDS, take_lanes(low, lane_index), take_lanes(high, lane_index))
        return split_unit(word, pos)

    ops = LaneOps(
        exclusive_prefix=_exclusive_prefix,
        fetch=fetch,
        lookup=lambda index: take_lanes(symbols, index),
    )

    base = jnp.zeros((SUBLANES, 1), jnp.int32)
    for i in range(SUBLANES):
        start = offsets_ref[jnp.minimum(b * SUBLANES + i, chunks)]
        base = jnp.where(sublane == i, start, base)

    step_index = lax.broadcasted_iota(jnp.int32, (SUBLANES, SIGN_WORD_BITS, lanes), 1)

    def group_body(g, carry):
        sign_word = signs_ref[:, pl.ds(g, 1), :].reshape(SUBLANES, lanes)

        def step_body(j, state):
            buf, nbits, base, block = state
            buf, nbits, base, byte = decode_step(
                buf, nbits, base, ops, limits, deltas, sign_word, j, num_units
            )
            block = jnp.where(step_index == j, byte.astype(jnp.int32)[:, None, :], block)
            return buf, nbits, base, block

        block = jnp.zeros((SUBLANES, SIGN_WORD_BITS, lanes), jnp.int32)
        buf, nbits, base, block = lax.fori_loop(0, SIGN_WORD_BITS, step_body, (*carry, block))
        start = pl.multiple_of(g * SIGN_WORD_BITS, SIGN_WORD_BITS)
        out_ref[:, pl.ds(start, SIGN_WORD_BITS), :] = block.astype(jnp.uint8)  # [8, 32, L]
        return buf, nbits, base

    init = (
        jnp.zeros((SUBLANES, lanes), jnp.uint32),
        jnp.zeros((SUBLANES, lanes), jnp.int32),
        base,
    )
    lax.fori_loop(0, groups, group_body, init)


def ecf8_decode_tpu(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool | object = False,
) -> jax.Array:
    """Mosaic TPU ECF8 decode; same contract as ``reference.ecf8_decode_reference``.

    Args:
      block_sizes: launch parameters (default: ``BlockSizes.get_default``); the TPU kernel
        reads ``vmem_limit_bytes``.
      interpret: ``False``, or TPU interpret-mode parameters (``pltpu.InterpretParams()``)
        to run on CPU.

    Returns:
      uint8[C * S * L].
    """
    block_sizes = block_sizes or BlockSizes.get_default(signs.shape, "pallas_tpu")
    chunks, groups, lanes = signs.shape
    steps = groups * SIGN_WORD_BITS
    if chunks == 0:
        return jnp.zeros((0,), jnp.uint8)
    stream, chunk_offsets, signs, limits, deltas, symbols = kernel_arrays(
        stream, chunk_offsets, signs, limits, deltas, symbols
    )
    num_units = 2 * stream.shape[0]
    rows = -(-stream.shape[0] // ROW_WORDS) + 2  # two spare rows: a window never runs off
    stream2d = jnp.pad(stream, (0, rows * ROW_WORDS - stream.shape[0])).reshape(rows, ROW_WORDS)
    symbols_block = jnp.broadcast_to(symbols[None, :], (SUBLANES, lanes))
    kernel = functools.partial(_decode_kernel, chunks=chunks, groups=groups, num_units=num_units)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(pl.cdiv(chunks, SUBLANES),),
        in_specs=[
            pl.BlockSpec((rows, ROW_WORDS), lambda b, *_: (0, 0)),
            pl.BlockSpec((SUBLANES, groups, lanes), lambda b, *_: (b, 0, 0)),
            pl.BlockSpec((SUBLANES, lanes), lambda b, *_: (0, 0)),
        ],
        out_specs=pl.BlockSpec((SUBLANES, steps, lanes), lambda b, *_: (b, 0, 0)),
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((chunks, steps, lanes), jnp.uint8),
        grid_spec=grid_spec,
        interpret=interpret,
        name="ecf8_decode",
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=block_sizes.vmem_limit_bytes
        ),
        cost_estimate=pl.CostEstimate(
            flops=0,
            transcendentals=0,
            bytes_accessed=int(stream.size * 4 + signs.size * 4 + chunks * steps * lanes),
        ),
    )(
        chunk_offsets.astype(jnp.int32),
        limits,
        deltas,
        stream2d,
        signs,
        symbols_block,
    )
    return out.reshape(-1)
