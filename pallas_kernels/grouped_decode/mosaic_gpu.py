"""ECF8 version-2 decode as a Pallas Mosaic GPU kernel (prototype; Hopper).

Why: Pallas Triton is deprecated in jax 0.12 and Mosaic GPU is its successor. Pallas Mosaic GPU
has no lowering for the decode's two cross-lane operations, ``jnp.cumsum`` and a gather
(``ref[index_vector]``, ``jnp.take``), under either lowering semantics (docs/kernels.md has
the table). It does have ``plgpu.inline_mgpu``: a function that receives the Mosaic GPU
``FragmentedArray``s and memrefs and emits MLIR itself. This kernel writes the two missing
operations there, per CUDA thread: a ``memref.load`` at the thread's own index (the gather;
from global memory for the stream, from shared memory for the table) and a warp
``shfl.sync.up`` scan whose four warp totals meet in shared memory (the prefix sum). The rest
of ``decode_group`` (shifts, masks, selects, the lane sum, the loop) is ordinary Pallas.

Numerics: integer only, the shared ``decode_group``. ``interpret=True`` runs the kernel in
Mosaic GPU's CPU interpreter (jax 0.12; not in 0.10.2) with the two helpers replaced by ``jnp.cumsum`` and
``jnp.take`` (the interpreter raises on ``inline_mgpu`` and on ``ref[index_vector]``): that
checks everything but the helpers bit for bit against the reference. The helpers are only
lowered here; they need a GPU run.

Backend: Pallas -> Mosaic GPU, ``Lane`` lowering semantics (``inline_mgpu`` has no
``Warpgroup`` rule), one warpgroup (128 threads, one lane each: ``WG_STRIDED`` layout,
``vec_size=1``) per chunk, grid ``(chunks,)``. The chunk's 256-entry table is copied to shared
memory by TMA; raw words and output words go through ordinary (strided) loads and stores.
Uses jax internals (``jaxlib.mlir`` dialects, ``FragmentedArray`` constructor): prototype.
"""

from __future__ import annotations

import functools

import jax
import jax.experimental.mosaic.gpu as mgpu
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, gpu, memref, nvvm, vector

from pallas_kernels.grouped_decode.reference import (
    LUT_SIZE,
    GroupOps,
    check_bits,
    decode_group,
    groups_per_raw_word,
    kernel_arrays,
    words_per_group,
)

LANES = 128  # one warpgroup, one lane per thread
WARPS = LANES // 32
LANE_LAYOUT = plgpu.Layout.WG_STRIDED((LANES,), vec_size=1)


def _i32(v: int):
    return arith.constant(ir.IntegerType.get_signless(32), v)


def _thread_lane():
    """``(lane in warp, warp in warpgroup)`` of the current thread, i32."""
    i32 = ir.IntegerType.get_signless(32)
    tid = arith.index_cast(i32, gpu.thread_id(gpu.Dimension.x))
    lane = arith.andi(tid, _i32(31))
    warp = arith.andi(arith.shrui(tid, _i32(5)), _i32(WARPS - 1))
    return lane, warp


def _scalar(fa):
    """The one element a thread holds of a ``LANE_LAYOUT`` array."""
    [reg] = fa.registers.flat
    return vector.extract(reg, dynamic_position=[], static_position=[0])


def _lanes_of(value, is_signed):
    """A ``LANE_LAYOUT`` array whose element in this thread is the scalar ``value``."""
    reg = vector.broadcast(ir.VectorType.get((1,), value.type), value)
    return mgpu.FragmentedArray(
        _registers=np.array([reg]), _layout=LANE_LAYOUT.to_mgpu(), _is_signed=is_signed
    )


def gather(ref, index, dtype):
    """``ref[index]`` for a 1-D ``ref`` (GMEM or SMEM) and int32[128] ``index``: each thread
    loads its own element (Pallas' ``ref[index_vector]`` has no Mosaic GPU lowering)."""

    @plgpu.inline_mgpu(
        arg_types=(plgpu.RefType(), LANE_LAYOUT),
        return_type=plgpu.ShapeDtypeStruct((LANES,), dtype, layout=LANE_LAYOUT),
    )
    def load(ctx, ref, index):
        del ctx
        position = arith.index_cast(ir.IndexType.get(), _scalar(index))
        return _lanes_of(memref.load(ref, [position]), jnp.issubdtype(dtype, jnp.signedinteger))

    return load(ref, lax.convert_element_type(index, jnp.int32))


