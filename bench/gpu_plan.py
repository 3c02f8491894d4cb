"""What ``bench.gpu`` measures, and which ``bench.kernel_cost`` kernel estimates each row.

Shared by ``bench.gpu`` (the device run) and ``bench.kernel_cost --gpu-bench`` (the static
estimates costed ahead of it on a CPU host), so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from ecf8_jax.format import grouped
from ecf8_jax.format.encoder import choose_chunk_steps

DECODE_SIZES = (16 << 20, 64 << 20, 256 << 20, 1 << 30)
MATMUL_SIZES = (4096, 8192)
BATCHES = (1, 8, 64, 512)
GEMV_BATCHES = (1, 8)  # the fused version-2 GEMV takes m <= 8
SMOKE_DECODE_SIZES = (1 << 14,)
SMOKE_MATMUL_SIZES = (512,)
SMOKE_BATCHES = (1, 3)
MATMUL_TILE_ROWS = 256  # version-1 tiles of 256 x 128: k = 4096 gives 16 row blocks
DECODE_WARPS = 1  # version 2's default (pallas_kernels/grouped_decode/config.py)
SWEEP_SIZES = (16 << 20, 1 << 30)
# (num_warps, chunk_steps) per sweep size: the full grid at 16 MiB, fewer re-encodes at 1 GiB.
SWEEP = {
    16 << 20: [(w, s) for s in (512, 1024, 2048) for w in (1, 2, 4)],
    1 << 30: [(w, 2048) for w in (1, 2, 4)] + [(1, 1024)],
}
SMOKE_SWEEP = {1 << 14: [(1, 32), (2, 64)]}

ESTIMATE_KERNELS = {
    "decode": "ecf8_decode_v2",
    "matmul": "ecf8_matmul_v1",
    "twin": "fp8_tiled_matmul_v1",
    "gemv": "ecf8_gemv_v2",
    "gemv twin": "fp8_rows_gemv_v2",
}
"""The bench.kernel_cost kernel that estimates each measured op (update with the kernels)."""


def decode_steps(size: int, steps: int | None) -> int:
    """The chunk steps the version-2 encoder picks for ``size`` weights under ``steps``."""
    return choose_chunk_steps(size, steps, version=2)


def gemv_steps(k: int) -> int:
    """Chunk steps of the GEMV weights: whole rows of ``k`` (``grouped.row_chunk_steps``)."""
    return grouped.row_chunk_steps(k)


def estimate_key(kind, weights, *, warps=4, steps=1024, m=0, k=0) -> tuple:
    """How an estimate is looked up: (kernel name, weights, num_warps, chunk_steps, m)."""
    del k  # k * k == weights for the square matmuls measured here
    name = ESTIMATE_KERNELS.get(kind, kind)
    return (name, int(weights), int(warps), int(steps), int(m or 0))


def estimate_requests(smoke: bool = False) -> list[dict[str, Any]]:
    """Every estimate ``bench.gpu`` asks for, as keyword arguments of the estimator: what
    ``python -m bench.kernel_cost --gpu-bench`` costs ahead of a GPU run."""
    decode_sizes = SMOKE_DECODE_SIZES if smoke else DECODE_SIZES
    sweep = SMOKE_SWEEP if smoke else SWEEP
    matmul_sizes = SMOKE_MATMUL_SIZES if smoke else MATMUL_SIZES
    out = [
        dict(kind="decode", weights=s, warps=DECODE_WARPS, steps=decode_steps(s, None))
        for s in decode_sizes
    ]
    out += [
        dict(kind="decode", weights=s, warps=w, steps=decode_steps(s, st))
        for s, cfg in sweep.items()
        for w, st in cfg
    ]
    out += [
        dict(kind=kind, weights=k * k, steps=MATMUL_TILE_ROWS, m=m, k=k)
        for k in matmul_sizes
        for m in (SMOKE_BATCHES if smoke else BATCHES)
        for kind in ("matmul", "twin")
    ]
    out += [
        dict(kind=kind, weights=k * k, warps=1, steps=gemv_steps(k), m=m, k=k)
        for k in matmul_sizes
        for m in (SMOKE_BATCHES if smoke else GEMV_BATCHES)
        for kind in ("gemv", "gemv twin")
    ]
    return out
