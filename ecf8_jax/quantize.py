"""Scaled FP8 quantization of floating-point weights (lossy; host-side numpy).

This is how the FP8 inputs of the lossless ECF8 codec are usually produced: published "FP8-dynamic"
checkpoints store, for a linear layer's ``[out, in]`` weight, FP8 values ``q`` and one float32
scale per output row, with ``w ≈ q * scale``. :func:`quantize_fp8` reproduces that layout (and the
per-tensor variant) so that benchmarks and tests can build realistic FP8 weights from float ones.

Unlike everything under :mod:`ecf8_jax.format`, this step loses information: each weight is
rounded to the nearest FP8 value (3 mantissa bits for E4M3, 2 for E5M2), and weights far below
their row's largest magnitude fall into the subnormal range or flush to zero.
"""

from __future__ import annotations

from typing import Literal

import ml_dtypes
import numpy as np

Granularity = Literal["row", "tensor"]

_FP8_DTYPES = (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2))


def fp8_max(dtype) -> float:
    """Largest finite value of an FP8 dtype (448 for E4M3FN, 57344 for E5M2).

    Args:
      dtype: ``ml_dtypes.float8_e4m3fn`` or ``ml_dtypes.float8_e5m2`` (or their names).

    Returns:
      The dtype's largest finite value, as a Python float.

    Raises:
      ValueError: ``dtype`` is not one of the two FP8 dtypes.
    """
    dtype = np.dtype(dtype)
    if dtype not in _FP8_DTYPES:
        raise ValueError(f"expected float8_e4m3fn or float8_e5m2, got {dtype}")
    return float(ml_dtypes.finfo(dtype).max)


def quantize_fp8(
    w: np.ndarray,
    *,
    granularity: Granularity = "row",
    dtype=ml_dtypes.float8_e4m3fn,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantizes float weights to scaled FP8 (lossy), as FP8 checkpoints store them.

    The scale maps the largest magnitude of each row (or of the whole tensor) onto the dtype's
    largest finite value: ``scale = amax / fp8_max(dtype)``, and ``q = round(w / scale)`` with
    round-to-nearest-even. Values are clipped to ``±fp8_max`` before the cast, so float rounding of
    ``w / scale`` can never produce NaN (E4M3FN has no infinity) or infinity (E5M2). A row (or
    tensor) whose values are all zero gets scale 1.

    The result is not bit-exact with ``w``: the relative error of each weight is at most half an
    FP8 ulp (2**-4 for E4M3, 2**-3 for E5M2) in the normal range; below it the absolute error is
    at most half the smallest subnormal times the scale. Use the lossless codec
    (``ecf8_jax.encode``) on the *result* of this function.

    Args:
      w: float array (any float dtype numpy can convert to float32). For ``granularity="row"``
        it must have at least 2 dimensions; rows are along the last axis, so a ``[out, in]``
        linear weight gets one scale per output row.
      granularity: ``"row"`` (one scale per row, the "FP8-dynamic" layout) or ``"tensor"`` (one
        scale for the whole array).
      dtype: ``ml_dtypes.float8_e4m3fn`` (default) or ``ml_dtypes.float8_e5m2``.

    Returns:
      ``(q, scale)``: ``q`` has ``w``'s shape and the FP8 dtype; ``scale`` is float32 with shape
      ``w.shape[:-1] + (1,)`` for ``"row"`` (``[out, 1]`` for a ``[out, in]`` weight) and ``()``
      for ``"tensor"``, such that ``q.astype(np.float32) * scale ≈ w``.

    Raises:
      ValueError: unknown granularity or dtype, ``"row"`` on an array of fewer than 2
        dimensions, or non-finite values in ``w``.
    """
    fmax = fp8_max(dtype)
    w = np.asarray(w, dtype=np.float32)
    if granularity == "row":
        if w.ndim < 2:
            raise ValueError(f"granularity='row' needs at least 2 dimensions, got shape {w.shape}")
        amax = np.max(np.abs(w), axis=-1, keepdims=True, initial=0.0)
    elif granularity == "tensor":
        amax = np.max(np.abs(w), initial=0.0)
    else:
        raise ValueError(f"granularity must be 'row' or 'tensor', got {granularity!r}")
    if not np.all(np.isfinite(amax)):
        raise ValueError("w contains inf or NaN; FP8 scales need finite weights")
    scale = np.where(amax > 0, amax / np.float32(fmax), np.float32(1.0)).astype(np.float32)
    scaled = np.clip(w / scale, -fmax, fmax)
    return scaled.astype(dtype), scale


def dequantize_fp8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Float32 weights ``q * scale`` from the output of :func:`quantize_fp8`.

    Args:
      q: FP8 array.
      scale: float32 scales broadcastable against ``q`` (shape ``[..., 1]`` or ``()``).

    Returns:
      float32 array of ``q``'s shape.
    """
    return np.asarray(q).astype(np.float32) * np.asarray(scale, dtype=np.float32)