def exclusive_prefix(x, scratch):
    """Exclusive prefix sum of int32[128] across the warpgroup (``jnp.cumsum`` has no Mosaic
    GPU lowering): a ``shfl.sync.up`` scan in each warp, then the warp totals through the
    int32[4] shared-memory ``scratch`` (a barrier on each side of its reads)."""

    @plgpu.inline_mgpu(
        arg_types=(LANE_LAYOUT, plgpu.RefType()),
        return_type=plgpu.ShapeDtypeStruct((LANES,), jnp.int32, layout=LANE_LAYOUT),
    )
    def scan(ctx, x, scratch):
        del ctx
        lane, warp = _thread_lane()
        value = _scalar(x)
        inclusive = value
        for d in (1, 2, 4, 8, 16):
            up = nvvm.shfl_sync(_i32(-1), inclusive, _i32(d), _i32(0), nvvm.ShflKind.up)
            take = arith.cmpi(arith.CmpIPredicate.uge, lane, _i32(d))
            inclusive = arith.select(take, arith.addi(inclusive, up), inclusive)
        total = nvvm.shfl_sync(_i32(-1), inclusive, _i32(31), _i32(31), nvvm.ShflKind.idx)
        index = ir.IndexType.get()
        memref.store(total, scratch, [arith.index_cast(index, warp)])  # same value per warp
        mgpu.utils.warpgroup_barrier()
        before = _i32(0)
        for w in range(WARPS - 1):
            t = memref.load(scratch, [arith.constant(index, w)])
            mine = arith.cmpi(arith.CmpIPredicate.ugt, warp, _i32(w))
            before = arith.addi(before, arith.select(mine, t, _i32(0)))
        mgpu.utils.warpgroup_barrier()  # every read done before the next scan writes
        return _lanes_of(arith.subi(arith.addi(inclusive, before), value), True)

    return scan(x, scratch)


def _decode_kernel(
    offsets_ref, threshold_ref, stream_ref, raw_ref, lut_ref, out_ref, lut_smem, scan_smem,
    barrier, *, raw_rows, bits, interpret,
):  # fmt: skip
    c = lax.axis_index("chunk")
    plgpu.copy_gmem_to_smem(lut_ref.at[c], lut_smem, barrier)
    num_words = stream_ref.shape[0]
    if interpret:  # the GPU interpreter raises on inline_mgpu and on ref[index_vector]
        ops = GroupOps(
            exclusive_prefix=lambda x: jnp.cumsum(x) - x,
            fetch=lambda pos: jnp.take(stream_ref[...], pos),
            lookup=lambda peek: jnp.take(lut_smem[...], peek),
        )
    else:
        ops = GroupOps(
            exclusive_prefix=lambda x: exclusive_prefix(x, scan_smem),
            fetch=lambda pos: gather(stream_ref, pos, jnp.uint32),
            lookup=lambda peek: gather(lut_smem, peek, jnp.int32),
        )
    zeros = plgpu.layout_cast(jnp.zeros((LANES,), jnp.uint32), LANE_LAYOUT)
    nbits = plgpu.layout_cast(jnp.zeros((LANES,), jnp.int32), LANE_LAYOUT)
    base = jnp.full((1,), offsets_ref[c].astype(jnp.int32), jnp.int32)
    threshold = jnp.full((1,), threshold_ref[c], jnp.int32)
    per_raw, per_group = groups_per_raw_word(bits), words_per_group(bits)
    plgpu.barrier_wait(barrier)

    def body(h, carry):
        hi, lo, nbits, base = carry
        raw_word = raw_ref[c, h, :]
        for part in range(per_raw):
            g = per_raw * h + part
            hi, lo, nbits, base, out = decode_group(
                hi, lo, nbits, base, threshold, ops, raw_word, part, num_words, bits
            )
            for p in range(per_group):
                out_ref[c, per_group * g + p, :] = out[p]
        return hi, lo, nbits, base

    lax.fori_loop(0, raw_rows, body, (zeros, zeros, nbits, base))


def grouped_decode_mosaic_gpu(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    *,
    bits: int = 8,
    interpret: bool = False,
) -> jax.Array:
    """Mosaic GPU version-2 decode; same contract as ``reference.grouped_decode_reference``.

    Args:
      stream, chunk_offsets, raw, lut, threshold: the raw arrays.
      bits: value width, 8 (FP8) or 16 (BF16, FP16).
      interpret: run in Mosaic GPU's CPU interpreter with jnp stand-ins for the
        ``inline_mgpu`` helpers (see the module docstring).

    Returns:
      uint32[C, S * bits // 32, L] with ``L = 128``.

    Raises:
      ValueError: the raw plane does not have 128 lanes.
    """
    check_bits(bits)
    chunks, raw_rows, lanes = raw.shape
    if lanes != LANES:
        raise ValueError(f"the Mosaic GPU decode needs {LANES} lanes, got {lanes}")
    out_rows = raw_rows * groups_per_raw_word(bits) * words_per_group(bits)
    if chunks == 0:
        return jnp.zeros((0, out_rows, lanes), jnp.uint32)
    stream, chunk_offsets, raw, lut, threshold = kernel_arrays(
        stream, chunk_offsets, raw, lut, threshold
    )
    kernel = plgpu.kernel(
        functools.partial(_decode_kernel, raw_rows=raw_rows, bits=bits, interpret=interpret),
        out_type=jax.ShapeDtypeStruct((chunks, out_rows, lanes), jnp.uint32),
        scratch_types=(
            plgpu.SMEM((LUT_SIZE,), jnp.int32),
            plgpu.SMEM((WARPS,), jnp.int32),
            plgpu.Barrier(num_arrivals=1),
        ),
        grid=(chunks,),
        grid_names=("chunk",),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
        interpret=plgpu.InterpretGPUParams() if interpret else None,
    )
    return kernel(chunk_offsets, threshold, stream, raw, lut)
