"""Entropy and size statistics of FP8 tensors and their ECF8 encoding."""

from __future__ import annotations

import dataclasses

import numpy as np

from ecf8_jax.format.constants import EXPONENT_BITS, MANTISSA_BITS
from ecf8_jax.format.encoder import _as_fp8_numpy, dtype_name, encode
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
      dtype: the FP8 dtype's name.
      exponent_histogram: int64[2**exponent_bits] counts of each exponent field value.
      exponent_entropy: order-0 entropy of the exponent field, bits/weight.
      byte_entropy: order-0 entropy of the whole byte, bits/weight.
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

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v} B" for k, v in self.breakdown.items())
        return (
            f"{self.size} x {self.dtype}: H(exponent) {self.exponent_entropy:.4f}, "
            f"H(byte) {self.byte_entropy:.4f}, ECF8 {self.bits_per_weight:.4f} bits/weight "
            f"({parts})"
        )


def breakdown(t: Ecf8Tensor) -> dict[str, int]:
    """Bytes of each array of ``t``."""
    return {
        f.name: int(np.asarray(getattr(t, f.name)).nbytes)
        for f in dataclasses.fields(t)
        if f.name in ("stream", "chunk_offsets", "signs", "code_lengths", "checksums")
    }


def exponent_histogram(x) -> np.ndarray:
    """int64[2**exponent_bits] counts of each exponent field value of an FP8 array."""
    arr = _as_fp8_numpy(x)
    name = dtype_name(arr.dtype)
    ebits = EXPONENT_BITS[name]
    exponent = (arr.reshape(-1).view(np.uint8) >> MANTISSA_BITS[name]) & ((1 << ebits) - 1)
    return np.bincount(exponent, minlength=1 << ebits).astype(np.int64)


def stats(x, *, encoded: Ecf8Tensor | None = None, **encode_options) -> Stats:
    """Measures an FP8 array and its ECF8 encoding.

    Args:
      x: numpy (ml_dtypes) or jax FP8 array.
      encoded: its encoding, if already at hand (otherwise it is encoded here).
      **encode_options: passed to :func:`ecf8_jax.encode`.

    Returns:
      A :class:`Stats`.
    """
    arr = _as_fp8_numpy(x)
    name = dtype_name(arr.dtype)
    raw = arr.reshape(-1).view(np.uint8)
    hist = exponent_histogram(arr)
    t = encoded if encoded is not None else encode(arr, **encode_options)
    return Stats(
        size=int(arr.size),
        dtype=name,
        exponent_histogram=hist,
        exponent_entropy=entropy_bits(hist),
        byte_entropy=entropy_bits(np.bincount(raw, minlength=256)),
        bits_per_weight=t.bits_per_weight,
        breakdown=breakdown(t),
    )
