"""Fused version-2 decode + GEMV (small m) as a Pallas kernel for TPU (Mosaic).

Why: at batch 1-8 a layer is bound by reading its weight; decoding inside the GEMV keeps the
decoded weight out of HBM (decode-then-dot writes and re-reads it). This kernel is the
version-2 TPU decode with the multiply-accumulate on the VPU in place of the store: the same
``grouped_decode.pallas_tpu.program_start`` (8 chunks per program, one per sublane, the stream
DMA'd into a VMEM window) and ``decode_groups`` (the decode's groups, window rows shared by
two groups), so the two kernels decode at the same speed.

Numerics: decoded values become float32 exactly, by bit arithmetic (FP8 E4M3/E5M2 in ~13 VPU
ops, bit-identical to XLA's conversion; FP16 by its fields; BF16 by a shift; no float8 types
inside the kernel, v5e has none), and products with the float32 activations are summed per
lane in group order, then across the 128 lanes once per row; the caller scales. The raw twin (``rows_gemv_tpu``) is the same kernel loading the
uncompressed weight's words, so the two are bit-identical; both match ``x @ W.T`` to float32
rounding (the VPU may flush float32 subnormal products).

Backend: Pallas -> Mosaic TPU. Each chunk holds whole rows of the [n, k] weight
(``chunk_steps * 128`` a multiple of ``k``, ``k`` a multiple of 512), and the 8 chunks of a
program are at the same (row, column group) at every step, so one activation row slice
(permuted outside the kernel into the version-2 slot order) serves all 8 sublanes. A row's
128 lane sums are reduced when it ends and stored at its lane of an [m, 8, rows] block. The 8
chunks' words of a group are one sublane-strided load from the block's 2D view (a 3D
``[:, r, :]`` slice left 8 one-sublane vregs, each converted on its own). An iteration of the
row loop decodes and multiplies a whole row of up to 8 groups (4096 FP8 weights a chunk), so
the scheduler overlaps one group's conversions with the next groups' decode; longer rows run
a group loop of 8, 4 or 2 groups an iteration (``group_unroll``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.pallas_tpu import (
    decode_groups,
    pack_lut,
    program_start,
    stream_rows_of,
    window_scratch,
)
from pallas_kernels.grouped_decode.reference import (
    GROUP,
    groups_per_raw_word,
    kernel_arrays,
    value_bits,
    words_per_group,
)
from pallas_kernels.grouped_matmul.reference import slot_words

LANES = 128
GROUP_WEIGHTS = GROUP * LANES  # 512 consecutive weights of one row per group
MAX_M = 8
# groups a loop iteration (a whole row of up to 8); v5e, k = 4096, m = 1, bundles a group:
# fused FP8 99 (4 an iteration: 103, 2: 113), FP8 twin 19 (4: 20, 1: 32)
GROUP_UNROLL = 8

# (exponent bits, mantissa bits, bias, IEEE-style infinities/NaNs) of the narrow floats
_FIELDS = {
    "float8_e4m3fn": (4, 3, 7, False),
    "float8_e5m2": (5, 2, 15, True),
    "float16": (5, 10, 15, True),
}


def _field_bits(v, dtype):
    """uint32 ``dtype`` bit patterns (low bits) -> the float32 bits of their values, by fields.

    Normal numbers move their fields, subnormals are ``mantissa * 2**(1 - bias - mantissa_bits)``
    (exact, a normal float32), E4M3FN's 0x7F/0xFF and the IEEE formats' all-ones exponent
    become NaN/inf with the sign and payload kept.
    """
    e_bits, m_bits, bias, ieee = _FIELDS[jnp.dtype(dtype).name]
    width = 1 + e_bits + m_bits
    sign = (v >> (width - 1)) << 31
    e = (v >> m_bits) & ((1 << e_bits) - 1)
    m = v & ((1 << m_bits) - 1)
    normal = sign | ((e + (127 - bias)) << 23) | (m << (23 - m_bits))
    scale = jnp.float32(2.0 ** (1 - bias - m_bits))
    sub = m.astype(jnp.int32).astype(jnp.float32) * scale
    bits = jnp.where(e == 0, lax.bitcast_convert_type(sub, jnp.uint32) | sign, normal)
    top = (1 << e_bits) - 1
    if ieee:  # all-ones exponent: inf (m = 0) or NaN with its payload
        return jnp.where(e == top, sign | (0xFF << 23) | (m << (23 - m_bits)), bits)
    # E4M3FN: only S.1111.111 is NaN
    return jnp.where((e == top) & (m == (1 << m_bits) - 1), sign | 0x7FC00000, bits)


def fp8_to_float32(word, kk, dtype):
    """Byte ``kk`` of uint32 ``word`` (an FP8 bit pattern) -> its exact float32, in ~13 VPU ops.

    The 7 magnitude bits ``a`` (exponent, mantissa) shifted into a float32's fields plus the
    rebias ``(127 - bias) << 23`` are every normal value; a subnormal (``a`` below
    ``2**mantissa_bits``) is that pattern one binade up minus ``2**(1 - bias)``
    (``(1 + m / 2**mb) * 2**(1 - bias) - 2**(1 - bias)``, exact: no float32 subnormal is ever
    formed, which the VPU could flush); NaNs are the canonical 0x7FC00000 and E5M2's
    infinities 0x7F800000, the sign OR'd in last, so all 256 patterns (-0 included) match XLA's
    FP8 -> float32 bit for bit. Comparisons are on int32 (unsigned ones cost an extra op).
    """
    e_bits, m_bits, bias, ieee = _FIELDS[jnp.dtype(dtype).name]
    a = (word >> (8 * kk)) & 0x7F if kk else word & 0x7F
    top = jnp.uint32(1 << 31)
    sign = word & top if kk == 3 else (word << (24 - 8 * kk)) & top
    normal = (a << (23 - m_bits)) + jnp.uint32((127 - bias) << 23)
    up = lax.bitcast_convert_type(normal + jnp.uint32(1 << 23), jnp.float32)
    sub = lax.bitcast_convert_type(up - jnp.float32(2.0 ** (1 - bias)), jnp.uint32)
    a = lax.bitcast_convert_type(a, jnp.int32)
    bits = jnp.where(a < (1 << m_bits), sub, normal)
    if ieee:  # all-ones exponent (a >= 0x7C for E5M2): inf for mantissa 0, else NaN
        inf = (0x7F >> m_bits) << m_bits
        special = jnp.where(a == inf, jnp.uint32(0x7F800000), jnp.uint32(0x7FC00000))
        bits = jnp.where(a >= inf, special, bits)
    else:  # E4M3FN: only S.1111.111 is NaN
        bits = jnp.where(a == 0x7F, jnp.uint32(0x7FC00000), bits)
    return lax.bitcast_convert_type(bits | sign, jnp.float32)


def to_float32(v, dtype):
    """uint32 values holding ``dtype`` bit patterns (low bits) -> their exact float32.

    No float8 types (v5e has none): FP8 by ``fp8_to_float32`` (bit-identical to XLA's
    conversion for all 256 patterns), float16 by its fields (``_field_bits``), bfloat16 is
    the top half of a float32.
    """
    name = jnp.dtype(dtype).name
    if name == "bfloat16":
        return lax.bitcast_convert_type(v << 16, jnp.float32)
    if name == "float16":
        return lax.bitcast_convert_type(_field_bits(v, dtype), jnp.float32)
    return fp8_to_float32(v, 0, dtype)


def value_to_float32(word, kk, dtype):
    """Value ``kk`` of a uint32 word of ``dtype`` values -> float32, with the extraction shifts
    folded into the conversion (FP8 bytes; BF16 halves are one shift or one mask)."""
    bits = value_bits(dtype)
    if bits == 8:
        return fp8_to_float32(word, kk, dtype)
    if jnp.dtype(dtype).name == "bfloat16":
        half = word << 16 if kk == 0 else word & jnp.uint32(0xFFFF0000)
        return lax.bitcast_convert_type(half, jnp.float32)
    return to_float32((word >> (bits * kk)) & ((1 << bits) - 1), dtype)


def group_unroll(groups_per_row: int) -> int:
    """Groups per iteration of the kernel's group loop: a whole row of at most ``GROUP_UNROLL``
    groups (then there is no group loop), else the largest of ``GROUP_UNROLL``, 4, 2 that
    divides a row's groups, else 1. Unrolling lets the scheduler overlap one group's loads and
    conversions with another's decode (the loop body is otherwise one dependency chain)."""
    if groups_per_row <= GROUP_UNROLL:
        return groups_per_row
    for u in (GROUP_UNROLL, 4, 2):
        if groups_per_row % u == 0:
            return u
    return 1


