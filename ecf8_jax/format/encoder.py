"""Host-side, vectorized numpy encoder: ``encode`` (both versions) and format version 1.

Version 2's block encoder is ``grouped_encoder.py``; this module chooses the chunking, builds
the ``Ecf8Tensor`` and its checksums for either.

The encoder simulates the decoder's refill schedule in closed form instead of stepping it: a
lane refills (takes the next 16-bit unit of its chunk's stream) before step ``t`` exactly when
it holds fewer than 16 bits, so after ``t`` steps it has taken ``ceil(B_t / 16) + 1`` units,
where ``B_t`` is the number of code bits it consumed in steps ``< t``. Units are written to the
stream in the order the decoder takes them: chunk, then step, then lane.
"""

from __future__ import annotations

import operator

import jax
import numpy as np

from ecf8_jax.format import grouped
from ecf8_jax.format.codebook import canonical_codes, code_lengths
from ecf8_jax.format.constants import (
    DEFAULT_CHUNK_STEPS,
    DTYPES,
    FORMAT_VERSION,
    FP8_DTYPES,
    LANES,
    LAYOUTS,
    MAGNITUDE_MASK,
    MAX_CODE_LEN,
    NUM_SYMBOLS,
    SIGN_SHIFT,
    SIGN_WORD_BITS,
    SUPPORTED_VERSIONS,
    UNIT_BITS,
)
from ecf8_jax.format.grouped_encoder import encode_grouped
from ecf8_jax.format.tensor import Ecf8Tensor, compute_checksums, num_chunks


def dtype_name(dtype) -> str:
    """The format's name for a dtype it carries (FP8, bfloat16, float16); raises ``TypeError``
    for anything else."""
    dt = np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if dt == candidate:
            return name
    raise TypeError(f"ECF8 encodes {sorted(DTYPES)}, not {dt}")


