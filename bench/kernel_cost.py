"""Static cost of every Pallas kernel, from its compiled code, on a CPU host.

Run as::

    python -m bench.kernel_cost [--json FILE] [--quick] [--only NAME ...] [--targets h200 v5e v6e]
    python -m bench.kernel_cost --gpu-bench --json est.json   # then: bench.gpu --estimates est.json

Needs the ``kernelcost`` extra (pip ``triton`` for sm_90a SASS, pip ``libtpu`` for the real
TPU compiler); a target whose tool is missing is skipped with a note.

For each kernel and size it prints what the compiler produced and the speed that implies:

* H200 (sm_90a): the Triton IR Pallas emits is compiled with pip triton; SASS instructions per
  output weight in the steady-state loop nest (found by backward branches), by opcode family;
  registers, spills, shared memory. Estimates: issue-bound, pipe-bound (integer ALU at 64
  lanes/cycle/SM), latency/occupancy-bound (one warp's simulated cycles per serial step x
  steps per program x waves of resident programs) and the HBM roofline. See ``bench/sass.py``.
* TPU v5e / v6e: the real XLA:TPU + Mosaic compile for a ``get_topology_desc`` device:
  whether it compiles (a VMEM overflow is a row with the error), bundles per loop level
  (``LB:`` nesting of the final bundles), VMEM use. Estimate: bundles = cycles at the clock,
  one TensorCore running the grid sequentially, against the HBM roofline.
* ``gbps_estimate`` is the binding (lowest) bound in GB/s of FP8 weights (one byte each);
  ``ratio_vs_plain_estimate`` is the plain-FP8 op's roofline time over the kernel's estimated
  time (1.0 = as fast as plain FP8): for decode a copy of the FP8 bytes, for matmul XLA's dot
  on FP8 weights at max(HBM bytes, bf16 FLOPs).

Adding a kernel: write ``build(case) -> Built`` and append a ``Kernel`` to ``KERNELS``::

    def _my_decode(case):
        args = (...)  # jax.ShapeDtypeStruct per input, as the pallas wrapper takes them
        return Built(fn=lambda *a: my_decode(*a), args=args, weights=case.weights,
                     decoded=padded_weights, programs=grid_size,
                     loop_weights=(per_step, per_group, ...),  # innermost loop first
                     hbm_bytes=bytes_read_and_written)

    KERNELS.append(Kernel("my_decode", "decode", "tpu", _my_decode, pallas_name="my_decode"))

``loop_weights[i]`` is how many output weights one iteration of the i-th loop level (innermost
first) produces across the whole program (all lanes, sublanes, warps); levels the compiler
unrolled away are simply not matched. The ``Case`` gives the size, ``m`` and launch settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bench import sass, tpu_bundles
from bench.common import Column, add_json_arg, format_table, run_metadata, write_json
from pallas_kernels import compat
from pallas_kernels.ecf8_decode.config import BlockSizes
from pallas_kernels.ecf8_decode.pallas_gpu import ecf8_decode_gpu
from pallas_kernels.ecf8_decode.pallas_tpu import ROW_WORDS, SUBLANES, ecf8_decode_tpu
from pallas_kernels.ecf8_matmul.pallas_gpu import tiled_matmul_gpu
from pallas_kernels.ecf8_matmul.reference import fp8_tiled_matmul
from pallas_kernels.grouped_decode import config as grouped_config
from pallas_kernels.grouped_decode import pallas_tpu as grouped_tpu
from pallas_kernels.grouped_decode.pallas_gpu import grouped_decode_gpu
from pallas_kernels.grouped_decode.pallas_tpu import grouped_decode_tpu
from pallas_kernels.grouped_matmul.pallas_gpu import GROUP_WEIGHTS, fp8_rows_gemv, grouped_gemv_gpu
from pallas_kernels.grouped_matmul.pallas_tpu import group_unroll, grouped_gemv_tpu, rows_gemv_tpu

LANES = 128
SIGN_WORD_BITS = 32
MAX_CODE_LEN = 16
CODED_BITS_PER_WEIGHT = 6.63  # v1 on MiniLM per-row FP8 (BENCHMARKS.md), signs included

# Every number the estimates use; printed with the table and recorded in docs/kernels.md.
ASSUMPTIONS = {
    "h200": {
        "sms": 132,
        "clock_hz": 1.98e9,  # max boost; sustained clocks under load are lower
        # 4 schedulers x 1 warp instruction x 32 lanes
        "issue_lanes_per_cycle_per_sm": sass.ISSUE_LANES_PER_CYCLE,
        # cc 9.0 integer add/compare/logic/shift/IMAD (other pipes: bench/sass.py PIPES)
        "int_lanes_per_cycle_per_sm": sass.PIPES["int"][0],
        "hbm_bytes_per_s": 4.8e12,
        "bf16_flops": 989e12,  # dense tensor-core bf16
        "regs_per_sm": 65536,
        "max_warps_per_sm": 64,
        "max_programs_per_sm": 32,
        "shared_bytes_per_sm": 228 * 1024,
        "global_load_latency_cycles": sass.LDG_LATENCY,  # range: sass.LDG_LATENCY_RANGE
        "table_load_latency_cycles": sass.L1_HIT_LATENCY,  # arguments <= sass.TABLE_BYTES
    },
    "v5e": {"clock_hz": 1.5e9, "hbm_bytes_per_s": 819e9, "bf16_flops": 197e12, "cores": 1},
    "v6e": {"clock_hz": 1.75e9, "hbm_bytes_per_s": 1640e9, "bf16_flops": 918e12, "cores": 1},
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One size of one kernel.

    Attributes:
      label: printed size (``4096x4096``, ``256MiB``).
      weights: weights of the tensor (k * n for a matmul).
      k, n: matmul weight shape (0 for decode).
      m: matmul activation rows (0 for decode).
      num_warps: Triton warps per program (GPU).
      chunk_steps: symbols per lane per chunk (the tensor's ``chunk_steps``).
      dtype: weight dtype name (FP8, or ``bfloat16`` for the 16-bit kernels).
    """

    label: str
    weights: int
    k: int = 0
    n: int = 0
    m: int = 0
    num_warps: int = 4
    chunk_steps: int = 1024
    dtype: str = "float8_e4m3fn"

    @property
    def value_bytes(self) -> int:
        """Bytes of one decoded weight: GB/s and the plain op are in these bytes."""
        return 2 if self.dtype in ("bfloat16", "float16") else 1