def gemv_shapes_supported(n: int, k: int, chunk_steps: int, m: int) -> str | None:
    """Why the TPU GEMV cannot take an [n, k] weight of ``chunk_steps``, or None."""
    if k % GROUP_WEIGHTS:
        return f"the fused GEMV needs in_features % {GROUP_WEIGHTS} == 0, got {k}"
    if (chunk_steps * LANES) % k:
        return f"chunks of {chunk_steps * LANES} weights do not hold whole rows of {k}"
    if not 1 <= m <= MAX_M:
        return f"the fused GEMV is for 1 to {MAX_M} activation rows, got {m}"
    return None


def permute_activations(x: jax.Array, bits: int) -> jax.Array:
    """float32[m, k] -> [m, k // 128, 128]: row ``q * 4 + j`` holds, at lane ``l``, the column
    that value ``j`` of lane ``l`` multiplies in column group ``q`` (the slot order)."""
    m, k = x.shape
    per_word = 32 // bits
    shaped = x.astype(jnp.float32).reshape(
        m, k // GROUP_WEIGHTS, GROUP // per_word, LANES, per_word
    )
    return shaped.transpose(0, 1, 2, 4, 3).reshape(m, k // LANES, LANES)


def _gemv_rows(x_ref, out_ref, rows, groups_per_row, dtype, next_words, state):
    """The row loop shared by the fused kernel and its twin (8 chunks, one per sublane).

    ``next_words(g, count, state) -> (words, state)``: for each of the ``count`` groups from
    ``g`` on, its output words of the 8 chunks, a tuple of uint32[8, 128]. An iteration of
    the group loop takes ``group_unroll(groups_per_row)`` groups.
    """
    m = x_ref.shape[0]
    bits = value_bits(dtype)
    per_word = 32 // bits
    unroll = group_unroll(groups_per_row)
    lane = lax.broadcasted_iota(jnp.int32, out_ref.shape[2:], 1)  # [8, rows]
    out_ref[...] = jnp.zeros(out_ref.shape, jnp.float32)

    def row_body(r, state):
        def group_body(u, inner):
            acc, state = inner
            q0 = u * unroll  # the row's group
            groups, state = next_words(r * groups_per_row + q0, unroll, state)
            acc = list(acc)
            for d, words in enumerate(groups):
                for p, word in enumerate(words):
                    for kk in range(per_word):
                        j = p * per_word + kk
                        w = value_to_float32(word, kk, dtype)  # [8, 128]
                        for i in range(m):
                            xj = x_ref[i, pl.ds((q0 + d) * GROUP + j, 1), :]  # [1, 128]
                            acc[i] = acc[i] + w * xj
            return tuple(acc), state

        zeros = tuple(jnp.zeros((8, LANES), jnp.float32) for _ in range(m))
        if unroll == groups_per_row:
            acc, state = group_body(0, (zeros, state))
        else:
            acc, state = lax.fori_loop(0, groups_per_row // unroll, group_body, (zeros, state))
        for i in range(m):
            total = jnp.sum(acc[i], axis=-1, keepdims=True)  # [8, 1]
            out_ref[0, i] = jnp.where(lane == r, total, out_ref[0, i])
        return state

    lax.fori_loop(0, rows, row_body, state)


def _fused_kernel(
    offsets_ref, threshold_ref, stream_hbm, raw_ref, lut_ref, x_ref, out_ref, window, sem,
    *, chunks, stream_rows, num_words, rows, groups_per_row, dtype,
):  # fmt: skip
    block = 8
    raw_rows = raw_ref.shape[0] // block
    bits = value_bits(dtype)
    per_raw = groups_per_raw_word(bits)
    program, carry, copy = program_start(
        offsets_ref, threshold_ref, stream_hbm, lut_ref, window, sem,
        chunks=chunks, stream_rows=stream_rows, num_words=num_words,
    )  # fmt: skip

    def raw_word(h):  # the 8 chunks' raw word ``h``: one sublane-strided load
        return raw_ref[pl.ds(h, block, stride=raw_rows), :]

    def next_words(g, count, carry):
        if count % per_raw == 0 and groups_per_row % per_raw == 0:  # g is even for FP8
            loaded = [raw_word(g // per_raw + h) for h in range(count // per_raw)]
            raws = [loaded[d // per_raw] for d in range(count)]
            first = 0  # only the parity of a group's index matters
        else:
            raws = [raw_word((g + d) // per_raw) for d in range(count)]
            first = g
        carry, outs = decode_groups(program, carry, raws, first, bits)
        return outs, carry

    copy.wait()
    _gemv_rows(x_ref, out_ref, rows, groups_per_row, dtype, next_words, carry)


def _twin_kernel(words_ref, x_ref, out_ref, *, rows, groups_per_row, dtype, out_rows):
    per_group = words_per_group(value_bits(dtype))

    def next_words(g, count, state):
        groups = [
            tuple(
                words_ref[pl.ds((g + d) * per_group + p, 8, stride=out_rows), :]
                for p in range(per_group)
            )
            for d in range(count)
        ]
        return groups, state

    _gemv_rows(x_ref, out_ref, rows, groups_per_row, dtype, next_words, 0)


def _finish(out, m, n, scale):
    """[programs, m, 8, rows] row sums -> float32[m, n] scaled."""
    y = out.transpose(1, 0, 2, 3).reshape(m, -1)[:, :n]
    return y * jnp.asarray(scale, jnp.float32)[None, :]


def grouped_gemv_tpu(
    x: jax.Array,
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    scale: jax.Array,
    *,
    n: int,
    dtype=jnp.float8_e4m3fn,
    block_sizes: BlockSizes | None = None,
    interpret: bool | object = False,
) -> jax.Array:
    """``(x @ W.T) * scale`` for a version-2 [n, k] weight, decoded inside the GEMV on a TPU.

    Args:
      x: [m, k] activations, 1 <= m <= 8.
      stream, chunk_offsets, raw, lut, threshold: the weight's version-2 arrays.
      scale: float32[n] per output row (ones for an unscaled 16-bit weight).
      n: output features (rows of W).
      dtype: the weight's dtype (FP8, bfloat16 or float16).
      block_sizes: ``vmem_limit_bytes`` (``chunks_per_program`` must be 8 here).
      interpret: ``False`` or TPU interpret-mode parameters.

    Returns:
      float32[m, n].
    """
    bits = value_bits(dtype)
    chunks, raw_rows, lanes = raw.shape
    per_raw = groups_per_raw_word(bits)
    steps = 4 * per_raw * raw_rows
    m, k = x.shape
    if (reason := gemv_shapes_supported(n, k, steps, m)) is not None:
        raise ValueError(reason)
    block_sizes = block_sizes or BlockSizes.get_default(raw.shape, "pallas_tpu")
    block = 8
    stream, chunk_offsets, raw, lut, threshold = kernel_arrays(
        stream, chunk_offsets, raw, lut, threshold
    )
    stream2d, stream_rows = stream_rows_of(stream)
    programs = pl.cdiv(chunks, block)
    rows = steps * LANES // k
    kernel = functools.partial(
        _fused_kernel, chunks=chunks, stream_rows=stream_rows, num_words=stream.shape[0],
        rows=rows, groups_per_row=k // GROUP_WEIGHTS, dtype=jnp.dtype(dtype),
    )  # fmt: skip
    xp = permute_activations(x, bits)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(programs,),
        in_specs=[
            pl.BlockSpec(memory_space=pl.ANY),
            pl.BlockSpec((block * raw_rows, lanes), lambda b, *_: (b, 0)),
            pl.BlockSpec((block, lut.shape[1] // 2), lambda b, *_: (b, 0)),
            pl.BlockSpec(xp.shape, lambda b, *_: (0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((1, m, block, rows), lambda b, *_: (b, 0, 0, 0)),
        scratch_shapes=window_scratch(block, steps, stream_rows),
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((programs, m, block, rows), jnp.float32),
        grid_spec=grid_spec,
        interpret=interpret,
        name="ecf8_grouped_gemv_tpu",
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=block_sizes.vmem_limit_bytes
        ),
    )(
        chunk_offsets.astype(jnp.int32),
        threshold,
        stream2d,
        raw.reshape(-1, lanes),
        pack_lut(lut),
        xp,
    )
    return _finish(out, m, n, scale)


def rows_gemv_tpu(
    x: jax.Array,
    w: jax.Array,
    scale: jax.Array,
    *,
    chunk_steps: int,
    interpret: bool | object = False,
) -> jax.Array:
    """The raw twin of ``grouped_gemv_tpu``: the same kernel reading the uncompressed weight.

    Args:
      x: [m, k] activations, 1 <= m <= 8.
      w: [n, k] FP8, bfloat16 or float16 weight.
      scale: float32[n].
      chunk_steps: the chunking of the compressed twin (same rows per program).

    Returns:
      float32[m, n], bit-identical to ``grouped_gemv_tpu`` on the encoded ``w``.
    """
    n, k = w.shape
    m = x.shape[0]
    if (reason := gemv_shapes_supported(n, k, chunk_steps, m)) is not None:
        raise ValueError(reason)
    bits = value_bits(w.dtype)
    words = slot_words(w, chunk_steps)
    chunks, out_rows, lanes = words.shape
    block = 8
    programs = pl.cdiv(chunks, block)
    words = jnp.pad(words, ((0, programs * block - chunks), (0, 0), (0, 0)))
    rows = chunk_steps * LANES // k
    kernel = functools.partial(
        _twin_kernel,
        rows=rows,
        groups_per_row=k // GROUP_WEIGHTS,
        dtype=jnp.dtype(w.dtype),
        out_rows=out_rows,
    )
    xp = permute_activations(x, bits)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((programs, m, block, rows), jnp.float32),
        grid=(programs,),
        in_specs=[
            pl.BlockSpec((block * out_rows, lanes), lambda b: (b, 0)),
            pl.BlockSpec(xp.shape, lambda b: (0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((1, m, block, rows), lambda b: (b, 0, 0, 0)),
        interpret=interpret,
        name="rows_gemv_tpu",
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
    )(words.reshape(-1, lanes), xp)
    return _finish(out, m, n, scale)