def choose_chunk_steps(
    size: int, chunk_steps: int | None = None, version: int = 1, balance: bool = True
) -> int:
    """Steps per chunk: at most ``chunk_steps``, balanced so the last chunk is nearly full.

    Args:
      size: number of weights.
      chunk_steps: upper bound (default ``DEFAULT_CHUNK_STEPS`` for version 1,
        ``grouped.DEFAULT_CHUNK_STEPS`` for version 2); a multiple of 32.
      version: the format version whose default applies.
      balance: shrink the chunks so the last one is nearly full; ``False`` keeps
        ``chunk_steps`` exactly (chunks of whole rows for the fused GEMV).

    Returns:
      A positive multiple of 32.
    """
    if chunk_steps is None:
        limit = grouped.DEFAULT_CHUNK_STEPS if version == 2 else DEFAULT_CHUNK_STEPS
    elif isinstance(chunk_steps, bool | float | str):
        raise ValueError(f"chunk_steps must be an integer, not {chunk_steps!r}")
    else:
        limit = operator.index(chunk_steps)
    if limit <= 0 or limit % SIGN_WORD_BITS:
        raise ValueError(f"chunk_steps must be a positive multiple of {SIGN_WORD_BITS}: {limit}")
    if size == 0 or not balance:
        return limit
    chunks = num_chunks(size, limit)
    steps = -(-size // (LANES * chunks))
    return -(-steps // SIGN_WORD_BITS) * SIGN_WORD_BITS


def as_numpy(x) -> np.ndarray:
    """``x`` (numpy or jax) as a host numpy array of a dtype the format carries, else
    ``TypeError``."""
    if isinstance(x, jax.Array):
        x = jax.device_get(x)
    arr = np.asarray(x)
    dtype_name(arr.dtype)
    return arr


def bit_patterns(arr: np.ndarray) -> np.ndarray:
    """The flat, contiguous unsigned bit patterns of ``arr``: uint8 (FP8) or uint16 (16-bit)."""
    unsigned = np.uint8 if arr.dtype.itemsize == 1 else np.uint16
    return np.ascontiguousarray(arr).reshape(-1).view(unsigned)


BLOCK_WEIGHTS = 1 << 18
"""Weights the encoder processes at a time (rounded to whole chunks)."""


_BIT_INDEX = np.arange(SIGN_WORD_BITS, dtype=np.uint32)[None, None, :, None]


def _encode_block(
    padded: np.ndarray, valid: np.ndarray, len_table: np.ndarray, code_table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encodes whole chunks.

    Args:
      padded: uint8[chunks, steps, LANES] FP8 bytes in chunk-slot order.
      valid: int[chunks] slots holding weights in each chunk (slot ``t * LANES + l``); the
        rest are padding and are not coded.
      len_table: uint8[256] code length of each byte's magnitude.
      code_table: uint32[256] canonical code of each byte's magnitude.

    Returns:
      ``(units, signs, chunk_units)``: uint32[U] stream units in decoder order,
      uint32[chunks, steps // 32, LANES] sign words, int64[chunks] units per chunk.
    """
    chunks, steps, _ = padded.shape
    ragged = bool((valid < steps * LANES).any())
    if ragged:
        slot = np.arange(steps * LANES, dtype=np.int32).reshape(1, steps, LANES)
        padding = slot >= valid.reshape(-1, 1, 1)  # [chunks, steps, LANES]
    lens = len_table[padded]
    if ragged:  # padding is not coded
        lens[padding] = 0
    acc = np.uint16 if steps * MAX_CODE_LEN < 1 << 16 else np.int32
    consumed = np.cumsum(lens, axis=1, dtype=acc)
    consumed -= lens  # bits each lane consumed before each step
    # A lane refills before step t when it holds < 16 bits: it has then taken
    # ceil(consumed / 16) + 1 units, and refilled at t if that grew since step t - 1.
    taken = consumed + (UNIT_BITS - 1)
    taken >>= 4
    refill = np.empty(taken.shape, dtype=bool)
    refill[:, 0] = True
    np.not_equal(taken[:, 1:], taken[:, :-1], out=refill[:, 1:])
    if ragged:  # refills for padding slots are never needed: they come last in their chunk
        refill[padding] = False
    lane_units = refill.sum(axis=1, dtype=np.int32)  # [chunk, lane]
    lane_start = np.cumsum(lane_units, dtype=np.int32) - lane_units.reshape(-1)
    lane_start = lane_start.reshape(chunks, 1, LANES)

    # Each lane's code bits go to its own run of units in a scratch buffer. A code starting at
    # bit o of unit u sits in the 32-bit window of units (u, u + 1); codes starting in one
    # unit occupy disjoint bits, so summing their windows per unit is an exact OR.
    shift = (2 * UNIT_BITS - lens) - (consumed.astype(np.uint8) & (UNIT_BITS - 1))
    window = code_table[padded] << shift
    if ragged:
        window[padding] = 0
    unit = (consumed >> 4).astype(np.intp)  # bincount's own index and weight types: no copies
    unit += lane_start
    weights = window.reshape(-1).astype(np.float64)
    size = int(lane_units.sum()) + 2
    sums = np.bincount(unit.reshape(-1), weights=weights, minlength=size)
    sums = sums.astype(np.uint32)
    scratch = sums >> UNIT_BITS
    scratch[1:] |= sums[:-1] & 0xFFFF

    # Hand the units out in decoder order: chunk, step, lane.
    unit_index = (taken + lane_start).reshape(-1)
    units = scratch[unit_index[np.flatnonzero(refill)]]
    chunk_units = lane_units.sum(axis=1, dtype=np.int64)

    sign = (padded >> SIGN_SHIFT).reshape(chunks, steps // SIGN_WORD_BITS, SIGN_WORD_BITS, LANES)
    signs = (sign.astype(np.uint32) << _BIT_INDEX).sum(axis=2, dtype=np.uint32)
    return units, signs, chunk_units


def _magnitude_histogram(raw: np.ndarray) -> np.ndarray:
    """int64[128] counts of each magnitude, two bytes per bincount element."""
    counts = np.zeros((256, 256), dtype=np.int64)
    even = raw.size - raw.size % 2
    pairs = raw[:even].view(np.uint16)
    for start in range(0, pairs.size, BLOCK_WEIGHTS):
        counts += np.bincount(pairs[start : start + BLOCK_WEIGHTS], minlength=1 << 16).reshape(
            256, 256
        )
    per_byte = counts.sum(axis=0) + counts.sum(axis=1)
    per_byte += np.bincount(raw[even:], minlength=256)
    return per_byte.reshape(2, NUM_SYMBOLS).sum(axis=0)


def _flat_chunks(raw: np.ndarray, steps: int, chunks: int):
    """Yields ``(padded [k, steps, LANES], valid [k])`` for the ``flat`` layout."""
    per_chunk = steps * LANES
    block_chunks = max(1, BLOCK_WEIGHTS // per_chunk)
    for first in range(0, chunks, block_chunks):
        count = min(block_chunks, chunks - first)
        block = raw[first * per_chunk : (first + count) * per_chunk]
        if block.size < count * per_chunk:
            block = np.pad(block, (0, count * per_chunk - block.size))
        starts = (first + np.arange(count)) * per_chunk
        yield block.reshape(count, steps, LANES), np.clip(raw.size - starts, 0, per_chunk)


def _tile_chunks(raw2d: np.ndarray, steps: int):
    """Yields ``(padded [k, steps, LANES], valid [k])`` for the ``tiles`` layout."""
    rows, cols = raw2d.shape
    col_blocks = cols // LANES
    block_chunks = max(1, BLOCK_WEIGHTS // (steps * LANES))
    for first_row in range(0, rows, steps):
        slab = raw2d[first_row : first_row + steps]
        valid_rows = slab.shape[0]
        if valid_rows < steps:
            slab = np.pad(slab, ((0, steps - valid_rows), (0, 0)))
        tiles = slab.reshape(steps, col_blocks, LANES).transpose(1, 0, 2)  # [cb, step, lane]
        for first in range(0, col_blocks, block_chunks):
            part = np.ascontiguousarray(tiles[first : first + block_chunks])
            yield part, np.full(part.shape[0], valid_rows * LANES)


def encode(
    x,
    *,
    chunk_steps: int | None = None,
    layout: str = "flat",
    version: int | None = None,
    balance: bool = True,
) -> Ecf8Tensor:
    """Encodes an FP8, bfloat16 or float16 array losslessly.

    Args:
      x: a numpy (ml_dtypes) or jax array of dtype ``float8_e4m3fn``, ``float8_e5m2``
        (either version), ``bfloat16`` or ``float16`` (version 2, layout ``flat`` only), any
        shape (0-size and scalars included).
      chunk_steps: upper bound on symbols per lane per chunk (multiple of 32); a chunk holds
        ``128 * chunk_steps`` weights. Defaults to ``DEFAULT_CHUNK_STEPS`` (version 1) or
        ``grouped.DEFAULT_CHUNK_STEPS`` (version 2).
      layout: ``"flat"`` (any shape) or ``"tiles"`` (2-D, last dimension a multiple of 128:
        chunks are [chunk_steps, 128] tiles, what the fused matmul kernel decodes).
      version: the format version; ``None`` writes ``FORMAT_VERSION`` (2) for ``flat`` and 1
        for ``tiles`` (the tiled fused matmul reads version 1).
      balance: version 2: balance the chunk size over the tensor (default) or keep
        ``chunk_steps`` exactly (``grouped.row_chunk_steps`` chunks of whole rows).

    Returns:
      An ``Ecf8Tensor`` with numpy leaves that decodes to the bit patterns of ``x``.

    Raises:
      TypeError: ``x`` is none of those dtypes.
      ValueError: bad ``chunk_steps``, ``layout`` or ``version``, or a 16-bit ``x`` asked to be
        written as version 1 or layout ``tiles``.
    """
    arr = as_numpy(x)
    name = dtype_name(arr.dtype)
    shape = tuple(int(d) for d in arr.shape)
    n = arr.size
    raw = bit_patterns(arr)
    if version is None:
        version = FORMAT_VERSION if layout == "flat" else 1
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"unknown format version {version!r}; expected one of {SUPPORTED_VERSIONS}"
        )
    if name not in FP8_DTYPES and (version != 2 or layout != "flat"):
        raise ValueError(
            f"{name} is carried by format version 2 with layout 'flat' only (version 1 and "
            f"layout 'tiles' are FP8-only); got version={version}, layout={layout!r}"
        )
    if version == 2:
        if layout != "flat":
            raise ValueError(f"format version 2 supports layout 'flat' only, not {layout!r}")
        return _encode_v2(raw, shape, name, chunk_steps, balance)
    if layout == "flat":
        steps = choose_chunk_steps(n, chunk_steps)
        pieces = _flat_chunks(raw, steps, num_chunks(n, steps))
    elif layout == "tiles":
        if len(shape) != 2 or shape[1] % LANES:
            raise ValueError(
                f"layout 'tiles' needs a 2-D array whose last dimension is a multiple of "
                f"{LANES}, got shape {shape}"
            )
        steps = choose_chunk_steps(shape[0] * LANES, chunk_steps)
        pieces = _tile_chunks(raw.reshape(shape), steps) if n else iter(())
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    chunks = num_chunks(n, steps, layout, shape)

    counts = _magnitude_histogram(raw)
    lengths = code_lengths(counts)
    magnitudes = np.arange(256) & MAGNITUDE_MASK
    len_table = lengths[magnitudes].astype(np.uint8)
    code_table = canonical_codes(lengths)[magnitudes].astype(np.uint32)

    # Blocks of whole chunks keep the temporaries small (cache-sized, no page faults).
    units, signs, chunk_units = [], [], []
    for padded, valid in pieces:
        u, s, c = _encode_block(padded, valid, len_table, code_table)
        units.append(u)
        signs.append(s)
        chunk_units.append(c)
    units = np.concatenate(units) if units else np.zeros(0, np.uint32)
    if units.size % 2:
        units = np.append(units, np.uint32(0))
    stream = (units[0::2] << 16) | units[1::2]
    chunk_offsets = np.zeros(chunks + 1, dtype=np.uint32)
    if chunks:
        np.cumsum(np.concatenate(chunk_units), out=chunk_offsets[1:])
    signs = (
        np.concatenate(signs) if signs else np.zeros((0, steps // SIGN_WORD_BITS, LANES), np.uint32)
    )

    meta = {
        "version": 1,
        "shape": list(shape),
        "dtype": name,
        "chunk_steps": steps,
        "layout": layout,
    }
    checksums = compute_checksums(meta, stream, chunk_offsets, signs, lengths)
    return Ecf8Tensor(
        stream=stream.astype(np.uint32),
        chunk_offsets=chunk_offsets,
        signs=signs,
        code_lengths=lengths.astype(np.uint8),
        checksums=checksums,
        shape=shape,
        dtype=name,
        chunk_steps=steps,
        version=1,
        layout=layout,
    )


def _encode_v2(
    raw: np.ndarray, shape: tuple[int, ...], name: str, chunk_steps, balance: bool
) -> Ecf8Tensor:
    n = raw.size
    steps = choose_chunk_steps(n, chunk_steps, version=2, balance=balance)
    chunks = num_chunks(n, steps)
    width = grouped.width_of_dtype(name)
    stream, offsets, raw_words, lengths = encode_grouped(raw, steps, chunks, width)
    meta = {"version": 2, "shape": list(shape), "dtype": name, "chunk_steps": steps,
            "layout": "flat"}  # fmt: skip
    checksums = compute_checksums(meta, stream, offsets, raw_words, lengths)
    return Ecf8Tensor(
        stream=stream,
        chunk_offsets=offsets,
        signs=raw_words,
        code_lengths=lengths,
        checksums=checksums,
        shape=shape,
        dtype=name,
        chunk_steps=steps,
        version=2,
        layout="flat",
    )