@dataclasses.dataclass(frozen=True)
class Built:
    """What a kernel's ``build(case)`` returns.

    Attributes:
      fn: the program to lower (called with ``*args``).
      args: ``jax.ShapeDtypeStruct`` per argument (no sharding; TPU compiles add it).
      weights: output weights (the tensor's, unpadded).
      decoded: weights the kernel decodes in total (padding and re-decodes included).
      programs: grid size.
      loop_weights: output weights per iteration of each loop level, innermost first.
      hbm_bytes: minimum bytes read + written through HBM.
      flops: matmul FLOPs (0 for decode).
      num_warps, num_stages: Triton launch settings (GPU).
    """

    fn: Callable
    args: tuple
    weights: int
    decoded: int
    programs: int
    loop_weights: tuple[int, ...]
    hbm_bytes: float
    flops: float = 0.0
    num_warps: int = 4
    num_stages: int = 1


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A registered kernel: ``kind`` is "decode" or "matmul", ``target`` "gpu" or "tpu"."""

    name: str
    kind: str
    target: str
    build: Callable[[Case], Built]
    pallas_name: str


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype)


def _ecf8_arrays(chunks: int, steps: int, weights: int):
    """Abstract ECF8 arrays of ``chunks`` chunks coded at ``CODED_BITS_PER_WEIGHT``."""
    stream_words = max(1, math.ceil(weights * (CODED_BITS_PER_WEIGHT - 1) / 32))
    return (
        _sds((stream_words,), jnp.uint32),
        _sds((chunks + 1,), jnp.uint32),
        _sds((chunks, steps // SIGN_WORD_BITS, LANES), jnp.uint32),
        _sds((MAX_CODE_LEN + 1,), jnp.int32),
        _sds((MAX_CODE_LEN + 1,), jnp.int32),
        _sds((LANES,), jnp.int32),
    )


def _coded_bytes(weights: int) -> float:
    return weights * CODED_BITS_PER_WEIGHT / 8


def _decode_v1_gpu(case: Case) -> Built:
    steps = case.chunk_steps
    chunks = math.ceil(case.weights / (steps * LANES))
    stream, offsets, signs, limits, deltas, symbols = _ecf8_arrays(chunks, steps, case.weights)
    sizes = BlockSizes(num_warps=case.num_warps, num_stages=1)
    return Built(
        fn=lambda *a: ecf8_decode_gpu(*a, block_sizes=sizes),
        args=(stream, offsets, signs, limits, deltas, symbols),
        weights=case.weights,
        decoded=chunks * steps * LANES,
        programs=chunks,
        loop_weights=(LANES, SIGN_WORD_BITS * LANES),
        hbm_bytes=_coded_bytes(case.weights) + case.weights,
        num_warps=case.num_warps,
    )


def _decode_v1_tpu(case: Case) -> Built:
    steps = case.chunk_steps
    chunks = math.ceil(case.weights / (steps * LANES))
    args = _ecf8_arrays(chunks, steps, case.weights)
    programs = math.ceil(chunks / SUBLANES)
    return Built(
        fn=ecf8_decode_tpu,
        args=args,
        weights=case.weights,
        decoded=programs * SUBLANES * steps * LANES,
        programs=programs,
        loop_weights=(
            SUBLANES * LANES,
            SUBLANES * SIGN_WORD_BITS * LANES,
            SUBLANES * steps * LANES,
        ),
        # the wrapper pads the stream into rows (one extra read + write) before the kernel
        hbm_bytes=3 * _coded_bytes(case.weights) + case.weights + 2 * ROW_WORDS * 4,
    )


def _matmul_v1_gpu(case: Case) -> Built:
    k, n, m, steps = case.k, case.n, case.m, case.chunk_steps
    row_blocks = math.ceil(k / steps)
    col_blocks = n // LANES
    block_m = min(max(1 << max(m - 1, 0).bit_length(), 16), 64)
    split = row_blocks if m <= 64 else 1
    m_pad = math.ceil(m / block_m) * block_m
    m_blocks = m_pad // block_m
    chunks = row_blocks * col_blocks
    stream, offsets, signs, limits, deltas, symbols = _ecf8_arrays(chunks, steps, k * n)
    x = _sds((m, k), jnp.bfloat16)
    scale = _sds((n,), jnp.float32)

    def fn(x, scale, *w):
        return tiled_matmul_gpu(
            x, scale, w, tile_source="ecf8", k=k, n=n, steps=steps,
            fp8_dtype=jnp.float8_e4m3fn, num_warps=case.num_warps,
        )  # fmt: skip

    partials = 2 * split * m_pad * n * 4 if split > 1 else 0  # written, then read by XLA
    return Built(
        fn=fn,
        args=(x, scale, offsets, stream, signs, limits, deltas, symbols),
        weights=k * n,
        decoded=row_blocks * steps * n * m_blocks,
        programs=col_blocks * m_blocks * split,
        loop_weights=(LANES, SIGN_WORD_BITS * LANES, steps * LANES),
        hbm_bytes=_coded_bytes(k * n) * m_blocks + m * k * 2 + partials + m * n * 4,
        flops=2 * m_pad * row_blocks * steps * n,
        num_warps=case.num_warps,
    )


def _matmul_twin_v1_gpu(case: Case) -> Built:
    """The fused matmul's raw-FP8 twin: same tiling, tiles loaded instead of decoded."""
    k, n, steps = case.k, case.n, case.chunk_steps
    ecf8 = _matmul_v1_gpu(case)
    row_blocks = math.ceil(k / steps)
    m_blocks = ecf8.decoded // (row_blocks * steps * n)
    w_bytes = _sds((k, n), jnp.uint8)

    def fn(x, scale, w):
        return fp8_tiled_matmul(x, scale, w, steps=steps, fp8_dtype=jnp.float8_e4m3fn,
                                num_warps=case.num_warps)  # fmt: skip

    return dataclasses.replace(
        ecf8,
        fn=fn,
        args=(ecf8.args[0], ecf8.args[1], w_bytes),
        loop_weights=(SIGN_WORD_BITS * LANES, steps * LANES),
        hbm_bytes=ecf8.hbm_bytes - _coded_bytes(k * n) * m_blocks + k * n * m_blocks,
    )


