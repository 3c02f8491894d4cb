"""Dispatch for ECF8 version-1 decoding: picks a backend by name or by the current platform.

``decode(..., implementation=None)`` uses the Pallas kernel of the default backend (Triton on
GPU, Mosaic on TPU) and falls back to the plain-jnp ``xla`` reference with a warning when the
kernel cannot take the shapes. An explicit ``implementation=`` never falls back: if it cannot
run, it raises with the reason.

Unlike version 2 (``pallas_kernels.grouped_decode.api``, which picks by the *lowering*
platform with ``lax.platform_dependent``), version 1 still asks the default backend: an
explicit Pallas backend without ``interpret`` is refused on a host whose default backend is
another platform, and tests/pallas_kernels/test_ecf8_decode_backends.py pins that behaviour.
"""

from __future__ import annotations

import warnings
from typing import Literal

import jax

from pallas_kernels import compat
from pallas_kernels.ecf8_decode.config import BlockSizes
from pallas_kernels.ecf8_decode.pallas_gpu import ecf8_decode_gpu
from pallas_kernels.ecf8_decode.pallas_tpu import ecf8_decode_tpu
from pallas_kernels.ecf8_decode.reference import ecf8_decode_reference

Implementation = Literal["xla", "pallas_gpu", "pallas_tpu"]
IMPLEMENTATIONS: tuple[Implementation, ...] = ("xla", "pallas_gpu", "pallas_tpu")

TPU_MAX_STREAM_BYTES = 24 << 20
"""The TPU kernel holds the whole stream in VMEM (see pallas_tpu.py)."""


def shapes_supported(implementation: str, stream_shape, signs_shape, *, interpret=False):
    """Why ``implementation`` cannot decode these shapes here, or None if it can.

    Args:
      implementation: one of ``IMPLEMENTATIONS``.
      stream_shape: shape of the stream, (W,).
      signs_shape: shape of the sign plane, (C, S // 32, L).
      interpret: whether the kernel would run in Pallas interpret mode (on any platform).

    Returns:
      A readable reason, or None.
    """
    if implementation not in IMPLEMENTATIONS:
        return f"unknown implementation {implementation!r}; available: {IMPLEMENTATIONS}"
    if implementation == "xla":
        return None
    lanes = signs_shape[-1]
    if lanes & (lanes - 1):
        return f"{implementation} needs a power-of-two lane count, got {lanes}"
    platform = jax.default_backend()
    if implementation == "pallas_gpu" and not interpret and platform != "gpu":
        return f"pallas_gpu needs a GPU (the default backend is {platform}); use interpret=True"
    if implementation == "pallas_tpu":
        if not interpret and platform != "tpu":
            return f"pallas_tpu needs a TPU (the default backend is {platform}); use interpret=True"
        if stream_shape[-1] * 4 > TPU_MAX_STREAM_BYTES:
            return (
                f"pallas_tpu holds the stream in VMEM: {stream_shape[-1] * 4} bytes > "
                f"{TPU_MAX_STREAM_BYTES}"
            )
    return None


def _default_implementation() -> Implementation:
    return {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")


def _run(implementation, args, block_sizes, interpret):
    if implementation == "pallas_gpu":
        return ecf8_decode_gpu(*args, block_sizes=block_sizes, interpret=interpret)
    if implementation == "pallas_tpu":
        params = compat.tpu_interpret_params() if interpret else False
        return ecf8_decode_tpu(*args, block_sizes=block_sizes, interpret=params)
    return ecf8_decode_reference(*args)


def decode(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    implementation: Implementation | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Decodes ECF8 chunks to uint8[C * S * L]; see ``reference.ecf8_decode_reference``.

    Args:
      stream, chunk_offsets, signs, limits, deltas, symbols: the raw arrays.
      implementation: ``None`` (the current backend's kernel, else ``xla``) or one of
        ``IMPLEMENTATIONS``. ``"xla"`` is the plain-jnp reference on every platform.
      block_sizes: launch parameters for a Pallas kernel (default: ``BlockSizes.get_default``).
      interpret: run a Pallas kernel in interpret mode (CPU tests).

    Raises:
      ValueError: an implementation was asked for explicitly and cannot run; the message
        says why.
    """
    if implementation not in (None, *IMPLEMENTATIONS):
        raise ValueError(
            f"unknown ECF8 decode implementation {implementation!r}; available: {IMPLEMENTATIONS}"
        )
    if implementation is None:
        implementation = _default_implementation()
        reason = shapes_supported(implementation, stream.shape, signs.shape, interpret=interpret)
        if reason is not None:
            warnings.warn(f"ECF8 decode falls back to xla: {reason}", stacklevel=2)
            implementation = "xla"
    else:
        reason = shapes_supported(implementation, stream.shape, signs.shape, interpret=interpret)
        if reason is not None:
            raise ValueError(f"ECF8 decode implementation {implementation!r}: {reason}")
    args = (stream, chunk_offsets, signs, limits, deltas, symbols)
    return _run(implementation, args, block_sizes, interpret)
