"""GPU benchmark: ECF8 decode and the fused ECF8 matmul against plain FP8, one table.

Run as::

    python -m bench.gpu [--json FILE] [--repeats N] [--smoke]

One script, sized to finish in under 8 minutes on one H200. Rows:

- ``copy``: device-to-device copy of the same bytes (the bandwidth ceiling);
- ``fp8->bf16``: XLA's cast of raw FP8 weights to bf16 (what a plain FP8 model does per layer);
- ``decode``: ``ecf8_jax.decode`` with the platform's kernel, GB/s of decoded FP8 output, at
  16 MB - 1 GB; ``ratio`` is decode time / FP8->bf16 cast time;
- ``matmul``: ``ecf8_jax.matmul`` (fused decode + dot) against XLA's dot on raw FP8 weights cast
  to bf16 (the unfused plain-FP8 path), m = 1, 8, 64, 512, k = n = 4096 and 8192; ``ratio`` is
  plain-FP8 time / fused time (>= 1: the fused kernel is at least as fast).

Every kernel output is checked bit for bit on the device: decode against the encoded bytes,
the fused matmul against the same tiled kernel fed raw FP8 (``fp8_tiled_matmul``). Times are
medians of ``--repeats`` runs after a warm-up. ``--smoke`` runs tiny sizes in Pallas interpret
mode on any backend (CPU included), so the script stays tested without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import ecf8_jax
from bench.common import Column, add_json_arg, format_table, median_time, run_metadata, write_json
from pallas_kernels.ecf8_matmul.reference import fp8_tiled_matmul

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
DECODE_SIZES = (16 << 20, 64 << 20, 256 << 20, 1 << 30)
MATMUL_SIZES = (4096, 8192)
BATCHES = (1, 8, 64, 512)
SMOKE_DECODE_SIZES = (1 << 14,)
SMOKE_MATMUL_SIZES = (256,)
SMOKE_BATCHES = (1, 3)
MATMUL_TILE_ROWS = 256  # tiles of 256 x 128: k = 4096 gives 16 row blocks to split over

COLUMNS = [
    Column("op", "op"),
    Column("shape", "shape"),
    Column("ms", "ms", ".4f"),
    Column("gbps", "GB/s", ".1f"),
    Column("baseline", "vs"),
    Column("ratio", "ratio", ".3f"),
    Column("bpw", "bits/w", ".3f"),
    Column("exact", "bit-exact"),
]


def gaussian_fp8(n: int, seed: int = 0) -> np.ndarray:
    """``n`` FP8 E4M3 weights, Gaussian with one scale per 4096-wide row, tiled from 16 M."""
    base = min(n, 1 << 24)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(base).astype(np.float32).reshape(-1, min(base, 4096))
    q = (w / (np.abs(w).max(axis=1, keepdims=True) / 448.0)).astype(E4M3).reshape(-1)
    return np.resize(q.view(np.uint8), n).view(E4M3)


def _timed(fn, repeats):
    return median_time(lambda: jax.block_until_ready(fn()), repeats)


def bench_decode(size: int, repeats: int, interpret: bool) -> list[dict[str, Any]]:
    x = gaussian_fp8(size)
    t = ecf8_jax.encode(x)
    dev = jax.device_put(t)
    raw = jax.device_put(x)
    decode = jax.jit(lambda t: ecf8_jax.decode(t, implementation="pallas_gpu", interpret=interpret))
    cast = jax.jit(lambda r: r.astype(jnp.bfloat16))
    copy = jax.jit(jnp.copy)
    exact = bool(jnp.array_equal(decode(dev).view(jnp.uint8), raw.view(jnp.uint8)))
    gb = size / 1e9
    t_copy = _timed(lambda: copy(raw), repeats)
    t_cast = _timed(lambda: cast(raw), repeats)
    t_dec = _timed(lambda: decode(dev), repeats)
    label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size} B"
    return [
        {"op": "copy", "shape": label, "ms": t_copy * 1e3, "gbps": 2 * gb / t_copy},
        {"op": "fp8->bf16", "shape": label, "ms": t_cast * 1e3, "gbps": 3 * gb / t_cast},
        {
            "op": "decode",
            "shape": label,
            "ms": t_dec * 1e3,
            "gbps": gb / t_dec,
            "baseline": "fp8->bf16",
            "ratio": t_dec / t_cast,
            "bpw": t.bits_per_weight,
            "exact": str(exact),
        },
    ]


def bench_matmul(k: int, batches, repeats: int, interpret: bool) -> list[dict[str, Any]]:
    n = k
    w = gaussian_fp8(k * n, seed=1).reshape(k, n)
    t = jax.device_put(ecf8_jax.encode(w, layout="tiles", chunk_steps=MATMUL_TILE_ROWS))
    w_bytes = jax.device_put(w.view(np.uint8))
    scale = jnp.ones((n,), jnp.float32)
    fused = jax.jit(
        lambda x, t: ecf8_jax.matmul(x, t, scale, implementation="pallas_gpu", interpret=interpret)
    )
    steps = t.chunk_steps
    tiled = jax.jit(
        lambda x, w: fp8_tiled_matmul(
            x, scale, w, steps=steps, fp8_dtype=jnp.float8_e4m3fn, interpret=interpret
        )
    )
    plain = jax.jit(
        lambda x, w: (
            jnp.dot(
                x.astype(jnp.bfloat16),
                jax.lax.bitcast_convert_type(w, jnp.float8_e4m3fn).astype(jnp.bfloat16),
                preferred_element_type=jnp.float32,
            )
            * scale
        )
    )
    rows = []
    for m in batches:
        x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
        exact = bool(
            jnp.array_equal(fused(x, t).view(jnp.uint32), tiled(x, w_bytes).view(jnp.uint32))
        )
        t_plain = _timed(lambda x=x: plain(x, w_bytes), repeats)
        t_fused = _timed(lambda x=x: fused(x, t), repeats)
        rows.append(
            {
                "op": "matmul",
                "shape": f"m={m} k=n={k}",
                "ms": t_fused * 1e3,
                "gbps": k * n / 1e9 / t_fused,
                "baseline": f"xla fp8 {t_plain * 1e3:.4f} ms",
                "ratio": t_plain / t_fused,
                "bpw": t.bits_per_weight,
                "exact": str(exact),
            }
        )
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, Pallas interpret mode")
    add_json_arg(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its table and optionally writes ``--json``.

    Returns:
      The table's rows.

    Raises:
      SystemExit: a kernel's output was not bit-identical to its reference.
    """
    args = parse_args(argv)
    interpret = args.smoke or jax.default_backend() != "gpu"
    decode_sizes = SMOKE_DECODE_SIZES if args.smoke else DECODE_SIZES
    matmul_sizes = SMOKE_MATMUL_SIZES if args.smoke else MATMUL_SIZES
    batches = SMOKE_BATCHES if args.smoke else BATCHES
    repeats = 1 if args.smoke else args.repeats
    device = jax.devices()[0].device_kind
    print(f"device: {device}, jax {jax.__version__}, interpret={interpret}", file=sys.stderr)
    rows = []
    # One failing section (a kernel Triton rejects, an out-of-memory) must not cost the rest of
    # a scarce GPU run: it becomes a row naming the error, and the exit status says so.
    sections = [(f"decode {s}", bench_decode, (s, repeats, interpret)) for s in decode_sizes]
    sections += [
        (f"matmul k=n={k}", bench_matmul, (k, batches, repeats, interpret)) for k in matmul_sizes
    ]
    for label, fn, fn_args in sections:
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            rows += fn(*fn_args)
        except Exception as e:  # noqa: BLE001 - reported in the table, exit status 1
            rows.append(
                {"op": label.split()[0], "shape": label, "exact": f"ERROR {type(e).__name__}"}
            )
            print(f"{label}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"{device}: times are medians of {repeats}; GB/s of FP8 weights (copy: read+write).")
    print(format_table(rows, COLUMNS))
    if args.json is not None:
        write_json(args.json, rows, meta=run_metadata(device=device, smoke=args.smoke))
    if any(r.get("exact") == "False" for r in rows):
        raise SystemExit("a kernel's output differs from its reference (bit-exact column)")
    if any(str(r.get("exact", "")).startswith("ERROR") for r in rows):
        raise SystemExit("a benchmark section failed (see its row and stderr)")
    return rows


if __name__ == "__main__":
    main()
