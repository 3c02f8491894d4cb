"""What Pallas Mosaic GPU can express of the version-2 decode, and the prototype kernel.

There is no GPU here: kernels are lowered for CUDA from the CPU host (an abstract H200), and the
prototype's structure runs in Mosaic GPU's CPU interpreter (jax >= 0.12) with the two
``inline_mgpu`` helpers swapped for jnp (the interpreter raises on ``inline_mgpu``), so the
helpers themselves are only lowered. The strict ``xfail`` probes record what Mosaic GPU does not
lower (docs/kernels.md, "Pallas Mosaic GPU"): when a jax upgrade lowers one of them, the XPASS
fails the run and the table and the helpers want revisiting.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

import ecf8_jax
from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_decode import mosaic_gpu
from pallas_kernels.grouped_decode.reference import grouped_decode_reference

L = 128
U32 = jax.ShapeDtypeStruct((L,), jnp.uint32)
I32 = jax.ShapeDtypeStruct((L,), jnp.int32)
TABLE = jax.ShapeDtypeStruct((256,), jnp.int32)
SEMANTICS = {
    "warpgroup": plgpu.LoweringSemantics.Warpgroup,  # plgpu.kernel's default in jax 0.12
    "lane": plgpu.LoweringSemantics.Lane,  # what inline_mgpu needs
}
HAS_INTERPRETER = hasattr(plgpu, "InterpretGPUParams")  # not in jax 0.10.2


def _lower(body, *args, out=U32, semantics="lane"):
    f = plgpu.kernel(
        body,
        out_type=out,
        compiler_params=plgpu.CompilerParams(lowering_semantics=SEMANTICS[semantics]),
    )
    with compat.abstract_device("cuda"):
        return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


# --- the constructs the decode needs -------------------------------------------------------


def _shifts(x_ref, o_ref):
    v = x_ref[...]
    s = v & 31
    o_ref[...] = (v << s) | (v >> (31 - s))


def _fori(x_ref, o_ref):
    o_ref[...] = lax.fori_loop(0, 8, lambda i, c: (c << 1) | (c >> 31), x_ref[...])


def _lane_sum(x_ref, o_ref):
    o_ref[...] = jnp.broadcast_to(x_ref[...].sum(), (L,))


def _stage_to_smem(x_ref, o_ref):
    def scoped(smem, barrier):
        plgpu.copy_gmem_to_smem(x_ref, smem, barrier)
        plgpu.barrier_wait(barrier)
        o_ref[...] = smem[...] + 1

    pl.run_scoped(scoped, plgpu.SMEM((L,), jnp.uint32), plgpu.Barrier(num_arrivals=1))


def _inline_gather_smem(x_ref, t_ref, o_ref):
    def scoped(smem, barrier):
        plgpu.copy_gmem_to_smem(t_ref, smem, barrier)
        plgpu.barrier_wait(barrier)
        o_ref[...] = mosaic_gpu.gather(smem, x_ref[...] & 255, jnp.int32)

    pl.run_scoped(scoped, plgpu.SMEM((256,), jnp.int32), plgpu.Barrier(num_arrivals=1))


def _inline_gather_gmem(x_ref, t_ref, o_ref):
    o_ref[...] = mosaic_gpu.gather(t_ref, x_ref[...] & 255, jnp.int32)


def _inline_scan(x_ref, o_ref):
    pl.run_scoped(
        lambda s: o_ref.__setitem__(..., mosaic_gpu.exclusive_prefix(x_ref[...], s)),
        plgpu.SMEM((mosaic_gpu.WARPS,), jnp.int32),
    )


LOWERS = {
    "uint32_shifts_by_vector": (_shifts, (U32,), U32, ("warpgroup", "lane")),
    "fori_loop_carrying_lanes": (_fori, (U32,), U32, ("warpgroup", "lane")),
    "lane_sum": (_lane_sum, (I32,), I32, ("warpgroup", "lane")),
    "copy_gmem_to_smem_and_barrier": (_stage_to_smem, (U32,), U32, ("warpgroup", "lane")),
    "inline_mgpu_gather_smem": (_inline_gather_smem, (I32, TABLE), I32, ("lane",)),
    "inline_mgpu_gather_gmem": (_inline_gather_gmem, (I32, TABLE), I32, ("lane",)),
    "inline_mgpu_shfl_scan": (_inline_scan, (I32,), I32, ("lane",)),
}


@pytest.mark.parametrize(
    ("name", "semantics"), [(n, s) for n, (*_, sems) in LOWERS.items() for s in sems]
)
def test_construct_lowers_for_cuda(name, semantics):
    body, args, out, _ = LOWERS[name]
    assert "mosaic_gpu" in _lower(body, *args, out=out, semantics=semantics)


def _cumsum(x_ref, o_ref):
    o_ref[...] = jnp.cumsum(x_ref[...])


def _gather_gmem(x_ref, t_ref, o_ref):
    o_ref[...] = t_ref[x_ref[...] & 255]


def _gather_smem(x_ref, t_ref, o_ref):
    def scoped(smem):
        smem[...] = t_ref[...]
        o_ref[...] = smem[x_ref[...] & 255]

    pl.run_scoped(scoped, plgpu.SMEM((256,), jnp.int32))


def _take(x_ref, t_ref, o_ref):
    o_ref[...] = jnp.take(t_ref[...], x_ref[...] & 255)


def _shift_one_lane(x_ref, o_ref):
    v = x_ref[...]
    o_ref[...] = v + jnp.concatenate([jnp.zeros((1,), v.dtype), v[:-1]])


FAILS = {
    "jnp_cumsum": (_cumsum, (I32,)),
    "gmem_ref_at_index_vector": (_gather_gmem, (I32, TABLE)),
    "smem_ref_at_index_vector": (_gather_smem, (I32, TABLE)),
    "jnp_take": (_take, (I32, TABLE)),
    "shift_by_one_lane": (_shift_one_lane, (I32,)),
}


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("name", FAILS)
def test_construct_does_not_lower_yet(name, semantics):
    body, args = FAILS[name]
    try:
        _lower(body, *args, out=I32, semantics=semantics)
    except Exception as e:  # noqa: BLE001 - the message is the finding
        pytest.xfail(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    pytest.fail(
        f"{name} now lowers with {semantics} semantics (jax {jax.__version__}): update the "
        "table in docs/kernels.md; the inline_mgpu helpers may no longer be needed"
    )


# --- the prototype decode ------------------------------------------------------------------

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
STEPS = 32


def _raw(values, bits):
    """Kernel arguments of float32 ``values`` as FP8 (``ecf8_jax.encode``) or BF16."""
    if bits == 8:
        t = ecf8_jax.encode(values.astype(E4M3), chunk_steps=STEPS)
        return grouped.kernel_args(
            t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np
        )
    u = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    encoded = encode_grouped(u, STEPS, -(-u.size // (STEPS * L)), grouped.WIDE)
    return grouped.kernel_args(*encoded, np)


def _abstract(raw):
    return [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in raw]


def _kernel_ops(lowered) -> collections.Counter:
    """Op names of the Mosaic GPU kernel module inside the lowered program's custom call."""
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib import mosaic_gpu_dialect
    from jaxlib.mlir import ir

    def walk(op, visit):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    visit(inner.operation)
                    walk(inner.operation, visit)

    calls = []
    walk(lowered.compiler_ir("stablehlo").operation, lambda o: calls.append(o)
         if o.name == "stablehlo.custom_call" else None)  # fmt: skip
    [call] = calls
    module = ir.DictAttr(call.attributes["mhlo.backend_config"])["module"]
    ctx = jax_mlir.make_ir_context()
    mosaic_gpu_dialect.register_dialect(ctx)
    counts = collections.Counter()
    with ctx:
        ctx.allow_unregistered_dialects = True
        kernel = ir.Module.parse(ir.StringAttr(module).value_bytes)
        walk(kernel.operation, lambda o: counts.update([o.name.rsplit("mosaic_gpu.", 1)[-1]]))
    return counts


