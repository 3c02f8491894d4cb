"""DFloat11's compressed size, computed exactly from its published layout (no CUDA, no torch).

The ``dfloat11`` package (PyPI, LeanModels/DFloat11) compresses on CUDA only, so the benchmark
computes the bytes its ``compress_model`` would store instead of running it. The layout below is
read from its source (``dfloat11/dfloat11.py``, ``compress_model``; ``dfloat11/dfloat11_utils.py``,
``get_codec``, ``get_32bit_codec``, ``get_luts``, ``encode``; version 0.5 era, commit 4577338),
with its constants ``bytes_per_thread = 8`` and ``threads_per_block = 512``.

**Unit.** One codebook per module matched by its ``pattern_dict``: a transformer block (all its
linear weights, flattened and concatenated in order) or a lone ``nn.Linear`` / ``nn.Embedding``.

**Split.** Each BF16 weight ``w`` becomes ``exponent = (w >> 7) & 0xFF`` (Huffman-coded) and
``sign_mantissa = (w >> 8) & 0x80 | w & 0x7F`` (stored raw, one byte): the same split as ECF8's
16-bit symbol and raw byte.

**Code.** ``dahuffman.HuffmanCodec.from_frequencies`` over the exponent counts plus an
end-of-file symbol of frequency 1 (an unlimited Huffman code, tree built with ``heapq``; while its
longest code exceeds 32 bits the ``k`` rarest symbols' counts are set to 1, k = 2, 3, ...).

**Stored buffers per unit** (what ``compress_model`` registers and saves):

* ``luts``: uint8[P + 1, 256]: one 256-entry table per distinct code prefix
  (``''`` and the 8/16/24-bit prefixes of codes longer than 8/16/24 bits) plus one row of code
  lengths;
* ``encoded_exponent``: the exponent codes MSB-first, ``ceil(bits / 8)`` bytes (a partial last
  byte is completed with the end-of-file code);
* ``sign_mantissa``: one byte per weight;
* ``gaps``: 5 bits per thread (where the first code starts in its 8-byte window), packed with
  ``np.packbits``; the list holds one entry per 64-bit window in which a code starts, padded to
  512 x the number of thread blocks (``ceil(encoded bytes / 4096)``);
* ``output_positions``: uint32, one per 4096-byte thread block in which a code starts, plus
  the total;
* ``split_positions``: int64, one per tensor of the unit but the last.

This module reproduces every one of those sizes; ``tests/bench/test_dfloat11_size.py`` checks
them against a line-by-line port of DFloat11's own encoder loop on small inputs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

BYTES_PER_THREAD = 8
THREADS_PER_BLOCK = 512
GAP_BITS = 5
MAX_CODE_LEN = 32
WINDOW_BITS = 8 * BYTES_PER_THREAD  # one gap per 64-bit thread window
BLOCK_BITS = WINDOW_BITS * THREADS_PER_BLOCK  # one output position per 32 Ki bits


class _Eof:
    """dahuffman's end-of-file symbol: compares below every symbol."""

    def __lt__(self, other) -> bool:
        return True

    def __gt__(self, other) -> bool:
        return False

    def __eq__(self, other) -> bool:
        return isinstance(other, _Eof)

    def __hash__(self) -> int:
        return hash(_Eof)


EOF = _Eof()


def huffman_table(frequencies: dict[int, int]) -> dict:
    """``dahuffman.HuffmanCodec.from_frequencies(frequencies).get_code_table()``: symbol ->
    ``(bits, value)``, the end-of-file symbol (frequency 1) included, same tie-breaking."""
    heap = [(f, [(s, (0, 0))]) for s, f in frequencies.items()]
    if EOF not in frequencies:
        heap.append((1, [(EOF, (0, 0))]))
    heapq.heapify(heap)
    while len(heap) > 1:
        a = heapq.heappop(heap)
        b = heapq.heappop(heap)
        merged = (
            a[0] + b[0],
            [(s, (n + 1, v)) for (s, (n, v)) in a[1]]
            + [(s, (n + 1, (1 << n) + v)) for (s, (n, v)) in b[1]],
        )
        heapq.heappush(heap, merged)
    return dict(heapq.heappop(heap)[1])


