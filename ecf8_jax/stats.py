"""Entropy and size statistics of FP8 / bfloat16 / float16 tensors and their ECF8 encoding."""

from __future__ import annotations

import dataclasses

import numpy as np

from ecf8_jax.format.constants import EXPONENT_BITS, MANTISSA_BITS
from ecf8_jax.format.encoder import as_numpy, bit_patterns, dtype_name, encode
from ecf8_jax.format.tensor import Ecf8Tensor


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits per symbol of a histogram."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


@dataclasses.dataclass(frozen=True)
class Stats:
    """What :func:`stats` measures.

    Attributes:
      size: number of weights.
      dtype: the dtype's name (``float8_e4m3fn``, ``float8_e5m2``, ``bfloat16``, ``float16``).
      exponent_histogram: int64[2**exponent_bits] counts of each exponent field value.
      exponent_entropy: order-0 entropy of the exponent field, bits/weight.
      byte_entropy: order-0 entropy of each byte of a weight, summed (for FP8 the whole byte;
        for 16-bit values H(high byte) + H(low byte), the ceiling of an order-0 byte coder such
        as zipnn), bits/weight.
      value_entropy: order-0 entropy of the whole value (equal to ``byte_entropy`` for FP8),
        bits/weight.
      bits_per_weight: size of the ECF8 encoding, ``8 * bytes / size``.
      breakdown: bytes of each component of the encoding (the ``Ecf8Tensor`` arrays).
    """

    size: int
    dtype: str
    exponent_histogram: np.ndarray
    exponent_entropy: float
    byte_entropy: float
    bits_per_weight: float
    breakdown: dict[str, int]
    value_entropy: float = 0.0

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v} B" for k, v in self.breakdown.items())
        value = "" if self.dtype.startswith("float8") else f", H(value) {self.value_entropy:.4f}"
        return (
            f"{self.size} x {self.dtype}: H(exponent) {self.exponent_entropy:.4f}, "
            f"H(byte) {self.byte_entropy:.4f}{value}, ECF8 {self.bits_per_weight:.4f} "
            f"bits/weight ({parts})"
        )


def breakdown(t: Ecf8Tensor) -> dict[str, int]:
    """Bytes of each array of ``t``."""
    return {
        f.name: int(np.asarray(getattr(t, f.name)).nbytes)
        for f in dataclasses.fields(t)
        if f.name in ("stream", "chunk_offsets", "signs", "code_lengths", "checksums")
    }


def exponent_histogram(x) -> np.ndarray:
    """int64[2**exponent_bits] counts of each exponent field value of an FP8, bfloat16 or
    float16 array (bfloat16: 256 bins; float16: 32)."""
    arr = as_numpy(x)
    name = dtype_name(arr.dtype)
    ebits = EXPONENT_BITS[name]
    exponent = (bit_patterns(arr) >> MANTISSA_BITS[name]) & ((1 << ebits) - 1)
    return np.bincount(exponent, minlength=1 << ebits).astype(np.int64)


def byte_and_value_entropy(x) -> tuple[float, float]:
    """``(byte_entropy, value_entropy)`` in bits/weight; see :class:`Stats`."""
    arr = as_numpy(x)
    values = bit_patterns(arr)
    value = entropy_bits(np.bincount(values, minlength=1 << (8 * arr.dtype.itemsize)))
    if arr.dtype.itemsize == 1:
        return value, value
    hi = entropy_bits(np.bincount(values >> 8, minlength=256))
    lo = entropy_bits(np.bincount(values & 0xFF, minlength=256))
    return hi + lo, value


def stats(x, *, encoded: Ecf8Tensor | None = None, **encode_options) -> Stats:
    """Measures an FP8, bfloat16 or float16 array and its ECF8 encoding.

    Args:
      x: numpy (ml_dtypes) or jax array.
      encoded: its encoding, if already at hand (otherwise it is encoded here).
      **encode_options: passed to :func:`ecf8_jax.encode`.

    Returns:
      A :class:`Stats`.
    """
    arr = as_numpy(x)
    name = dtype_name(arr.dtype)
    hist = exponent_histogram(arr)
    byte_h, value_h = byte_and_value_entropy(arr)
    t = encoded if encoded is not None else encode(arr, **encode_options)
    return Stats(
        size=int(arr.size),
        dtype=name,
        exponent_histogram=hist,
        exponent_entropy=entropy_bits(hist),
        byte_entropy=byte_h,
        bits_per_weight=t.bits_per_weight,
        breakdown=breakdown(t),
        value_entropy=value_h,
    )