@pytest.fixture(scope="module")
def values():
    return (np.random.default_rng(5).standard_normal(4096 + 77) * 0.1).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 16])
def test_decode_lowers_for_cuda(values, bits):
    raw = _abstract(_raw(values, bits))
    f = jax.jit(lambda *a: mosaic_gpu.grouped_decode_mosaic_gpu(*a, bits=bits))
    with compat.abstract_device("cuda"):
        lowered = f.trace(*raw).lower(lowering_platforms=("cuda",))
    assert "mosaic_gpu" in lowered.as_text()
    ops = _kernel_ops(lowered)
    groups_per_loop = 2 if bits == 8 else 1
    # per group: the scan's five shfl.up and one shfl.idx, the lane sum's five butterflies
    assert ops["nvvm.shfl.sync"] >= 11 * groups_per_loop
    # per group: one stream word, four table entries, three warp totals (per-thread loads)
    assert ops["memref.load"] >= 8 * groups_per_loop
    assert "scf.for" in ops


@pytest.mark.skipif(
    not HAS_INTERPRETER,
    reason=f"jax {jax.__version__} has no Mosaic GPU interpret mode (plgpu.InterpretGPUParams)",
)
@pytest.mark.parametrize("bits", [8, 16])
def test_decode_structure_matches_reference_in_interpret_mode(values, bits):
    raw = _raw(values[: 4096 + 77 if bits == 8 else 2048], bits)
    want = np.asarray(grouped_decode_reference(*raw, bits=bits))
    got = np.asarray(mosaic_gpu.grouped_decode_mosaic_gpu(*raw, bits=bits, interpret=True))
    np.testing.assert_array_equal(got, want)


def test_decode_rejects_other_lane_counts():
    raw = [np.zeros(4, np.uint32), np.zeros(2, np.uint32), np.zeros((1, 4, 64), np.uint32),
           np.zeros((1, 256), np.int32), np.zeros(1, np.int32)]  # fmt: skip
    with pytest.raises(ValueError, match="128 lanes"):
        mosaic_gpu.grouped_decode_mosaic_gpu(*raw)
