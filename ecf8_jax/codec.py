"""Decoding ``Ecf8Tensor``s to FP8 / bfloat16 / float16 arrays, and the stacking that
``vmap``/``scan`` need. The fused matmul (version 1 ``tiles``) and GEMV (version 2) are FP8-only."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ecf8_jax.format import grouped
from ecf8_jax.format.codebook import canonical_tables
from ecf8_jax.format.constants import DTYPES
from ecf8_jax.format.tensor import Ecf8Tensor, FormatError, check_known
from pallas_kernels import compat
from pallas_kernels.ecf8_decode import api as decode_api
from pallas_kernels.ecf8_matmul import api as matmul_api
from pallas_kernels.ecf8_matmul.reference import tiles_to_matrix
from pallas_kernels.grouped_decode import api as grouped_api
from pallas_kernels.grouped_matmul import pallas_gpu as gemv_kernels
from pallas_kernels.grouped_matmul import pallas_tpu as tpu_gemv_kernels


def decode(
    t: Ecf8Tensor, *, implementation: str | None = None, interpret: bool = False
) -> jax.Array:
    """Decodes ``t`` to an array of its dtype and shape, bit-identical to what was encoded.

    Plain jnp (or a Pallas kernel, through ``pallas_kernels.ecf8_decode``), so it composes
    with ``jax.jit``, ``jax.vmap`` over stacked tensors and ``lax.scan`` over layers. It does
    not validate: call :func:`ecf8_jax.validate` on untrusted input first (a malformed tensor
    decodes to garbage, but never reads out of bounds).

    Args:
      t: the encoded tensor.
      implementation: decode backend (``"xla"``, ``"pallas_gpu"``, ``"pallas_tpu"``); ``None``
        picks the current platform's kernel and falls back to ``"xla"`` with a warning.
      interpret: run a Pallas kernel in interpret mode (for tests on CPU).

    Returns:
      jax.Array of ``t.dtype`` and ``t.shape``.

    Raises:
      FormatError: the version or dtype (static metadata) is unknown.
    """
    check_known(t)
    if t.version == 2:
        raw = _decode_grouped(t.stream, t.chunk_offsets, t.signs, t.code_lengths,
                              value_bits(t), implementation, interpret)  # fmt: skip
    else:
        limits, deltas, symbols = canonical_tables(t.code_lengths, jnp)
        raw = decode_api.decode(
            t.stream,
            t.chunk_offsets,
            t.signs,
            limits,
            deltas,
            symbols,
            implementation=implementation,
            interpret=interpret,
        )
    return lax.bitcast_convert_type(slots_to_tensor(raw, t), DTYPES[t.dtype])


def value_bits(t: Ecf8Tensor) -> int:
    """Bits per value of ``t``'s dtype: 8 (FP8) or 16 (bfloat16, float16)."""
    return DTYPES[t.dtype].itemsize * 8


def _decode_grouped(stream, offsets, raw, lengths, bits, implementation, interpret):
    """Version-2 chunks -> uint8 (FP8) or uint16 (16-bit) [C * S * 128] slots."""
    args = grouped.kernel_args(stream, offsets, raw, lengths, jnp)
    return grouped_api.decode(
        *args, bits=bits, implementation=implementation, interpret=interpret, values=True
    )


