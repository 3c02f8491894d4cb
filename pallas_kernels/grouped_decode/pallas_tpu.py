"""ECF8 version-2 decode as a Pallas kernel for TPU (Mosaic).

Why: version 1's TPU decode compiled to 189 bundles per step of 1024 weights (~8 GB/s on a
v5e) and held the whole stream in VMEM, so a 256 MiB tensor did not compile. Version 2 scans
and fetches once per four weights, reads codes from a 256-entry table with two lane gathers,
and streams the compressed words of each program's chunks into a fixed-size VMEM window by
DMA, so it compiles at any tensor size.

Numerics: integer only and bit-identical to ``reference.grouped_decode_reference`` for every
tensor: ``_decode_group_fast`` is ``reference.decode_group`` rewritten with fewer vector
operations under the invariants that ``grouped.kernel_args`` guarantees for any stored tensor,
malformed ones included (table entries 1 to T / 4 <= 8 bits long, T <= 32; chunk offsets
non-decreasing, as ``validate`` requires). Stream positions are clamped like the reference's
within the program's window; the DMA source range is clamped inside the stream.

Backend: Pallas -> Mosaic TPU. A program decodes 8 chunks at once, one per sublane of an
(8, 128) vreg. Their words are contiguous in the stream, at most ``2 * S`` rows of 128 words;
the program copies them (plus two spare rows) from HBM into a VMEM window. A loop iteration
decodes one (8, 128) output tile a chunk (8 groups FP8, 4 groups 16-bit): its raw words are
one block load transposed to chunk-per-sublane, its 8 output rows one transposed block store.
The exclusive lane prefix sum is one MXU matmul with a triangular ones matrix (its float
result becomes an int by adding 2**23 and reinterpreting the bits). Every second group, each
chunk loads the three window rows from its next word's row on (one scalar a chunk, read out
of the vector, and three (8, 128) loads starting ``i`` rows early so that sublane ``i`` is
the chunk's row; a select tree merges the 8); both groups pick two of them, and every lane its
word with ``take_along_axis``. The chunk's table is one 128-lane row holding two 16-bit
entries a word (``pack_lut``): one gather and a shift a code. The fused TPU GEMV
(``grouped_matmul.pallas_tpu``) decodes with the same ``program_start`` and
``decode_groups``; only the loop around them and what happens to the words differ.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.ecf8_decode.pallas_tpu import take_lanes
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.reference import (
    GROUP,
    LENGTH_MASK,
    LUT_SIZE,
    WORD_BITS,
    check_bits,
    groups_per_raw_word,
    kernel_arrays,
    spread_bytes,
    spread_nibbles,
    words_per_group,
)

SUBLANES = 8  # chunks per vreg: one per sublane of a 32-bit vreg
ROW_WORDS = 128  # stream words per VMEM row
TILE_ROWS = 8  # output rows a chunk an iteration: one (8, 128) tile
WINDOW_PAD = SUBLANES  # rows in front of the decode's window (``_rows_at``)
SPARE_ROWS = 2  # a chunk's two-row read never leaves the window


def window_rows(chunks: int, steps: int, stream_rows: int) -> int:
    """Rows of the VMEM window: ``chunks`` chunks of at most ``steps / 4 + 2`` rows each
    (every code 8 bits long, and each lane's look-ahead word) plus the spare rows, but never
    more than the stream has."""
    return min(chunks * (steps // 4 + 2) + SPARE_ROWS, stream_rows)


def _rows_at(window, row, count):
    """Rows ``row[i] + k`` (k < ``count``) of the window at sublane ``i``: per chunk one
    scalar and ``count`` (8, 128) loads starting ``i`` rows early (the window has
    ``WINDOW_PAD`` rows in front), so that sublane ``i`` of each is the wanted row; a tree of
    selects merges the chunks."""
    block = row.shape[0]
    sublane = lax.broadcasted_iota(jnp.int32, (SUBLANES, ROW_WORDS), 0)

    def merge(tiles):  # sublane i from tiles[i]
        while len(tiles) > 1:
            bit = SUBLANES // len(tiles)  # tiles[j] holds sublanes j * bit .. (j + 1) * bit - 1
            tiles = [
                jnp.where(sublane >= (2 * j + 1) * bit, tiles[2 * j + 1], tiles[2 * j])
                for j in range(len(tiles) // 2)
            ]
        return tiles[0]

    out = [[] for _ in range(count)]
    for v in range(block // SUBLANES):
        loads = [[] for _ in range(count)]
        for i in range(SUBLANES):
            r = row[v * SUBLANES + i, 0] + (WINDOW_PAD - i)
            for k in range(count):
                loads[k].append(window[pl.ds(r + k, SUBLANES), :])
        for k in range(count):
            out[k].append(merge(loads[k]))
    return [jnp.concatenate(o, 0) for o in out]


def groups_per_iteration(bits: int) -> int:
    """Groups a loop iteration decodes per chunk: one (8, 128) output tile (8 for FP8, 4 for
    16-bit values)."""
    return TILE_ROWS // words_per_group(bits)


_MAGIC = 2.0**23  # float32 n + 2**23 has the bits 0x4B000000 + n for 0 <= n < 2**23
_MAGIC_BITS = 0x4B000000


def _decode_group_fast(hi, lo, nbits, base, threshold, tri, pairs, low, high, row_start, last,
                       raw_word, g, bits):  # fmt: skip
    """``reference.decode_group`` with the TPU's operations cut down, bit-exact under the
    invariants that ``grouped.kernel_args`` guarantees for any tensor (table entries 1 to
    T / 4 <= 8 bits long, chunk offsets non-decreasing and below 2**31):

    * a lane refills only below T <= 32 bits, so its ``lo`` is zero there: the refill sets
      ``lo`` instead of or-ing into it, and its shifts (``nbits``, ``31 - nbits``) are in range;
    * a group consumes at most T <= 32 bits, all in ``hi`` after the refill: symbol ``j``
      peeks ``hi << o_j`` (``o_j`` <= 24, the bits consumed before it; formed as the previous
      peek shifted by its code's length, one op after the table read) and the 64-bit buffer
      shifts once a group, by ``o`` in [4, 32] split as ``o_3 + len_3`` (each shift < 32);
    * the prefix sum comes off the MXU as float32 and becomes an int by adding 2**23 and
      reinterpreting the bits (the ``0x4B000000`` is folded into the per-chunk offset);
    * stream positions are clamped once: ``base`` (window-relative) is never negative, so
      ``clip(base + prefix, 0, W - 1)`` is ``min(base + prefix, last)``, taken relative to the
      first of the two rows ``low``, ``high`` (starting at window word ``row_start``).
    """
    need = nbits < threshold
    needf = jnp.where(need, 1.0, 0.0)
    prefix = jnp.dot(needf, tri, preferred_element_type=jnp.float32)
    count = jnp.sum(needf, axis=-1, keepdims=True) + _MAGIC  # [block, 1], exact
    lim = last - row_start
    rel = lax.bitcast_convert_type(prefix + _MAGIC, jnp.int32) + (base - row_start - _MAGIC_BITS)
    rel = jnp.minimum(rel, lim)  # in [0, 255]: window word row_start + rel
    lane = rel & (ROW_WORDS - 1)
    word = jnp.where(rel < ROW_WORDS, take_lanes(low, lane), take_lanes(high, lane))
    shift = nbits.astype(jnp.uint32)
    hi = jnp.where(need, hi | (word >> shift), hi)
    lo = jnp.where(need, (word << 1) << (31 - shift), lo)
    nbits = jnp.where(need, nbits + WORD_BITS, nbits)
    base = base + (lax.bitcast_convert_type(count, jnp.int32) - _MAGIC_BITS)

    if bits == 8:
        out = [spread_nibbles(raw_word, g)]
    else:
        out = [spread_bytes(raw_word, p) for p in range(2)]
    per_word = WORD_BITS // bits
    o, x = None, hi
    for j in range(GROUP):
        pair = take_lanes(pairs, (x >> 25).astype(jnp.int32))
        entry = pair >> ((x >> 20) & 16)
        length = entry & LENGTH_MASK
        o_last, o = o, (length if o is None else o + length)
        p, k = divmod(j, per_word)
        at = bits * k + bits // 2 - 1 - 4  # symbol bits 4.. of the entry -> bit 8k+3 / 16k+7
        sym = entry & 0xFF0
        out[p] = out[p] | (sym << at if at >= 0 else sym >> -at)
        if j < GROUP - 1:
            x = x << length  # hi << o_(j+1), one op after the table read
    hi = (x << length) | (lo >> (WORD_BITS - o))
    lo = (lo << o_last) << length
    nbits = nbits - o.astype(jnp.int32)
    return hi, lo, nbits, base, tuple(out)


def window_scratch(block: int, steps: int, stream_rows: int) -> list:
    """The scratch a program's decode needs: its VMEM window (``window_rows`` rows and
    ``WINDOW_PAD`` rows either side, for ``_rows_at``) and the DMA semaphore."""
    rows = window_rows(block, steps, stream_rows)
    return [
        pltpu.VMEM((rows + 2 * WINDOW_PAD, ROW_WORDS), jnp.uint32),
        pltpu.SemaphoreType.DMA,
    ]


class ProgramState(NamedTuple):
    """What ``decode_groups`` needs besides the carry, fixed for a program.

    Attributes:
      window: the VMEM window ref (``window_scratch``), the stream's rows from ``start_row``
        on at row ``WINDOW_PAD``.
      lut_ref: int32[block, 128] the chunks' packed tables (``pack_lut``).
      threshold: int32[block, 1] per chunk.
      last: int32 scalar, the last window word a lane may read.
    """

    window: object
    lut_ref: object
    threshold: jax.Array
    last: jax.Array


def program_start(offsets_ref, threshold_ref, stream_hbm, lut_ref, window, sem, *,
                  chunks, stream_rows, num_words):  # fmt: skip
    """Starts program ``b``'s window DMA; shared by the decode and the fused GEMV.

    Returns ``(program, carry, copy)``: the ``ProgramState``, the initial carry
    ``(hi, lo, nbits, base)`` of ``decode_groups`` (``base`` the chunks' first words,
    window-relative) and the started copy (``copy.wait()`` before the first group).
    """
    block = lut_ref.shape[0]
    b = pl.program_id(0)
    rows = window.shape[0] - 2 * WINDOW_PAD
    first = b * block
    # The program's words start at its first chunk's offset; the window starts on that row,
    # moved back where needed so that it stays inside the stream.
    start_row = jnp.minimum(offsets_ref[first] // ROW_WORDS, stream_rows - rows)
    copy = pltpu.make_async_copy(
        stream_hbm.at[pl.ds(start_row, rows)], window.at[pl.ds(WINDOW_PAD, rows)], sem
    )
    copy.start()
    sublane = lax.broadcasted_iota(jnp.int32, (block, 1), 0)
    base = jnp.zeros((block, 1), jnp.int32)
    threshold = jnp.zeros((block, 1), jnp.int32)
    for i in range(block):
        c = jnp.minimum(first + i, chunks - 1)
        base = jnp.where(sublane == i, offsets_ref[c], base)
        threshold = jnp.where(sublane == i, threshold_ref[c], threshold)
    # Window-relative: ``base`` is the next word's window position (offsets are non-decreasing,
    # so never below the window); ``last`` the last word a lane may read (the stream's, or the
    # window's when the stream goes on past it).
    start = start_row * ROW_WORDS
    last = jnp.minimum(num_words - 1 - start, rows * ROW_WORDS - 1)
    zeros = jnp.zeros((block, ROW_WORDS), jnp.uint32)
    carry = (zeros, zeros, jnp.zeros((block, ROW_WORDS), jnp.int32), base - start)
    return ProgramState(window, lut_ref, threshold, last), carry, copy


def decode_groups(program: ProgramState, carry, raw_words, g, bits: int):
    """Decodes ``len(raw_words)`` consecutive groups of the program's chunks, the first being
    group ``g`` (static or traced; for FP8 its parity picks the raw nibbles); shared by the
    decode and the fused GEMV.

    Args:
      program: from ``program_start``.
      carry: ``(hi, lo, nbits, base)``, as ``program_start`` or the last call returned it.
      raw_words: per group, its uint32[block, 128] raw word (FP8: two groups share one).
      g: the first group's index.
      bits: 8 or 16, static.

    Returns:
      ``(carry, outs)``: per group the tuple of its ``words_per_group(bits)`` output words.
    """
    window, threshold, last = program.window, program.threshold, program.last
    rows = window.shape[0] - 2 * WINDOW_PAD
    hi, lo, nbits, base = carry
    lanes = hi.shape[-1]
    pairs = program.lut_ref[...].astype(jnp.uint32)
    k = lax.broadcasted_iota(jnp.int32, (lanes, lanes), 0)
    l = lax.broadcasted_iota(jnp.int32, (lanes, lanes), 1)
    tri = jnp.where(k < l, 1.0, 0.0).astype(jnp.float32)
    outs = []
    for j, raw_word in enumerate(raw_words):
        # Rows for this group and the next (their words lie within 256 of ``base``); a row
        # clamped to rows - 2 leaves every read of both groups within its first two rows.
        if j % 2 == 0:
            pair_start = jnp.minimum(base >> 7, rows - 2) << 7
            rows3 = _rows_at(window, pair_start >> 7, 3)
            low, high, row_start = rows3[0], rows3[1], pair_start
        else:
            step = (base - pair_start) >= ROW_WORDS  # [block, 1]
            low = jnp.where(step, rows3[1], rows3[0])
            high = jnp.where(step, rows3[2], rows3[1])
            row_start = pair_start + jnp.where(step, ROW_WORDS, 0)
        hi, lo, nbits, base, out = _decode_group_fast(
            hi, lo, nbits, base, threshold, tri, pairs, low, high, row_start, last, raw_word,
            g + j, bits,
        )  # fmt: skip
        outs.append(out)
    return (hi, lo, nbits, base), outs


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
    program, carry, copy = program_start(
        offsets_ref, threshold_ref, stream_hbm, lut_ref, window, sem,
        chunks=chunks, stream_rows=stream_rows, num_words=num_words,
    )  # fmt: skip
    per_raw, per_iter = groups_per_raw_word(bits), groups_per_iteration(bits)
    raw_per_iter = per_iter // per_raw

    def body(t, carry):
        raw_block = raw_ref[:, pl.ds(t * raw_per_iter, raw_per_iter), :]  # [block, r, lanes]
        raw_words = jnp.swapaxes(raw_block, 0, 1)  # [r, block, lanes]
        carry, outs = decode_groups(
            program, carry, [raw_words[g // per_raw] for g in range(per_iter)], 0, bits
        )
        out_ref[:, pl.ds(t * TILE_ROWS, TILE_ROWS), :] = jnp.stack(sum(outs, ()), axis=1)
        return carry

    copy.wait()
    lax.fori_loop(0, raw_rows // raw_per_iter, body, carry)


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
        scratch_shapes=window_scratch(block, steps, stream_rows),
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
