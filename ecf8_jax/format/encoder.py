"""Host-side, vectorized numpy encoder for ECF8 format version 1.

The encoder simulates the decoder's refill schedule in closed form instead of stepping it: a
lane refills (takes the next 16-bit unit of its chunk's stream) before step ``t`` exactly when
it holds fewer than 16 bits, so after ``t`` steps it has taken ``ceil(B_t / 16) + 1`` units,
where ``B_t`` is the number of code bits it consumed in steps ``< t``. Units are written to the
stream in the order the decoder takes them: chunk, then step, then lane.
"""

from __future__ import annotations

import jax
import numpy as np

from ecf8_jax.format.codebook import canonical_codes, code_lengths
from ecf8_jax.format.constants import (
    DEFAULT_CHUNK_STEPS,
    DTYPES,
    FORMAT_VERSION,
    LANES,
    MAGNITUDE_MASK,
    NUM_SYMBOLS,
    SIGN_SHIFT,
    SIGN_WORD_BITS,
    UNIT_BITS,
)
from ecf8_jax.format.tensor import Ecf8Tensor, compute_checksums, num_chunks


def dtype_name(dtype) -> str:
    """The format's name for an FP8 dtype; raises ``TypeError`` for anything else."""
    dt = np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if dt == candidate:
            return name
    raise TypeError(f"ECF8 encodes {sorted(DTYPES)}, not {dt}")


def choose_chunk_steps(size: int, chunk_steps: int | None = None) -> int:
    """Steps per chunk: at most ``chunk_steps``, balanced so the last chunk is nearly full.

    Args:
      size: number of weights.
      chunk_steps: upper bound (default ``DEFAULT_CHUNK_STEPS``); a multiple of 32.

    Returns:
      A positive multiple of 32.
    """
    limit = DEFAULT_CHUNK_STEPS if chunk_steps is None else int(chunk_steps)
    if limit <= 0 or limit % SIGN_WORD_BITS:
        raise ValueError(f"chunk_steps must be a positive multiple of {SIGN_WORD_BITS}: {limit}")
    if size == 0:
        return limit
    chunks = num_chunks(size, limit)
    steps = -(-size // (LANES * chunks))
    return -(-steps // SIGN_WORD_BITS) * SIGN_WORD_BITS


def _as_fp8_numpy(x) -> np.ndarray:
    if isinstance(x, jax.Array):
        x = jax.device_get(x)
    arr = np.asarray(x)
    dtype_name(arr.dtype)
    return arr


def encode(x, *, chunk_steps: int | None = None) -> Ecf8Tensor:
    """Encodes an FP8 array losslessly.

    Args:
      x: a numpy (ml_dtypes) or jax array of dtype ``float8_e4m3fn`` or ``float8_e5m2``, any
        shape (0-size and scalars included).
      chunk_steps: upper bound on symbols per lane per chunk (multiple of 32); a chunk holds
        ``128 * chunk_steps`` weights. Defaults to ``DEFAULT_CHUNK_STEPS``.

    Returns:
      An ``Ecf8Tensor`` with numpy leaves that decodes to the bit patterns of ``x``.
    """
    arr = _as_fp8_numpy(x)
    name = dtype_name(arr.dtype)
    shape = tuple(int(d) for d in arr.shape)
    n = arr.size
    steps = choose_chunk_steps(n, chunk_steps)
    chunks = num_chunks(n, steps)
    total = chunks * steps * LANES
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)

    magnitude = np.zeros(total, dtype=np.uint8)
    magnitude[:n] = raw & MAGNITUDE_MASK
    lengths = code_lengths(np.bincount(magnitude[:n], minlength=NUM_SYMBOLS))
    codes = canonical_codes(lengths)

    lens = lengths[magnitude].astype(np.int32)  # [total]
    lens[n:] = 0  # padding is not coded
    lens = lens.reshape(chunks, steps, LANES)
    consumed = np.cumsum(lens, axis=1, dtype=np.int32)
    consumed -= lens  # bits consumed before each step
    taken = (consumed + (UNIT_BITS - 1)) // UNIT_BITS + 1  # units taken through each step
    refill = np.empty_like(taken)
    refill[:, 0, :] = taken[:, 0, :]
    np.subtract(taken[:, 1:, :], taken[:, :-1, :], out=refill[:, 1:, :])
    valid = (np.arange(total) < n).reshape(chunks, steps, LANES)
    refill &= valid  # refills for padding slots are never needed: they come last in order

    # Each lane's bits go to a private run of units in a scratch buffer, in refill order.
    lane_units = refill.sum(axis=1)  # [chunks, LANES]
    lane_start = (np.cumsum(lane_units.reshape(-1)) - lane_units.reshape(-1)).reshape(
        chunks, 1, LANES
    )
    scratch_units = int(lane_units.sum()) + 1
    bitpos = (lane_start.astype(np.int64) * UNIT_BITS + consumed).reshape(-1)[:n]
    code = codes[magnitude[:n]].astype(np.int64)
    code_len = lens.reshape(-1)[:n].astype(np.int64)
    unit = bitpos >> 4
    window = code << (2 * UNIT_BITS - (bitpos & (UNIT_BITS - 1)) - code_len)  # 32-bit window
    scratch = np.bincount(unit, weights=window >> UNIT_BITS, minlength=scratch_units + 1)
    scratch += np.bincount(unit + 1, weights=window & 0xFFFF, minlength=scratch_units + 1)
    scratch = scratch.astype(np.uint32)  # disjoint bit ranges: the sums are exact ORs

    order = np.flatnonzero(refill.reshape(-1))  # (chunk, step, lane) order = decoder order
    c_idx = order // (steps * LANES)
    l_idx = order % LANES
    units = scratch[lane_start.reshape(-1)[c_idx * LANES + l_idx] + taken.reshape(-1)[order] - 1]
    units = units.astype(np.uint32)
    if units.size % 2:
        units = np.append(units, np.uint32(0))
    stream = (units[0::2] << 16) | units[1::2]

    chunk_units = refill.reshape(chunks, steps * LANES).sum(axis=1)
    chunk_offsets = np.zeros(chunks + 1, dtype=np.uint32)
    np.cumsum(chunk_units, out=chunk_offsets[1:])

    sign = np.zeros(total, dtype=np.uint8)
    sign[:n] = raw >> SIGN_SHIFT
    sign = sign.reshape(chunks, steps // SIGN_WORD_BITS, SIGN_WORD_BITS, LANES)
    signs = np.packbits(sign.transpose(0, 1, 3, 2), axis=-1, bitorder="little")
    signs = np.ascontiguousarray(signs).view("<u4")[..., 0].astype(np.uint32)

    meta = {"version": FORMAT_VERSION, "shape": list(shape), "dtype": name, "chunk_steps": steps}
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
        version=FORMAT_VERSION,
    )