def decode_chunks(
    t: Ecf8Tensor,
    chunk_ids: jax.Array,
    *,
    implementation: str | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Decodes only the chunks ``chunk_ids`` of ``t``: their slots, in the order asked for.

    Chunks are independent (each starts at its own stream offset with its own sign words), so
    a few rows of a large table can be read without decoding the rest. Ids are clamped to
    ``[0, C - 1]``: an out-of-range id reads the nearest chunk, never out of bounds.

    Args:
      t: the encoded tensor (any layout; slots are in the layout's chunk order).
      chunk_ids: int[n] chunk indices (repeats allowed).
      implementation, interpret: as for :func:`decode`.

    Returns:
      uint8[n, chunk_steps * 128] (FP8) or uint16 (bfloat16, float16): the bit patterns of
      each chunk, trailing padding of the last chunk included.
    """
    check_known(t)
    chunks = t.signs.shape[0]
    ids = jnp.clip(jnp.asarray(chunk_ids, jnp.int32).reshape(-1), 0, chunks - 1)
    offsets = jnp.asarray(t.chunk_offsets)
    offsets = jnp.concatenate([offsets[ids], offsets[-1:]])
    if t.version == 2:
        lengths = jnp.asarray(t.code_lengths)[ids]
        raw = _decode_grouped(t.stream, offsets, jnp.asarray(t.signs)[ids], lengths,
                              value_bits(t), implementation, interpret)  # fmt: skip
        return raw.reshape(ids.shape[0], -1)
    limits, deltas, symbols = canonical_tables(t.code_lengths, jnp)
    raw = decode_api.decode(
        t.stream,
        offsets,
        jnp.asarray(t.signs)[ids],
        limits,
        deltas,
        symbols,
        implementation=implementation,
        interpret=interpret,
    )
    return raw.reshape(ids.shape[0], -1)


def slots_to_tensor(slots: jax.Array, t: Ecf8Tensor) -> jax.Array:
    """Reorders decoded chunk slots (uint8 or uint16 [C * S * 128]) into ``t``'s shape,
    dropping padding."""
    if t.layout == "tiles":
        return tiles_to_matrix(slots, *t.shape, t.chunk_steps)
    return slots[: t.size].reshape(t.shape)


def matmul(
    x: jax.Array,
    w: Ecf8Tensor,
    scale: jax.Array | float = 1.0,
    *,
    implementation: str | None = None,
    interpret: bool = False,
) -> jax.Array:
    """``(x @ w) * scale`` for an ECF8 weight ``w`` [k, n] encoded with ``layout="tiles"``.

    On GPU the weight is decoded tile by tile inside the matmul (never written to HBM);
    elsewhere it is decoded, then multiplied by XLA. Numerics: bf16 operands (FP8 values are
    exact in bf16), float32 accumulation, float32 scale per output column.

    Args:
      x: [m, k] activations.
      w: the weight, ``layout="tiles"``.
      scale: per-tensor scalar or float32[n] per output column.
      implementation: ``None``, ``"xla"`` or ``"pallas_gpu"``.
      interpret: run the Pallas kernel in interpret mode.

    Returns:
      float32[m, n].
    """
    check_known(w)
    if w.layout != "tiles":
        raise FormatError(f"matmul needs a weight encoded with layout='tiles', not {w.layout!r}")
    k, n = w.shape
    limits, deltas, symbols = canonical_tables(w.code_lengths, jnp)
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (n,))
    return matmul_api.ecf8_matmul(
        x, scale, w.chunk_offsets, w.stream, w.signs, limits, deltas, symbols,
        k=k, n=n, fp8_dtype=DTYPES[w.dtype], implementation=implementation, interpret=interpret,
    )  # fmt: skip


GEMV_PLATFORMS = ("cuda", "tpu")
"""Platforms with a row GEMV kernel (Triton on CUDA, Mosaic on TPU); one shape rule for both."""

LAYER_GEMV_PLATFORMS = ("cuda",)
"""Where linear layers take the row GEMV for m <= 8 (``bench.kernel_cost``, BENCHMARKS.md).
On TPU they do not: for FP8 the fused Mosaic GEMV (61 GB/s on a v5e at m = 1, 52 at m = 8;
v6e 62 / 56) is no faster than decoding (67 / 65 GB/s) and then XLA's dot at the roofline
(0.99x at m = 1, 0.83x at m = 8 on a v5e; 1.00x / 0.90x on a v6e), and its raw-FP8 twin
(~325 GB/s: FP8 -> float32 by bit arithmetic on the VPU) would slow uncompressed FP8 layers
~2.5x against XLA's dot (819 GB/s); decode-then-dot keeps the compressed layer bit-identical to
the raw one there. (BF16 weights would gain at m = 1, 1.26x on a v5e, but the rule is on
shapes only, shared by every dtype.)"""


def gemv_applies(shape: tuple[int, ...], m: int) -> bool:
    """Whether layers multiply ``m`` activation rows by an [out, in] weight of ``shape`` with the
    row GEMV on CUDA or TPU (``in`` a multiple of 512 that some chunk size holds whole rows of,
    m <= 8). A rule on shapes only, so a raw-FP8 layer and its compressed twin always agree."""
    if len(shape) != 2:
        return False
    steps = grouped.row_chunk_steps(shape[1])
    return steps is not None and gemv_kernels.gemv_shapes_supported(*shape, steps, m) is None


def fused_gemv_ready(w: Ecf8Tensor) -> bool:
    """Whether ``w`` can be decoded inside the GEMV: version 2 (FP8 or 16-bit), unstacked, chunks
    of whole rows (what ``compress_model`` writes); other encodings are decoded first."""
    return (
        w.version == 2
        and np.ndim(w.chunk_offsets) == 1
        and len(w.shape) == 2
        and (w.chunk_steps * 128) % w.shape[1] == 0
    )


def _check_gemv_platform(platform: str) -> None:
    if platform not in GEMV_PLATFORMS:
        raise ValueError(f"no row GEMV kernel for {platform!r}; available: {GEMV_PLATFORMS}")


def gemv(
    x: jax.Array,
    w: Ecf8Tensor,
    scale: jax.Array,
    *,
    platform: str = "cuda",
    interpret: bool = False,
) -> jax.Array:
    """``(x @ W.T) * scale`` with the version-2 weight decoded inside a GEMV (m <= 8).

    Args:
      x: [m, in] activations.
      w: version-2 [out, in] weight whose chunks hold whole rows (``fused_gemv_ready``).
      scale: float32[out] per output row.
      platform: ``"cuda"`` (Triton kernel) or ``"tpu"`` (Mosaic kernel).
      interpret: run the kernel in interpret mode.

    Returns:
      float32[m, out], bit-identical to :func:`fp8_gemv` of the same platform on the decoded
      weight.
    """
    _check_gemv_platform(platform)
    args = grouped.kernel_args(w.stream, w.chunk_offsets, w.signs, w.code_lengths, jnp)
    if platform == "tpu":
        params = compat.tpu_interpret_params() if interpret else False
        return tpu_gemv_kernels.grouped_gemv_tpu(
            x, *args, scale, n=w.shape[0], dtype=DTYPES[w.dtype], interpret=params
        )
    return gemv_kernels.grouped_gemv_gpu(
        x, *args, scale,
        n=w.shape[0], fp8_dtype=DTYPES[w.dtype], interpret=interpret,
    )  # fmt: skip


def fp8_gemv(
    x: jax.Array,
    w: jax.Array,
    scale: jax.Array,
    *,
    platform: str = "cuda",
    interpret: bool = False,
) -> jax.Array:
    """The raw twin of :func:`gemv`: the same kernel reading an uncompressed [out, in] weight."""
    _check_gemv_platform(platform)
    steps = grouped.row_chunk_steps(w.shape[1])
    if platform == "tpu":
        params = compat.tpu_interpret_params() if interpret else False
        return tpu_gemv_kernels.rows_gemv_tpu(x, w, scale, chunk_steps=steps, interpret=params)
    return gemv_kernels.fp8_rows_gemv(x, w, scale, chunk_steps=steps, interpret=interpret)


def pad_stream(t: Ecf8Tensor, words: int | None = None) -> Ecf8Tensor:
    """Zero-pads the stream to ``words`` (default: the next power of two, at least 1024).

    Units past ``chunk_offsets[-1]`` are never used, so the result decodes identically. A
    jitted decode is compiled once per array shape and stream lengths differ from tensor to
    tensor: padding to a few bucket sizes trades a little memory for far fewer compilations.
    """
    width = int(t.stream.shape[-1])
    if words is None:
        words = max(1024, 1 << (width - 1).bit_length())
    if words < width:
        raise FormatError(f"pad_stream: {words} words < the stream's {width}")
    xp = _xp(t.stream)
    stream = xp.asarray(t.stream)
    pad = [(0, 0)] * (stream.ndim - 1) + [(0, words - width)]
    return dataclasses.replace(t, stream=xp.pad(stream, pad))


def _xp(*arrays):
    """numpy for host arrays; jax.numpy while tracing (an abstract model under eval_shape)."""
    return jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np


def stack(tensors: list[Ecf8Tensor]) -> Ecf8Tensor:
    """Stacks tensors of one shape, dtype and chunking along a new leading axis.

    Streams are zero-padded to the longest (bytes past a chunk's last unit are never used), so
    the result can be mapped with ``jax.vmap(decode)`` or scanned with ``lax.scan``.

    Raises:
      FormatError: if the tensors differ in static metadata.
    """
    if not tensors:
        raise FormatError("stack needs at least one tensor")
    meta = tensors[0].metadata()
    for i, t in enumerate(tensors):
        if t.metadata() != meta:
            raise FormatError(f"stack: tensor {i} has metadata {t.metadata()}, tensor 0 {meta}")
    width = max(int(t.stream.shape[0]) for t in tensors)
    xp = _xp(*(leaf for t in tensors for leaf in jax.tree.leaves(t)))
    stream = xp.stack([xp.asarray(pad_stream(t, width).stream) for t in tensors])

    def leaf(name):
        return xp.stack([xp.asarray(getattr(t, name)) for t in tensors])

    return Ecf8Tensor(
        stream=stream,
        chunk_offsets=leaf("chunk_offsets"),
        signs=leaf("signs"),
        code_lengths=leaf("code_lengths"),
        checksums=leaf("checksums"),
        shape=tensors[0].shape,
        dtype=tensors[0].dtype,
        chunk_steps=tensors[0].chunk_steps,
        version=tensors[0].version,
        layout=tensors[0].layout,
    )
