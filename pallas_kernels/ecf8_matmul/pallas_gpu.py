"""Fused ECF8 matmul on GPU (Pallas -> Triton): ``y = (x @ w) * scale`` with ``w`` decoded
tile by tile in registers, never written to HBM.

Why: a decode-then-matmul design moves ~2.85 bytes per weight through HBM (read the code,
write FP8, read FP8) against 1 for plain FP8; decoding inside the matmul moves ~0.83, which is
the only way an entropy-coded format can beat plain FP8 when weight loading is the bottleneck
(batch-1 decoding).

Numerics: ``w`` is FP8 (E4M3 or E5M2) stored in the ``tiles`` layout: chunk ``(rb, cb)`` is
the [S, 128] tile ``w[rb*S:(rb+1)*S, cb*128:(cb+1)*128]``. Every FP8 value is exact in bf16;
``x`` is cast to bf16; each [bm, 32] x [32, 128] product is accumulated in float32 in a fixed
order (row blocks, then groups of 32 rows), and the float32 scale per output column is applied
once at the end. The same kernel fed raw FP8 tiles (``tile_source="raw"``) is the reference:
same tiling, same accumulation order, so the fused result must be bit-identical to it.

Backend: Triton, explicitly selected. Grid (N / 128, M / bm, split): program ``(cb, mb, p)``
owns one [bm, 128] output block and walks its share of the row blocks of that column of
tiles; with ``split > 1`` (small m: every row block in parallel, the batch-1 GEMV case) the
float32 partial sums are added by XLA in a fixed order before the scale. Decoding a tile is
``ecf8_decode``'s step (shared code), 32 steps per [32, 128] slab, assembled with selects.
Rows past K (padding of the last row block) are zeroed before the dot, since padding slots
decode to arbitrary bytes (possibly NaN). Untuned: no GPU was available to measure on.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.ecf8_decode.pallas_gpu import gpu_lane_ops
from pallas_kernels.ecf8_decode.reference import SIGN_WORD_BITS, decode_step, kernel_arrays
from pallas_kernels.ecf8_matmul.config import BlockSizes

SLAB_ROWS = SIGN_WORD_BITS  # rows of w per dot: one sign word's worth of steps
LANES = 128


def _matmul_kernel(*refs, tile_source, k, steps, row_blocks, col_blocks, fp8_dtype, block_m, split):
    if tile_source == "ecf8":
        (x_ref, scale_ref, offsets_ref, stream_ref, signs_ref, limits_ref, deltas_ref,
         symbols_ref, out_ref) = refs  # fmt: skip
        ops = gpu_lane_ops(stream_ref, symbols_ref)
        limits = [limits_ref[i] for i in range(limits_ref.shape[0])]
        deltas = [deltas_ref[i] for i in range(deltas_ref.shape[0])]
        num_units = 2 * stream_ref.shape[0]
    else:
        x_ref, scale_ref, w_ref, out_ref = refs
    cb = pl.program_id(0)
    mb = pl.program_id(1)
    part = pl.program_id(2)  # this program's share of the row blocks (split-k)
    groups = steps // SLAB_ROWS
    slab_row = lax.broadcasted_iota(jnp.int32, (SLAB_ROWS, LANES), 0)

    def slab_body(rb, g, state, acc):
        k0 = rb * steps + g * SLAB_ROWS
        if tile_source == "ecf8":
            chunk = rb * col_blocks + cb
            sign_word = signs_ref[chunk, g, :]

            def step_body(j, carry):
                buf, nbits, base, slab = carry
                buf, nbits, base, byte = decode_step(
                    buf, nbits, base, ops, limits, deltas, sign_word, j, num_units
                )
                slab = jnp.where(slab_row == j, byte.astype(jnp.int32)[None, :], slab)
                return buf, nbits, base, slab

            slab = jnp.zeros((SLAB_ROWS, LANES), jnp.int32)
            *state, slab = lax.fori_loop(0, SLAB_ROWS, step_body, (*state, slab))
            slab = slab.astype(jnp.uint8)
        else:
            slab = w_ref[pl.ds(k0, SLAB_ROWS), pl.ds(cb * LANES, LANES)]
        w = lax.bitcast_convert_type(slab, fp8_dtype).astype(jnp.bfloat16)
        w = jnp.where(slab_row + k0 < k, w, jnp.zeros_like(w))  # padding rows decode to junk
        xs = x_ref[pl.ds(mb * block_m, block_m), pl.ds(k0, SLAB_ROWS)]
        acc = acc + jnp.dot(xs, w, preferred_element_type=jnp.float32)
        return tuple(state), acc

    def row_block_body(rb, acc):
        if tile_source == "ecf8":
            chunk = rb * col_blocks + cb
            state = (
                jnp.zeros((LANES,), jnp.uint32),
                jnp.zeros((LANES,), jnp.int32),
                jnp.full((1,), offsets_ref[chunk], jnp.int32),
            )
        else:
            state = ()

        def group_body(g, carry):
            state, acc = carry
            return slab_body(rb, g, state, acc)

        _, acc = lax.fori_loop(0, groups, group_body, (state, acc))
        return acc

    per_part = -(-row_blocks // split)
    first = part * per_part
    last = jnp.minimum(first + per_part, row_blocks)
    acc = lax.fori_loop(first, last, row_block_body, jnp.zeros((block_m, LANES), jnp.float32))
    if split == 1:
        out_ref[...] = acc * scale_ref[pl.ds(cb * LANES, LANES)][None, :]
    else:  # partial sums; the caller adds them in a fixed order, then scales
        out_ref[...] = acc[None]


def tiled_matmul_gpu(
    x: jax.Array,
    scale: jax.Array,
    weights: tuple,
    *,
    tile_source: str,
    k: int,
    n: int,
    steps: int,
    fp8_dtype,
    block_sizes: BlockSizes | None = None,
    block_m: int | None = None,
    split_k: int | None = None,
    num_warps: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """``(x @ w) * scale`` with ``w`` [k, n] given as ECF8 tile chunks or raw FP8.

    Args:
      x: [m, k] activations (cast to bf16).
      scale: float32[n] per output column (broadcast a per-tensor scale).
      weights: for ``tile_source="ecf8"``: ``(chunk_offsets, stream, signs, limits, deltas,
        symbols)`` of a ``tiles``-layout tensor; for ``"raw"``: ``(w_bytes,)``, uint8[k, n].
      tile_source: ``"ecf8"`` (fused decode) or ``"raw"`` (the reference).
      k, n: the weight's shape; ``n`` a multiple of 128.
      steps: rows per tile (the tensor's ``chunk_steps``).
      fp8_dtype: the weight's FP8 dtype.
      block_sizes: launch parameters (default: ``BlockSizes.get_default``).
      block_m, split_k, num_warps: shorthands that override those fields of ``block_sizes``.
      interpret: run in Pallas interpret mode.

    Returns:
      float32[m, n].
    """
    m = x.shape[0]
    overrides = dict(block_m=block_m, split_k=split_k, num_warps=num_warps)
    block_sizes = dataclasses.replace(
        block_sizes or BlockSizes(), **{f: v for f, v in overrides.items() if v is not None}
    ).resolve(m, k, steps)
    block_m, split_k = block_sizes.block_m, block_sizes.split_k
    row_blocks = -(-k // steps)
    col_blocks = n // LANES
    m_pad = -(-m // block_m) * block_m
    x = jnp.pad(x.astype(jnp.bfloat16), ((0, m_pad - m), (0, row_blocks * steps - k)))
    if tile_source == "raw":
        (w_bytes,) = weights
        w_bytes = jnp.pad(jnp.asarray(w_bytes, jnp.uint8), ((0, row_blocks * steps - k), (0, 0)))
        weights = (w_bytes,)
    else:
        offsets, stream, signs, limits, deltas, symbols = weights
        stream, offsets, signs, limits, deltas, symbols = kernel_arrays(
            stream, offsets, signs, limits, deltas, symbols
        )
        weights = (offsets, stream, signs, limits, deltas, symbols)
    kernel = functools.partial(
        _matmul_kernel,
        tile_source=tile_source,
        k=k,
        steps=steps,
        row_blocks=row_blocks,
        col_blocks=col_blocks,
        fp8_dtype=fp8_dtype,
        block_m=block_m,
        split=split_k,
    )
    if split_k == 1:
        out_shape = jax.ShapeDtypeStruct((m_pad, n), jnp.float32)
        out_spec = pl.BlockSpec((block_m, LANES), lambda cb, mb, part: (mb, cb))
    else:
        out_shape = jax.ShapeDtypeStruct((split_k, m_pad, n), jnp.float32)
        out_spec = pl.BlockSpec((1, block_m, LANES), lambda cb, mb, part: (part, mb, cb))
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(col_blocks, m_pad // block_m, split_k),
        out_specs=out_spec,
        interpret=interpret,
        name="ecf8_matmul" if tile_source == "ecf8" else "fp8_tiled_matmul",
        compiler_params=plgpu.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages
        ),
        cost_estimate=pl.CostEstimate(
            flops=2 * m_pad * row_blocks * steps * n,
            transcendentals=0,
            bytes_accessed=int(x.size * 2 + sum(w.size * w.dtype.itemsize for w in weights)),
        ),
    )(x, jnp.asarray(scale, jnp.float32), *weights)
    if split_k > 1:
        out = out.sum(axis=0) * jnp.asarray(scale, jnp.float32)[None, :]
    return out[:m]
