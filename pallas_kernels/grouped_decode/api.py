"""Dispatch for ECF8 version-2 decoding: a backend by name, or by the lowering platform.

``decode(..., implementation=None)`` picks the kernel of the platform the program is being
*lowered* for (``lax.platform_dependent``: Triton for CUDA, Mosaic for TPU, the C++ FFI
handler ``native_cpu`` for CPU, the plain-jnp ``xla`` reference elsewhere, and on CPU too when
``ECF8_NATIVE=0`` or the handler cannot be built, then with one warning), so a program traced
on a CPU host and compiled for a TPU topology or an abstract H200 gets the device kernel. An explicit ``implementation=`` never
falls back; it raises with the reason when the shapes cannot be taken, and a kernel lowered
for a platform it does not support fails in the lowering with Pallas' message.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import jax
from jax import lax

from pallas_kernels import compat
from pallas_kernels.grouped_decode import native_cpu
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.pallas_gpu import grouped_decode_gpu
from pallas_kernels.grouped_decode.pallas_tpu import grouped_decode_tpu
from pallas_kernels.grouped_decode.reference import grouped_decode_reference, words_to_values

Implementation = Literal["xla", "pallas_gpu", "pallas_tpu", "native_cpu"]
IMPLEMENTATIONS: tuple[Implementation, ...] = ("xla", "pallas_gpu", "pallas_tpu", "native_cpu")


def shapes_supported(implementation: str, raw_shape) -> str | None:
    """Why ``implementation`` cannot decode a raw plane of ``raw_shape``, or None if it can.

    Args:
      implementation: one of ``IMPLEMENTATIONS``.
      raw_shape: ``(C, S // 8, L)``.
    """
    if implementation not in IMPLEMENTATIONS:
        return f"unknown implementation {implementation!r}; available: {IMPLEMENTATIONS}"
    if implementation not in ("xla", "native_cpu") and raw_shape[-1] != 128:
        return f"{implementation} needs 128 lanes, got {raw_shape[-1]}"
    return None


def _run(implementation, args, bits, block_sizes, interpret, values=False):
    if implementation == "native_cpu":
        return native_cpu.grouped_decode_native(*args, bits=bits, values=values)
    if implementation == "pallas_gpu":
        words = grouped_decode_gpu(*args, bits=bits, block_sizes=block_sizes, interpret=interpret)
    elif implementation == "pallas_tpu":
        params = compat.tpu_interpret_params() if interpret else False
        words = grouped_decode_tpu(*args, bits=bits, block_sizes=block_sizes, interpret=params)
    else:
        words = grouped_decode_reference(*args, bits=bits)
    return words_to_values(words, bits) if values else words


@functools.partial(
    jax.jit, static_argnames=("implementation", "bits", "block_sizes", "interpret", "values")
)
def _run_traced_once(*args, implementation, bits, block_sizes, interpret, values):
    """``_run`` under ``jit``: its jaxpr is cached per (shapes, static arguments).

    ``lax.platform_dependent`` traces every branch whatever the platform, so without this a
    program decoding on a CPU traced the Mosaic TPU and Triton kernels again at every call (a
    fifth of ``ecf8 demo``'s time on a CPU). Under ``jit`` each backend's kernel is traced once
    per shape and process; its lowering still happens only for the platform lowered for.
    """
    return _run(implementation, args, bits, block_sizes, interpret, values)


_native_warned = False


def _native_usable() -> bool:
    """Whether the default CPU branch is the native decoder; warns once if it cannot be built
    (``ECF8_NATIVE=0`` turns it off silently)."""
    global _native_warned
    if not native_cpu.enabled():
        return False
    reason = native_cpu.unavailable_reason()
    if reason is not None and not _native_warned:
        _native_warned = True
        warnings.warn(f"ECF8 decode on cpu falls back to xla: {reason}", stacklevel=3)
    return reason is None


def decode(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    *,
    bits: int = 8,
    implementation: Implementation | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    values: bool = False,
) -> jax.Array:
    """Decodes version-2 chunks to uint32[C, S * bits // 32, L]; see
    ``grouped_decode_reference``.

    Args:
      stream, chunk_offsets, raw, lut, threshold: the raw arrays.
      bits: value width, 8 (FP8) or 16 (BF16, FP16).
      implementation: ``None`` (the lowering platform's kernel, else ``xla``) or one of
        ``IMPLEMENTATIONS``.
      block_sizes: launch parameters for a Pallas kernel (default: ``BlockSizes.get_default``).
      interpret: run the Pallas kernel in interpret mode (CPU tests); needs an explicit
        ``implementation``.
      values: return the values flat in slot order (``words_to_values``: uint8 or uint16
        ``[C * S * L]``) instead of the words; the native CPU decoder writes them directly
        (XLA:CPU unpacking words to bytes costs as much as the decode).

    Raises:
      ValueError: an implementation was asked for explicitly and cannot take these shapes.
    """
    args = (stream, chunk_offsets, raw, lut, threshold)
    if implementation is not None:
        reason = shapes_supported(implementation, raw.shape)
        if reason is not None:
            raise ValueError(f"ECF8 decode implementation {implementation!r}: {reason}")
        return _run(implementation, args, bits, block_sizes, interpret, values)
    branches = {}
    for platform, name in (("cuda", "pallas_gpu"), ("tpu", "pallas_tpu")):
        reason = shapes_supported(name, raw.shape)
        if reason is None:
            branches[platform] = functools.partial(
                _run_traced_once,
                implementation=name,
                bits=bits,
                block_sizes=block_sizes,
                interpret=False,
                values=values,
            )
        else:
            warnings.warn(f"ECF8 decode on {platform} falls back to xla: {reason}", stacklevel=2)

    def run(name):
        return functools.partial(
            _run_traced_once,
            implementation=name,
            bits=bits,
            block_sizes=None,
            interpret=False,
            values=values,
        )

    if _native_usable():
        branches["cpu"] = run("native_cpu")
    return lax.platform_dependent(*args, default=run("xla"), **branches)
