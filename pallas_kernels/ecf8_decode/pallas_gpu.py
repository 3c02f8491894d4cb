"""ECF8 decode as a Pallas kernel lowered through Triton (GPU).

Why: decoding inside a jitted program on the GPU, one program per chunk, so the compressed
weights are the only copy in HBM until a layer needs them.

Numerics: integer only and bit-identical to ``reference.ecf8_decode_reference`` (it runs the
same ``decode_step``); every data-dependent index is clamped inside ``decode_step``.

Backend: Pallas -> Triton, selected explicitly with ``plgpu.CompilerParams`` so the same code
serves jax 0.10.2 - 0.12. Program ``c`` owns chunk ``c``: its 128 lanes are one Triton block;
the lane prefix sum is ``jnp.cumsum``; stream words, code-length deltas and symbols are read
as ``ref[index_vector]`` (a table read, which Triton lowers to a masked gather load); the sign
word row is reloaded every 32 steps. Refs are left unblocked (whole arrays in HBM) because
chunk and stream sizes are not powers of two; all loads and stores index them explicitly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.ecf8_decode.config import BlockSizes
from pallas_kernels.ecf8_decode.reference import (
    SIGN_WORD_BITS,
    LaneOps,
    decode_step,
    kernel_arrays,
    split_unit,
)


def gpu_lane_ops(stream_ref, symbols_ref) -> LaneOps:
    """Lane helpers for Triton: ``jnp.cumsum`` across lanes, tables read as ``ref[index]``."""
    return LaneOps(
        exclusive_prefix=lambda x: jnp.cumsum(x, axis=-1) - x,
        fetch=lambda pos: split_unit(stream_ref[pos >> 1], pos),
        lookup=lambda index: symbols_ref[index],
    )


def _decode_kernel(
    offsets_ref, stream_ref, signs_ref, limits_ref, deltas_ref, symbols_ref, out_ref, *, groups
):
    c = pl.program_id(0)
    lanes = signs_ref.shape[-1]
    limits = [limits_ref[k] for k in range(limits_ref.shape[0])]
    deltas = [deltas_ref[k] for k in range(deltas_ref.shape[0])]
    num_units = 2 * stream_ref.shape[0]
    ops = gpu_lane_ops(stream_ref, symbols_ref)

    def group_body(g, carry):
        sign_word = signs_ref[c, g, :]

        def step_body(j, carry):
            buf, nbits, base = carry
            t = g * SIGN_WORD_BITS + j
            buf, nbits, base, byte = decode_step(
                buf, nbits, base, ops, limits, deltas, sign_word, t, num_units
            )
            out_ref[c, t, :] = byte
            return buf, nbits, base

        return lax.fori_loop(0, SIGN_WORD_BITS, step_body, carry)

    init = (
        jnp.zeros((lanes,), jnp.uint32),
        jnp.zeros((lanes,), jnp.int32),
        jnp.full((1,), offsets_ref[c], jnp.int32),
    )
    lax.fori_loop(0, groups, group_body, init)


def ecf8_decode_gpu(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Triton ECF8 decode; same contract as ``reference.ecf8_decode_reference``.

    Returns:
      uint8[C * S * L].
    """
    block_sizes = block_sizes or BlockSizes.get_default(signs.shape, "pallas_gpu")
    chunks, groups, lanes = signs.shape
    steps = groups * SIGN_WORD_BITS
    if chunks == 0:
        return jnp.zeros((0,), jnp.uint8)
    arrays = kernel_arrays(stream, chunk_offsets, signs, limits, deltas, symbols)
    stream, chunk_offsets, signs, limits, deltas, symbols = arrays
    out = pl.pallas_call(
        functools.partial(_decode_kernel, groups=groups),
        out_shape=jax.ShapeDtypeStruct((chunks, steps, lanes), jnp.uint8),
        grid=(chunks,),
        interpret=interpret,
        name="ecf8_decode",
        compiler_params=plgpu.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages
        ),
        cost_estimate=pl.CostEstimate(
            flops=0,
            transcendentals=0,
            bytes_accessed=int(stream.size * 4 + signs.size * 4 + chunks * steps * lanes),
        ),
    )(chunk_offsets, stream, signs, limits, deltas, symbols)
    return out.reshape(-1)