def code_table(exponent_counts: np.ndarray) -> dict:
    """DFloat11's code table for one unit (``get_codec`` then ``get_32bit_codec``)."""
    counter = {int(v): int(f) for v, f in enumerate(exponent_counts) if f}
    table = huffman_table(counter)
    min_k = 2
    freq = np.array(list(counter.values()))
    while max(bits for bits, _ in table.values()) > MAX_CODE_LEN:
        keys = np.array(list(counter.keys()))[np.argpartition(freq, min_k)[:min_k]]
        min_k += 1
        squeezed = dict(counter)
        for k in keys:
            squeezed[int(k)] = 1
        table = huffman_table(squeezed)
    return table


def lut_rows(table: dict) -> int:
    """Rows of ``get_luts``' uint8[rows, 256]: distinct code prefixes, plus the lengths row."""
    prefixes = {""}
    for key, (bits, val) in table.items():
        if isinstance(key, int):
            prefixes.add(format(val, f"0{bits}b")[: (bits - 1) // 8 * 8])
    return len(prefixes) + 1


def unit_size(exponents: np.ndarray, n_tensors: int = 1) -> dict[str, int]:
    """Bytes of each buffer DFloat11 stores for one unit.

    Args:
      exponents: uint8[n] the unit's exponents ``(w >> 7) & 0xFF``, in stored order.
      n_tensors: tensors concatenated into the unit (``split_positions``).

    Returns:
      ``{buffer name: bytes}`` (see the module docstring).
    """
    exponents = np.asarray(exponents, np.uint8).reshape(-1)
    n = exponents.size
    counts = np.bincount(exponents, minlength=256)
    table = code_table(counts)
    lengths = np.zeros(256, np.int64)
    for key, (bits, _) in table.items():
        if isinstance(key, int):
            lengths[key] = bits
    total = int((counts * lengths).sum())
    encoded = -(-total // 8)
    # The encoder records a gap / output position whenever a code starts in a new window /
    # block, and once more at the end if a partial byte is left (then with the total).
    last_start = total - int(lengths[exponents[-1]]) if n else 0
    end = total if total % 8 else last_start
    gaps = end // WINDOW_BITS + 1
    positions = end // BLOCK_BITS + 1 + 1
    blocks = -(-encoded // (THREADS_PER_BLOCK * BYTES_PER_THREAD))
    gaps = max(gaps, THREADS_PER_BLOCK * blocks)
    return {
        "luts": 256 * lut_rows(table),
        "encoded_exponent": encoded,
        "sign_mantissa": n,
        "gaps": -(-GAP_BITS * gaps // 8),
        "output_positions": 4 * positions,
        "split_positions": 8 * (n_tensors - 1),
    }


def size(units: Sequence[Sequence[np.ndarray]]) -> dict[str, int]:
    """Bytes of each buffer, summed over units of BF16 tensors (each unit one codebook)."""
    out: dict[str, int] = {}
    for tensors in units:
        exps = [
            ((np.ascontiguousarray(t).reshape(-1).view(np.uint16) >> 7) & 0xFF).astype(np.uint8)
            for t in tensors
        ]
        for name, nbytes in unit_size(np.concatenate(exps), len(tensors)).items():
            out[name] = out.get(name, 0) + nbytes
    return out


def reference_encode(exponents: Sequence[int], table: dict) -> tuple[int, int, int]:
    """DFloat11's ``encode`` loop, ported line by line (slow: tests only).

    Returns:
      ``(encoded bytes, gap entries before padding, output positions)``.
    """
    gaps, positions, encoded = [], [], 0
    size_ = total = count = 0
    for s in exponents:
        if total // (8 * BYTES_PER_THREAD) + 1 > len(gaps):
            gaps.append(total % (8 * BYTES_PER_THREAD))
        if total // (8 * BYTES_PER_THREAD * THREADS_PER_BLOCK) + 1 > len(positions):
            positions.append(count)
        b, _ = table[s]
        size_ += b
        total += b
        count += 1
        encoded += size_ // 8
        size_ %= 8
    if size_ > 0:
        if total // (8 * BYTES_PER_THREAD) + 1 > len(gaps):
            gaps.append(total % (8 * BYTES_PER_THREAD))
        if total // (8 * BYTES_PER_THREAD * THREADS_PER_BLOCK) + 1 > len(positions):
            positions.append(count)
        encoded += 1
    positions.append(len(exponents))
    return encoded, len(gaps), len(positions)


def bits_per_weight(units: Sequence[Sequence[np.ndarray]]) -> float:
    """DFloat11's total size in bits per weight over ``units``."""
    n = sum(t.size for unit in units for t in unit)
    return 8 * sum(size(units).values()) / n if n else math.nan
