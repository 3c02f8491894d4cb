"""ECF8 version-2 decode as a Pallas kernel for TPU (Mosaic).

Why: version 1's TPU decode compiled to 189 bundles per step of 1024 weights (~8 GB/s on a
v5e) and held the whole stream in VMEM, so a 256 MiB tensor did not compile. Version 2 scans
and fetches once per four weights, reads codes from a 256-entry table with two lane gathers,
and streams the compressed words of each program's chunks into a fixed-size VMEM window by
DMA, so it compiles at any tensor size.

Numerics: integer only and bit-identical to ``reference.grouped_decode_reference`` (it runs the
same ``decode_group``); window rows and stream positions are clamped, the DMA source range is
clamped inside the stream.

Backend: Pallas -> Mosaic TPU. A program decodes 8 chunks at once, one per sublane of an
(8, 128) vreg. Their words are contiguous in the stream, at most ``2 * S`` rows of 128 words;
the program copies them (plus two spare rows) from HBM into a VMEM window. The exclusive lane
prefix sum is one MXU matmul with a triangular ones matrix. A group's refills of one
chunk lie within 128 words of its next word, so each chunk reads two window rows at a scalar
row offset and every lane picks its word with ``take_along_axis``; the chunk's table is one
128-lane row holding two 16-bit entries a word (``pack_lut``): one gather and a shift a code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.ecf8_decode.pallas_tpu import take_lanes
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.reference import (
    LUT_SIZE,
    GroupOps,
    check_bits,
    decode_group,
    groups_per_raw_word,
    kernel_arrays,
    words_per_group,
)

SUBLANES = 8  # chunks per vreg: one per sublane of a 32-bit vreg
ROW_WORDS = 128  # stream words per VMEM row
SPARE_ROWS = 2  # a chunk's two-row read never leaves the window


def window_rows(chunks: int, steps: int, stream_rows: int) -> int:
    """Rows of the VMEM window: ``chunks`` chunks of at most ``steps / 4 + 2`` rows each
    (every code 8 bits long, and each lane's look-ahead word) plus the spare rows, but never
    more than the stream has."""
    return min(chunks * (steps // 4 + 2) + SPARE_ROWS, stream_rows)


def _exclusive_prefix_mxu(x):
    """Exclusive lane prefix sum of small non-negative ints as one (rows, 128) @ (128, 128)
    matmul with a strictly-upper-triangular ones matrix: exact (sums <= 128 in float32)."""
    k = lax.broadcasted_iota(jnp.int32, (x.shape[-1], x.shape[-1]), 0)
    l = lax.broadcasted_iota(jnp.int32, (x.shape[-1], x.shape[-1]), 1)
    tri = (k < l).astype(jnp.float32)
    out = jnp.dot(x.astype(jnp.float32), tri, preferred_element_type=jnp.float32)
    return out.astype(jnp.int32)


def program_setup(offsets_ref, threshold_ref, stream_hbm, lut_ref, window, sem, *,
                  block, chunks, stream_rows):  # fmt: skip
    """Starts program ``b``'s window DMA and builds its chunks' decoding helpers.

    Shared by the decode and the fused GEMV. Returns ``(ops, threshold, base, copy)``: the
    ``GroupOps`` reading the window and the chunk tables, per-sublane int32[block, 1]
    threshold and first word, and the started copy (``copy.wait()`` before the first fetch).
    """
    b = pl.program_id(0)
    rows = window.shape[0]
    first = b * block
    # The program's words start at its first chunk's offset; the window starts on that row,
    # moved back where needed so that it stays inside the stream.
    start_row = jnp.minimum(offsets_ref[first] // ROW_WORDS, stream_rows - rows)
    copy = pltpu.make_async_copy(stream_hbm.at[pl.ds(start_row, rows)], window, sem)
    copy.start()

    sublane = lax.broadcasted_iota(jnp.int32, (block, 1), 0)
    base = jnp.zeros((block, 1), jnp.int32)
    threshold = jnp.zeros((block, 1), jnp.int32)
    for i in range(block):
        c = jnp.minimum(first + i, chunks - 1)
        base = jnp.where(sublane == i, offsets_ref[c], base)
        threshold = jnp.where(sublane == i, threshold_ref[c], threshold)
    pairs = lut_ref[...]  # [block, 128]: entries 2i (low half) and 2i + 1 (high half)

    def fetch(pos):
        pos = pos - start_row * ROW_WORDS  # stream word -> window word
        row = jnp.clip(pos[:, :1] // ROW_WORDS, 0, rows - 2)  # [block, 1]
        low = jnp.concatenate([window[pl.ds(row[i, 0], 1), :] for i in range(block)], 0)
        high = jnp.concatenate([window[pl.ds(row[i, 0] + 1, 1), :] for i in range(block)], 0)
        rel = jnp.clip(pos - row * ROW_WORDS, 0, 2 * ROW_WORDS - 1)
        lane_index = rel & (ROW_WORDS - 1)
        return jnp.where(rel < ROW_WORDS, take_lanes(low, lane_index), take_lanes(high, lane_index))

    def lookup(peek):  # one lane gather per code: the pair, then its half
        pair = take_lanes(pairs, peek >> 1)
        return (pair >> ((peek & 1) << 4)) & 0xFFFF

    ops = GroupOps(exclusive_prefix=_exclusive_prefix_mxu, fetch=fetch, lookup=lookup)
    return ops, threshold, base, copy


def _decode_kernel(
    offsets_ref,
    threshold_ref,
    stream_hbm,
    raw_ref,
    lut_ref,
    out_ref,
    window,
    sem,
    *,
    chunks,
    raw_rows,
    stream_rows,
    num_words,
    bits,
):
    block, _, lanes = raw_ref.shape
    ops, threshold, base, copy = program_setup(
        offsets_ref, threshold_ref, stream_hbm, lut_ref, window, sem,
        block=block, chunks=chunks, stream_rows=stream_rows,
    )  # fmt: skip
    per_raw, per_group = groups_per_raw_word(bits), words_per_group(bits)

    def body(h, carry):
        hi, lo, nbits, base = carry
        raw_word = raw_ref[:, pl.ds(h, 1), :].reshape(block, lanes)
        for part in range(per_raw):
            hi, lo, nbits, base, out = decode_group(
                hi, lo, nbits, base, threshold, ops, raw_word, part, num_words, bits
            )
            for p in range(per_group):
                row = (per_raw * h + part) * per_group + p
                out_ref[:, pl.ds(row, 1), :] = out[p].reshape(block, 1, lanes)
        return hi, lo, nbits, base

    copy.wait()
    zeros = jnp.zeros((block, lanes), jnp.uint32)
    init = (zeros, zeros, jnp.zeros((block, lanes), jnp.int32), base)
    lax.fori_loop(0, raw_rows, body, init)


def pack_lut(lut: jax.Array) -> jax.Array:
    """int32[C, 256] tables -> int32[C, 128]: entries ``2i`` and ``2i + 1`` in the low and high
    16 bits of word ``i`` (entries are at most 12 bits), so a code is one 128-lane gather."""
    return (lut[:, 0::2] & 0xFFFF) | (lut[:, 1::2] << 16)


def stream_rows_of(stream: jax.Array) -> tuple[jax.Array, int]:
    """The stream as rows of 128 words (zero-padded, at least ``SPARE_ROWS``) and their count."""
    stream_rows = max(-(-stream.shape[0] // ROW_WORDS), SPARE_ROWS)
    stream2d = jnp.pad(stream, (0, stream_rows * ROW_WORDS - stream.shape[0]))
    return stream2d.reshape(stream_rows, ROW_WORDS), stream_rows


def grouped_decode_tpu(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    *,
    bits: int = 8,
    block_sizes: BlockSizes | None = None,
    interpret: bool | object = False,
) -> jax.Array:
    """Mosaic TPU version-2 decode; same contract as ``reference.grouped_decode_reference``.

    Args:
      bits: value width, 8 or 16.
      block_sizes: ``chunks_per_program`` (a multiple of 8: independent vregs the scheduler
        can interleave) and ``vmem_limit_bytes``.
      interpret: ``False``, or TPU interpret-mode parameters (``pltpu.InterpretParams()``)
        to run on CPU.

    Returns:
      uint32[C, S * bits // 32, L].
    """
    check_bits(bits)
    chunks, raw_rows, lanes = raw.shape
    per_raw = groups_per_raw_word(bits)
    steps = 4 * per_raw * raw_rows
    out_rows = raw_rows * per_raw * words_per_group(bits)
    if chunks == 0:
        return jnp.zeros((0, out_rows, lanes), jnp.uint32)
    stream, chunk_offsets, raw, lut, threshold = kernel_arrays(
        stream, chunk_offsets, raw, lut, threshold
    )
    stream2d, stream_rows = stream_rows_of(stream)
    block_sizes = block_sizes or BlockSizes.get_default(raw.shape, "pallas_tpu")
    block = block_sizes.chunks_per_program
    rows = window_rows(block, steps, stream_rows)
    programs = pl.cdiv(chunks, block)
    kernel = functools.partial(
        _decode_kernel,
        chunks=chunks,
        raw_rows=raw_rows,
        stream_rows=stream_rows,
        num_words=stream.shape[0],
        bits=bits,
    )
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(programs,),
        in_specs=[
            pl.BlockSpec(memory_space=pl.ANY),
            pl.BlockSpec((block, raw_rows, lanes), lambda b, *_: (b, 0, 0)),
            pl.BlockSpec((block, LUT_SIZE // 2), lambda b, *_: (b, 0)),
        ],
        out_specs=pl.BlockSpec((block, out_rows, lanes), lambda b, *_: (b, 0, 0)),
        scratch_shapes=[pltpu.VMEM((rows, ROW_WORDS), jnp.uint32), pltpu.SemaphoreType.DMA],
    )
    out_bytes = chunks * out_rows * lanes * 4
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((chunks, out_rows, lanes), jnp.uint32),
        grid_spec=grid_spec,
        interpret=interpret,
        name="ecf8_grouped_decode",
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=block_sizes.vmem_limit_bytes
        ),
        cost_estimate=pl.CostEstimate(
            flops=0,
            transcendentals=0,
            bytes_accessed=int(stream.size * 4 + raw.size * 4 + lut.size * 4 + out_bytes),
        ),
    )(chunk_offsets.astype(jnp.int32), threshold, stream2d, raw, pack_lut(lut))
