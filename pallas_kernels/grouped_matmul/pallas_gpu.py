"""Fused version-2 decode + GEMV (small m) as a Pallas kernel lowered through Triton (GPU).

Why: at batch 1-8 a layer is bound by reading its weight; decoding inside the GEMV means the
decoded FP8 weight never touches HBM (decode-then-dot moves ~2.8 bytes per weight, this kernel
0.84). Version 2's ``flat`` layout of an [out, in] weight suits a GEMV when every chunk holds
whole rows (``chunk_steps * 128`` a multiple of ``in``, ``in`` a multiple of 512): a program
owns whole output rows, so no partial sums leave it and rows need no padding to 16.

Numerics: FP8 weights become float32 exactly; products with the float32 activations are summed
per lane in group order (four steps of a group in order), then across the 128 lanes by
``jnp.sum``, then scaled. The raw-FP8 twin (``fp8_rows_gemv``) is this kernel with the decode
replaced by a load of the same uint32 words, so the two are bit-identical; both match
``x @ W.T * scale`` to float32 rounding.

Backend: Pallas -> Triton (explicit ``plgpu.CompilerParams``), one program per chunk, one warp
by default; the decode is ``grouped_decode.reference.decode_group``, activations are read as
four stride-4 slices of each 512-column group.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.grouped_decode.pallas_gpu import chunk_setup
from pallas_kernels.grouped_decode.reference import (
    GROUP,
    decode_group,
    groups_per_raw_word,
    kernel_arrays,
    value_bits,
    words_per_group,
)
from pallas_kernels.grouped_matmul.reference import slot_words

LANES = 128
GROUP_WEIGHTS = GROUP * LANES  # 512 consecutive weights of one row per group


def _gemv_body(x_ref, scale_ref, out_ref, c, rows, groups_per_row, dtype, next_words, state):
    """The row loop shared by the fused kernel and its twin.

    ``next_words(g, state) -> (words, state)`` yields group ``g``'s packed weights: a tuple of
    ``words_per_group`` uint32[128] (four FP8 bytes, or two 16-bit values each). Weight ``k``
    of word ``p`` of lane ``l`` is column ``p * per_word * 128 + l * per_word + k`` of the
    group's 512 (the version-2 slot order). The last chunk's padding rows are not computed.
    """
    n = out_ref.shape[1]
    bits = value_bits(dtype)
    per_word = 32 // bits
    uint = jnp.uint8 if bits == 8 else jnp.uint16

    def row_body(r, carry):
        (state,) = carry

        def group_body(q, inner):
            acc, state = inner
            g = r * groups_per_row + q
            words, state = next_words(g, state)
            for p, word in enumerate(words):
                for k in range(per_word):
                    v = ((word >> (bits * k)) & ((1 << bits) - 1)).astype(uint)
                    w = lax.bitcast_convert_type(v, dtype).astype(jnp.float32)
                    start = q * GROUP_WEIGHTS + p * per_word * LANES + k
                    xj = x_ref[:, pl.ds(start, LANES, stride=per_word)]
                    acc = acc + xj.astype(jnp.float32) * w[None, :]
            return acc, state

        acc = jnp.zeros((x_ref.shape[0], LANES), jnp.float32)
        acc, state = lax.fori_loop(0, groups_per_row, group_body, (acc, state))
        row = c * rows + r
        y = jnp.sum(acc, axis=1) * scale_ref[row]
        out_ref[:, pl.ds(row, 1)] = y[:, None]
        return (state,)

    lax.fori_loop(0, jnp.minimum(rows, n - c * rows), row_body, (state,))


def _fused_kernel(
    offsets_ref, threshold_ref, stream_ref, raw_ref, lut_ref, x_ref, scale_ref, out_ref,
    *, rows, groups_per_row, dtype,
):  # fmt: skip
    c = pl.program_id(0)
    num_words = stream_ref.shape[0]
    bits = value_bits(dtype)
    per_raw = groups_per_raw_word(bits)
    ops, threshold, state = chunk_setup(
        c, offsets_ref, threshold_ref, stream_ref, lut_ref, raw_ref.shape[-1]
    )

    def next_words(g, state):
        hi, lo, nbits, base = state
        raw_word = raw_ref[c, g // per_raw, :]
        hi, lo, nbits, base, words = decode_group(
            hi, lo, nbits, base, threshold, ops, raw_word, g, num_words, bits
        )
        return words, (hi, lo, nbits, base)

    _gemv_body(x_ref, scale_ref, out_ref, c, rows, groups_per_row, dtype, next_words, state)


def _twin_kernel(words_ref, x_ref, scale_ref, out_ref, *, rows, groups_per_row, dtype):
    c = pl.program_id(0)
    per_group = words_per_group(value_bits(dtype))

    def next_words(g, state):
        return tuple(words_ref[c, g * per_group + p, :] for p in range(per_group)), state

    _gemv_body(x_ref, scale_ref, out_ref, c, rows, groups_per_row, dtype, next_words, 0)


def gemv_shapes_supported(n: int, k: int, chunk_steps: int, m: int) -> str | None:
    """Why the fused GEMV cannot take an [n, k] weight of ``chunk_steps``, or None."""
    if k % GROUP_WEIGHTS:
        return f"the fused GEMV needs in_features % {GROUP_WEIGHTS} == 0, got {k}"
    if (chunk_steps * LANES) % k:
        return f"chunks of {chunk_steps * LANES} weights do not hold whole rows of {k}"
    if m > 8:
        return f"the fused GEMV is for at most 8 activation rows, got {m}"
    return None


def _padded_x(x):
    m = x.shape[0]
    m_pad = max(1, 1 << (m - 1).bit_length()) if m > 1 else 1
    return jnp.pad(x, ((0, m_pad - m), (0, 0))), m


def _call(kernel, args, x, scale, n, chunks, num_warps, name, interpret):
    xp, m = _padded_x(x)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((xp.shape[0], n), jnp.float32),
        grid=(chunks,),
        interpret=interpret,
        name=name,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
    )(*args, xp, jnp.asarray(scale, jnp.float32))
    return out[:m]


def grouped_gemv_gpu(
    x: jax.Array,
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    scale: jax.Array,
    *,
    n: int,
    fp8_dtype=jnp.float8_e4m3fn,
    num_warps: int = 1,
    interpret: bool = False,
) -> jax.Array:
    """``(x @ W.T) * scale`` for a version-2 [n, k] weight, decoded inside the GEMV.

    Args:
      x: [m, k] activations, m <= 8.
      stream, chunk_offsets, raw, lut, threshold: the weight's version-2 arrays.
      scale: float32[n] per output row (ones for an unscaled BF16 weight).
      n: output features (rows of W).
      fp8_dtype: the weight's dtype: an FP8 dtype, or bfloat16 / float16 (16-bit format;
        products are float32, e.g. bf16 x bf16 -> f32).

    Returns:
      float32[m, n].
    """
    bits = value_bits(fp8_dtype)
    chunks, raw_rows, _ = raw.shape
    k = x.shape[1]
    steps = 4 * groups_per_raw_word(bits) * raw_rows
    reason = gemv_shapes_supported(n, k, steps, x.shape[0])
    if reason is not None:
        raise ValueError(reason)
    stream, chunk_offsets, raw, lut, threshold = kernel_arrays(
        stream, chunk_offsets, raw, lut, threshold
    )
    kernel = functools.partial(
        _fused_kernel, rows=steps * LANES // k, groups_per_row=k // GROUP_WEIGHTS,
        dtype=fp8_dtype,
    )  # fmt: skip
    args = (chunk_offsets, threshold, stream, raw, lut.reshape(-1))
    return _call(kernel, args, x, scale, n, chunks, num_warps, "ecf8_grouped_gemv", interpret)


def fp8_rows_gemv(
    x: jax.Array,
    w: jax.Array,
    scale: jax.Array,
    *,
    chunk_steps: int,
    num_warps: int = 1,
    interpret: bool = False,
) -> jax.Array:
    """The raw twin of ``grouped_gemv_gpu``: the same kernel reading the uncompressed weight.

    Args:
      x: [m, k] activations.
      w: [n, k] FP8 (or bfloat16 / float16) weight, padded here to whole chunks.
      scale: float32[n].
      chunk_steps: the chunking of the compressed twin (same rows per program).

    Returns:
      float32[m, n], bit-identical to ``grouped_gemv_gpu`` on the encoded ``w``.
    """
    n, k = w.shape
    reason = gemv_shapes_supported(n, k, chunk_steps, x.shape[0])
    if reason is not None:
        raise ValueError(reason)
    per_chunk = chunk_steps * LANES
    words = slot_words(w, chunk_steps)
    kernel = functools.partial(
        _twin_kernel, rows=per_chunk // k, groups_per_row=k // GROUP_WEIGHTS, dtype=w.dtype
    )
    chunks = words.shape[0]
    return _call(kernel, (words,), x, scale, n, chunks, num_warps, "fp8_rows_gemv", interpret)