V2_CODED_BITS_PER_WEIGHT = 6.71  # v2 on MiniLM per-row FP8 (BENCHMARKS.md), nibbles included
V2_NIBBLE_BITS = 4
V2_BF16_CODED_BITS_PER_WEIGHT = 10.74  # v2 on MiniLM linear BF16 (docs/FORMAT.md), raw bytes too
V2_LUT_BYTES = 256 * 4


def _v2_bits(case: Case) -> tuple[int, float, int]:
    """``(bits, coded bits per weight, raw bits per weight)`` of a version-2 case."""
    if case.value_bytes == 2:
        return 16, V2_BF16_CODED_BITS_PER_WEIGHT, 8
    return 8, V2_CODED_BITS_PER_WEIGHT, V2_NIBBLE_BITS


def _grouped_arrays(chunks: int, steps: int, weights: int, bits: int = 8):
    """Abstract version-2 arrays: stream, offsets, raw fields, tables, thresholds."""
    coded, raw_bits = (V2_BF16_CODED_BITS_PER_WEIGHT, 8) if bits == 16 else (
        V2_CODED_BITS_PER_WEIGHT, V2_NIBBLE_BITS)  # fmt: skip
    return (
        _sds((max(1, math.ceil(weights * (coded - raw_bits) / 32)),), jnp.uint32),
        _sds((chunks + 1,), jnp.uint32),
        _sds((chunks, steps * raw_bits // 32, LANES), jnp.uint32),
        _sds((chunks, 256), jnp.int32),
        _sds((chunks,), jnp.int32),
    )


def _decode_v2_gpu(case: Case) -> Built:
    steps = case.chunk_steps
    bits, coded_bits, _ = _v2_bits(case)
    chunks = math.ceil(case.weights / (steps * LANES))
    sizes = grouped_config.BlockSizes(num_warps=case.num_warps)
    coded = case.weights * coded_bits / 8 + chunks * V2_LUT_BYTES
    per_iteration = 4 * LANES * (2 if bits == 8 else 1)  # the groups sharing one raw word
    return Built(
        fn=lambda *a: grouped_decode_gpu(*a, bits=bits, block_sizes=sizes),
        args=_grouped_arrays(chunks, steps, case.weights, bits),
        weights=case.weights,
        decoded=chunks * steps * LANES,
        programs=chunks,
        loop_weights=(per_iteration,),
        hbm_bytes=coded + case.weights * case.value_bytes,
        num_warps=case.num_warps,
    )


def _decode_v2_tpu(case: Case) -> Built:
    steps = case.chunk_steps
    bits, coded_bits, raw_bits = _v2_bits(case)
    chunks = math.ceil(case.weights / (steps * LANES))
    block = grouped_config.BlockSizes().chunks_per_program
    programs = math.ceil(chunks / block)
    coded = case.weights * coded_bits / 8
    per_iteration = block * 4 * LANES * grouped_tpu.groups_per_iteration(bits)
    return Built(
        fn=lambda *a: grouped_decode_tpu(*a, bits=bits),
        args=_grouped_arrays(chunks, steps, case.weights, bits),
        weights=case.weights,
        decoded=programs * block * steps * LANES,
        programs=programs,
        loop_weights=(per_iteration, block * steps * LANES),
        # the wrapper pads the code stream into rows (one extra read + write) before the kernel
        hbm_bytes=coded
        + 2 * coded * (coded_bits - raw_bits) / coded_bits
        + chunks * V2_LUT_BYTES
        + case.weights * case.value_bytes,
    )


def _weight_dtype(case: Case):
    return jnp.bfloat16 if case.value_bytes == 2 else jnp.float8_e4m3fn


def _gemv_v2_gpu(case: Case) -> Built:
    """Fused version-2 decode + GEMV: one program per chunk of whole [n, k] rows."""
    k, n, m, steps = case.k, case.n, case.m, case.chunk_steps
    bits, coded_bits, _ = _v2_bits(case)
    chunks = math.ceil(n * k / (steps * LANES))
    x, scale = _sds((m, k), jnp.float32), _sds((n,), jnp.float32)
    dtype = _weight_dtype(case)

    def fn(x, *a):
        return grouped_gemv_gpu(x, *a[:-1], a[-1], n=n, fp8_dtype=dtype, num_warps=case.num_warps)

    coded = n * k * coded_bits / 8 + chunks * V2_LUT_BYTES
    return Built(
        fn=fn,
        args=(x, *_grouped_arrays(chunks, steps, n * k, bits), scale),
        weights=n * k,
        decoded=n * k,
        programs=chunks,
        loop_weights=(GROUP_WEIGHTS, k),
        hbm_bytes=coded + m * k * 4 + m * n * 4,
        flops=2 * m * n * k,
        num_warps=case.num_warps,
    )


def _gemv_twin_v2_gpu(case: Case) -> Built:
    """The fused GEMV's raw-FP8 twin: the same kernel loading the FP8 words."""
    k, n, m, steps = case.k, case.n, case.m, case.chunk_steps
    fused = _gemv_v2_gpu(case)

    def fn(x, w, scale):
        return fp8_rows_gemv(x, w, scale, chunk_steps=steps, num_warps=case.num_warps)

    return dataclasses.replace(
        fused,
        fn=fn,
        args=(fused.args[0], _sds((n, k), _weight_dtype(case)), fused.args[-1]),
        hbm_bytes=n * k * case.value_bytes + m * k * 4 + m * n * 4,
    )


def _gemv_v2_tpu(case: Case) -> Built:
    """Fused version-2 decode + GEMV on TPU: 8 chunks of whole rows per program."""
    k, n, m, steps = case.k, case.n, case.m, case.chunk_steps
    bits, coded_bits, raw_bits = _v2_bits(case)
    chunks = math.ceil(n * k / (steps * LANES))
    programs = math.ceil(chunks / 8)
    x, scale = _sds((m, k), jnp.float32), _sds((n,), jnp.float32)
    dtype = _weight_dtype(case)

    def fn(x, *a):
        return grouped_gemv_tpu(x, *a[:-1], a[-1], n=n, dtype=dtype)

    coded = n * k * coded_bits / 8
    # the group loop runs group_unroll groups an iteration; a whole row has no group loop
    unroll = group_unroll(k // GROUP_WEIGHTS)
    group_loop = (8 * GROUP_WEIGHTS * unroll,) if unroll < k // GROUP_WEIGHTS else ()
    return Built(
        fn=fn,
        args=(x, *_grouped_arrays(chunks, steps, n * k, bits), scale),
        weights=n * k,
        decoded=programs * 8 * steps * LANES,
        programs=programs,
        loop_weights=(*group_loop, 8 * k, 8 * steps * LANES),
        # the wrapper pads the code stream into rows (one extra read + write) before the kernel
        hbm_bytes=coded
        + 2 * coded * (coded_bits - raw_bits) / coded_bits
        + chunks * V2_LUT_BYTES
        + m * k * 4 * 2
        + m * n * 4,
        flops=2 * m * n * k,
    )


def _gemv_twin_v2_tpu(case: Case) -> Built:
    """The TPU GEMV's raw twin: the same kernel loading the uncompressed weight's words."""
    k, n, m, steps = case.k, case.n, case.m, case.chunk_steps
    fused = _gemv_v2_tpu(case)

    def fn(x, w, scale):
        return rows_gemv_tpu(x, w, scale, chunk_steps=steps)

    return dataclasses.replace(
        fused,
        fn=fn,
        args=(fused.args[0], _sds((n, k), _weight_dtype(case)), fused.args[-1]),
        loop_weights=fused.loop_weights,
        hbm_bytes=n * k * case.value_bytes + m * k * 4 * 2 + m * n * 4,
    )


V2_CHUNK_STEPS = 2048  # the version-2 encoder's default (ecf8_jax/format/grouped.py)

KERNELS: list[Kernel] = [
    Kernel("ecf8_decode_v2", "decode", "gpu", _decode_v2_gpu, "ecf8_grouped_decode"),
    Kernel("ecf8_decode_v2", "decode", "tpu", _decode_v2_tpu, "ecf8_grouped_decode"),
    Kernel("bf16_decode_v2", "decode", "gpu", _decode_v2_gpu, "ecf8_grouped_decode"),
    Kernel("bf16_decode_v2", "decode", "tpu", _decode_v2_tpu, "ecf8_grouped_decode"),
    Kernel("ecf8_gemv_v2", "matmul", "gpu", _gemv_v2_gpu, "ecf8_grouped_gemv"),
    Kernel("fp8_rows_gemv_v2", "matmul", "gpu", _gemv_twin_v2_gpu, "fp8_rows_gemv"),
    Kernel("bf16_gemv_v2", "matmul", "gpu", _gemv_v2_gpu, "ecf8_grouped_gemv"),
    Kernel("bf16_rows_gemv_v2", "matmul", "gpu", _gemv_twin_v2_gpu, "fp8_rows_gemv"),
    Kernel("ecf8_gemv_v2", "matmul", "tpu", _gemv_v2_tpu, "ecf8_grouped_gemv_tpu"),
    Kernel("fp8_rows_gemv_v2", "matmul", "tpu", _gemv_twin_v2_tpu, "rows_gemv_tpu"),
    Kernel("bf16_gemv_v2", "matmul", "tpu", _gemv_v2_tpu, "ecf8_grouped_gemv_tpu"),
    Kernel("bf16_rows_gemv_v2", "matmul", "tpu", _gemv_twin_v2_tpu, "rows_gemv_tpu"),
    Kernel("ecf8_decode_v1", "decode", "gpu", _decode_v1_gpu, "ecf8_decode"),
    Kernel("ecf8_matmul_v1", "matmul", "gpu", _matmul_v1_gpu, "ecf8_matmul"),
    Kernel("fp8_tiled_matmul_v1", "matmul", "gpu", _matmul_twin_v1_gpu, "fp8_tiled_matmul"),
    Kernel("ecf8_decode_v1", "decode", "tpu", _decode_v1_tpu, "ecf8_decode"),
]


def kernel_named(name: str, target: str) -> Kernel:
    """The registered kernel ``name`` for ``target`` ("gpu" or "tpu")."""
    for k in KERNELS:
        if k.name == name and k.target == target:
            return k
    raise KeyError(f"no {target} kernel named {name!r}; registered: {[k.name for k in KERNELS]}")


MiB = 1 << 20
DECODE_CASES = (
    Case("4096x4096", 4096 * 4096),
    Case("4096x14336", 4096 * 14336),
    Case("256MiB", 256 * MiB),
    Case("1GiB", 1024 * MiB),
)
GPU_WARP_SWEEP = tuple(Case("4096x4096", 4096 * 4096, num_warps=w) for w in (1, 2, 8))
MATMUL_TILE_ROWS = 256  # as bench/gpu.py encodes matmul weights
MATMUL_CASES = tuple(
    Case(f"k=n={kn}", kn * kn, k=kn, n=kn, m=m, chunk_steps=MATMUL_TILE_ROWS)
    for kn in (4096, 8192)
    for m in (1, 8, 64, 512)
)
QUICK_CASES = {  # the CI smoke: small, but the same code paths
    "decode": (Case("1024x1024", 1024 * 1024),),
    "matmul": (Case("k=n=1024", 1024 * 1024, k=1024, n=1024, m=1, chunk_steps=256),),
}


def cases_for(kernel: Kernel, quick: bool) -> Sequence[Case]:
    """The sizes a kernel is costed at (``quick``: one small size)."""
    if quick:
        cases = QUICK_CASES[kernel.kind]
    elif kernel.kind == "matmul":
        cases = MATMUL_CASES
    else:
        cases = DECODE_CASES + (GPU_WARP_SWEEP if kernel.target == "gpu" else ())
    if "gemv" in kernel.name:  # the GEMV takes m <= 8
        cases = tuple(c for c in cases if c.m <= 8)
    if kernel.name.startswith("bf16"):  # the same tensors in BF16 (MiB sizes: half the weights)
        cases = tuple(
            dataclasses.replace(
                c, dtype="bfloat16", weights=c.weights // 2 if "iB" in c.label else c.weights
            )
            for c in cases
        )
    if kernel.name.endswith("_v2"):  # version 2's defaults: 2048 steps, one warp (4 swept)
        swap = {1: 4, 4: 1}
        cases = tuple(
            dataclasses.replace(
                c, chunk_steps=V2_CHUNK_STEPS, num_warps=swap.get(c.num_warps, c.num_warps)
            )
            for c in cases
        )
    return cases


# --- GPU ------------------------------------------------------------------------------------


def _occupancy(facts, a) -> int:
    regs = math.ceil(max(facts.registers, 1) / 8) * 8
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = a["regs_per_sm"] // (per_warp * facts.num_warps)
    by_warps = a["max_warps_per_sm"] // facts.num_warps
    by_smem = a["shared_bytes_per_sm"] // max(facts.shared_bytes, 1)
    return max(0, min(by_regs, by_warps, by_smem, a["max_programs_per_sm"]))


def gpu_estimate(built: Built, facts) -> dict[str, Any]:
    """Bounds in GB/s of output weights for one compiled GPU kernel (see module docstring)."""
    a = ASSUMPTIONS["h200"]
    levels = list(zip(facts.levels, built.loop_weights))
    threads = facts.threads
    per_weight = sum(n * threads / w for (n, _, _), w in levels)
    pipe_lanes = {p: 0.0 for p in sass.PIPES}
    for (_, _, counter), w in levels:
        for fam, cnt in counter.items():
            for p, (_, fams) in sass.PIPES.items():
                if fam in fams:
                    pipe_lanes[p] += cnt * threads / w
    scale = built.decoded / built.weights  # decoded weights per output weight
    f = a["clock_hz"]
    issue = a["sms"] * a["issue_lanes_per_cycle_per_sm"] * f / (per_weight * scale)
    pipe = min(
        (a["sms"] * rate * f / (pipe_lanes[p] * scale) for p, (rate, _) in sass.PIPES.items()
         if pipe_lanes[p] > 0),
        default=math.inf,
    )  # fmt: skip
    resident = _occupancy(facts, a)
    per_program = built.decoded / built.programs

    def latency_bound(cycles_per_level):
        cycles = sum(per_program / w * c for c, w in zip(cycles_per_level, built.loop_weights))
        waves = math.ceil(built.programs / max(a["sms"] * resident, 1))
        return built.weights / (waves * cycles / f) if resident and cycles else 0.0

    latency = latency_bound([c for _, c, _ in facts.levels])
    lat_lo = latency_bound([r[1] for r in facts.level_cycles_range])
    lat_hi = latency_bound([r[0] for r in facts.level_cycles_range])
    hbm = built.weights * a["hbm_bytes_per_s"] / built.hbm_bytes
    t = built.weights / min(issue, pipe, latency, hbm) + built.flops / a["bf16_flops"]
    inner_n, inner_cycles, inner_classes = facts.levels[0] if facts.levels else (0, 0, {})
    top = sorted(inner_classes.items(), key=lambda kv: -kv[1])[:6]
    w0 = built.loop_weights[0]
    return {
        "sass_per_weight": inner_n * threads / w0 if facts.levels else None,
        "sass_per_weight_all_levels": per_weight,
        "sass_classes": " ".join(f"{k}:{v * threads / w0:.0f}" for k, v in top),
        "sass_per_weight_by_class": {
            k: v * threads / w0 for k, v in sorted(inner_classes.items(), key=lambda kv: -kv[1])
        },
        "step_cycles": inner_cycles,
        "registers": facts.registers,
        "spill_bytes": facts.spill_bytes,
        "shared_bytes": facts.shared_bytes,
        "programs": built.programs,
        "resident_per_sm": resident,
        "issue_gbps": issue / 1e9,
        "pipe_gbps": pipe / 1e9,
        "latency_gbps": latency / 1e9,
        "latency_gbps_range": [lat_lo / 1e9, lat_hi / 1e9],
        "hbm_gbps": hbm / 1e9,
        "seconds": t,
    }


def _lower_gpu(built: Built):
    f = jax.jit(built.fn)

    def lower():
        with compat.abstract_device("cuda"):
            return f.trace(*built.args).lower(lowering_platforms=("cuda",))

    return lower


# --- TPU ------------------------------------------------------------------------------------


def _compile_tpu(built: Built):
    def compile_fn(device):
        sharding = jax.sharding.SingleDeviceSharding(device)
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in built.args]
        mesh = jax.sharding.AbstractMesh(
            (1,),
            ("x",),
            abstract_device=jax.sharding.AbstractDevice(device.device_kind, None, "tpu"),
        )
        # A persistent-cache hit would skip the compiler, and with it the bundle dump.
        cache = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            with jax.sharding.use_abstract_mesh(mesh):
                return jax.jit(built.fn).trace(*args).lower().compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", cache)

    return compile_fn


def tpu_estimate(built: Built, facts, target: str) -> dict[str, Any]:
    """Cycles = bundles; one TensorCore runs the grid's programs one after another."""
    a = ASSUMPTIONS[target]
    per_program = built.decoded / built.programs
    cycles = built.programs * sum(
        per_program / w * b for b, w in zip(facts.levels, built.loop_weights)
    )
    compute = built.weights * a["clock_hz"] * a["cores"] / cycles if cycles else math.inf
    hbm = built.weights * a["hbm_bytes_per_s"] / built.hbm_bytes
    t = built.weights / min(compute, hbm) + built.flops / a["bf16_flops"]
    w0 = built.loop_weights[0]
    return {
        "bundles_per_1024": facts.levels[0] * 1024 / w0 if facts.levels else None,
        "bundle_levels": "/".join(str(b) for b in facts.levels),
        "vmem_mib": facts.vmem_bytes / MiB if facts.vmem_bytes is not None else None,
        "programs": built.programs,
        "cycles_gbps": compute / 1e9,
        "hbm_gbps": hbm / 1e9,
        "seconds": t,
    }


# --- rows -----------------------------------------------------------------------------------


def plain_seconds(kind: str, case: Case, target: str) -> float:
    """The plain-FP8 op at the roofline: copy (decode) or XLA's dot on FP8 weights (matmul)."""
    a = ASSUMPTIONS[target]
    if kind == "decode":
        return 2 * case.weights * case.value_bytes / a["hbm_bytes_per_s"]
    nbytes = case.k * case.n * case.value_bytes + case.m * case.k * 2 + case.m * case.n * 4
    return max(nbytes / a["hbm_bytes_per_s"], 2 * case.m * case.k * case.n / a["bf16_flops"])


def cost_row(kernel: Kernel, case: Case, target: str) -> dict[str, Any]:
    """One row of the table: compiled facts and estimates of ``kernel`` at ``case``."""
    built = kernel.build(case)
    row: dict[str, Any] = {
        "name": kernel.name,
        "kernel": kernel.kind,
        "target": target,
        "dtype": case.dtype,
        "size": case.label,
        "weights": case.weights,
        "m": case.m if kernel.kind == "matmul" else None,
        "num_warps": built.num_warps if target == "h200" else None,
        "chunk_steps": case.chunk_steps,
        "compiles": True,
        "error": None,
    }
    try:
        if target == "h200":
            facts = sass.gpu_facts(_lower_gpu(built), built.num_warps, built.num_stages)
            est = gpu_estimate(built, facts)
        else:
            facts = tpu_bundles.tpu_facts(target, _compile_tpu(built), kernel.pallas_name)
            if facts.error is not None:
                row.update(compiles=False, error=facts.error, gbps_estimate=0.0,
                           ratio_vs_plain_estimate=0.0)  # fmt: skip
                return row
            est = tpu_estimate(built, facts, target)
    except Exception as e:  # noqa: BLE001 - a failed lowering or compile is a reported fact
        row.update(compiles=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                   gbps_estimate=0.0, ratio_vs_plain_estimate=0.0)  # fmt: skip
        return row
    row.update({k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in est.items()})  # fmt: skip
    for key in ("issue_gbps", "pipe_gbps", "latency_gbps", "hbm_gbps", "cycles_gbps"):
        if row.get(key) is not None:  # weights/s -> bytes/s of decoded weights
            row[key] *= case.value_bytes
    if row.get("latency_gbps_range"):
        row["latency_gbps_range"] = [v * case.value_bytes for v in row["latency_gbps_range"]]
    row["gbps_estimate"] = case.weights * case.value_bytes / est["seconds"] / 1e9
    row["ratio_vs_plain_estimate"] = plain_seconds(kernel.kind, case, target) / est["seconds"]
    return row


def gpu_bench_rows() -> list[dict[str, Any]]:
    """Rows for every estimate ``bench.gpu`` prints (``gpu_plan.estimate_requests``)."""
    from bench import gpu_plan  # noqa: PLC0415

    rows = []
    for req in gpu_plan.estimate_requests():
        k = req.get("k", 0)
        case = Case(f"{req['weights'] >> 20}MiB" if not k else f"k=n={k}", req["weights"],
                    k=k, n=k, m=req.get("m", 0), num_warps=req.get("warps", 4),
                    chunk_steps=req["steps"])  # fmt: skip
        print(f"{req}", file=sys.stderr)
        rows.append(
            cost_row(kernel_named(gpu_plan.ESTIMATE_KERNELS[req["kind"]], "gpu"), case, "h200")
        )
    return rows


def tool_missing(target: str) -> str | None:
    """Why ``target`` cannot be costed here, or None."""
    if target == "h200":
        try:
            import triton  # noqa: F401, PLC0415
        except ImportError:
            return "pip triton is not installed (pip install -e .[kernelcost])"
        return None
    return tpu_bundles.available()


GPU_COLUMNS = [
    Column("name", "kernel"),
    Column("size", "size"),
    Column("m", "m"),
    Column("num_warps", "warps"),
    Column("chunk_steps", "steps"),
    Column("sass_per_weight", "SASS/w", ".1f"),
    Column("sass_per_weight_all_levels", "all/w", ".1f"),
    Column("registers", "regs"),
    Column("spill_bytes", "spill B"),
    Column("shared_bytes", "smem B"),
    Column("step_cycles", "step cyc", ".0f"),
    Column("programs", "progs"),
    Column("resident_per_sm", "res/SM"),
    Column("issue_gbps", "issue", ".1f"),
    Column("pipe_gbps", "pipe", ".1f"),
    Column("latency_gbps", "latency", ".1f"),
    Column("hbm_gbps", "HBM", ".0f"),
    Column("gbps_estimate", "GB/s", ".1f"),
    Column("ratio_vs_plain_estimate", "vs plain", ".3f"),
    Column("error", "error"),
]
TPU_COLUMNS = [
    Column("name", "kernel"),
    Column("target", "target"),
    Column("size", "size"),
    Column("m", "m"),
    Column("compiles", "compiles"),
    Column("bundles_per_1024", "bundles/1024w", ".1f"),
    Column("bundle_levels", "levels in->out"),
    Column("vmem_mib", "VMEM MiB", ".1f"),
    Column("programs", "progs"),
    Column("cycles_gbps", "cycles", ".1f"),
    Column("hbm_gbps", "HBM", ".0f"),
    Column("gbps_estimate", "GB/s", ".1f"),
    Column("ratio_vs_plain_estimate", "vs plain", ".3f"),
    Column("error", "error"),
]


def assumptions_text() -> str:
    lines = ["Assumptions:"]
    for target, values in ASSUMPTIONS.items():
        lines.append(f"  {target}: " + ", ".join(f"{k}={v:g}" for k, v in values.items()))
    lines.append(
        f"  coded size {CODED_BITS_PER_WEIGHT} (v1) / {V2_CODED_BITS_PER_WEIGHT} (v2) bits/weight (MiniLM FP8), "
        f"{V2_BF16_CODED_BITS_PER_WEIGHT} (v2 BF16); GB/s are bytes of decoded weights (FP8 or BF16); "
        "plain = a copy of the same dtype (decode) or XLA dot on FP8 weights (matmul) at the roofline"
    )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size per kernel (CI)")
    parser.add_argument("--only", nargs="*", default=None, help="kernel names to cost")
    parser.add_argument("--targets", nargs="*", default=["h200", "v5e", "v6e"])
    parser.add_argument(
        "--gpu-bench",
        action="store_true",
        help="cost exactly the H200 configurations bench.gpu measures (for bench.gpu --estimates)",
    )
    add_json_arg(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Costs every registered kernel, prints the tables and optionally writes ``--json``."""
    args = parse_args(argv)
    if any(t != "h200" for t in args.targets):
        tpu_bundles.prepare()  # before anything starts libtpu: the bundle dumps need the flag
    rows: list[dict[str, Any]] = []
    skipped = []
    if args.gpu_bench:
        args.targets = []
        if (why := tool_missing("h200")) is not None:
            skipped.append(f"h200: {why}")
        else:
            rows = gpu_bench_rows()
    for target in args.targets:
        if (why := tool_missing(target)) is not None:
            skipped.append(f"{target}: {why}")
            continue
        kind = "gpu" if target == "h200" else "tpu"
        for kernel in KERNELS:
            if kernel.target != kind or (args.only and kernel.name not in args.only):
                continue
            for case in cases_for(kernel, args.quick):
                print(f"{kernel.name} {target} {case.label} m={case.m} ...", file=sys.stderr)
                rows.append(cost_row(kernel, case, target))
    print(assumptions_text())
    gpu_rows = [r for r in rows if r["target"] == "h200"]
    tpu_rows = [r for r in rows if r["target"] != "h200"]
    if gpu_rows:
        print("\nH200 (sm_90a, pip triton 3.9.0 SASS):")
        print(format_table(gpu_rows, GPU_COLUMNS))
    if tpu_rows:
        print("\nTPU (pip libtpu, real Mosaic + XLA:TPU compile):")
        print(format_table(tpu_rows, TPU_COLUMNS))
    for line in skipped:
        print(f"skipped {line}")
    if args.json is not None:
        meta = run_metadata(assumptions=ASSUMPTIONS, skipped=skipped, quick=args.quick)
        write_json(args.json, rows, meta=meta)
    return rows


if __name__ == "__main__":
    main()
