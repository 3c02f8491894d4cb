"""GPU benchmark: ECF8 decode and the fused ECF8 matmul against plain FP8, one table.

Run as::

    python -m bench.gpu [--json FILE] [--repeats N] [--calls N] [--smoke]
                        [--estimates FILE | --no-estimate]

One script, sized to finish in under 8 minutes on one H200 (budget: encoding the 1 GiB tensor
twice on the host ~2 x 40 s, device time ~1 min, static estimates ~2 s per configuration with
pip triton, ~1 min in all). Rows:

- ``copy``: device-to-device copy of the same bytes (the bandwidth ceiling);
- ``fp8->bf16``: XLA's cast of raw FP8 weights to bf16 (what a plain FP8 model does per layer);
- ``decode``: ``ecf8_jax.decode`` with the platform's kernel, GB/s of decoded FP8 output, at
  16 MB - 1 GB; ``ratio`` is decode time / FP8->bf16 cast time;
- ``matmul``: ``ecf8_jax.matmul`` (fused decode + dot) against XLA's dot on raw FP8 weights cast
  to bf16 (the unfused plain-FP8 path), m = 1, 8, 64, 512, k = n = 4096 and 8192; ``ratio`` is
  plain-FP8 time / fused time (>= 1: the fused kernel is at least as fast).

- ``sweep``: the Triton decode alone at ``num_warps`` x ``chunk_steps`` (``SWEEP``), at 16 MiB
  and 1 GiB;
- ``fp8 twin``: the fused matmul's raw-FP8 twin (same kernel, tiles loaded instead of decoded).

Each call is timed as the mean of ``--calls`` back-to-back calls between two synchronisations,
so dispatch overhead is excluded; the table reports the median over ``--repeats`` of those.
Beside every Pallas row, ``est`` is ``bench.kernel_cost``'s static GB/s for the same kernel,
size and launch settings, and ``meas/est`` calibrates it. The estimates are computed here when
pip triton is installed, or read from ``--estimates FILE`` written on any CPU host by
``python -m bench.kernel_cost --gpu-bench --json FILE`` (the GPU machine has no network).

Every kernel output is checked bit for bit on the device: decode against the encoded bytes,
the fused matmul against the same tiled kernel fed raw FP8 (``fp8_tiled_matmul``). Times are
medians of ``--repeats`` runs after a warm-up. ``--smoke`` runs tiny sizes in Pallas interpret
mode on any backend (CPU included), so the script stays tested without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import ecf8_jax
from bench.common import Column, add_json_arg, format_table, median_time, run_metadata, write_json
from bench.gpu_plan import (
    BATCHES,
    DECODE_SIZES,
    DECODE_WARPS,
    ESTIMATE_KERNELS,
    GEMV_BATCHES,
    MATMUL_SIZES,
    MATMUL_TILE_ROWS,
    SMOKE_BATCHES,
    SMOKE_DECODE_SIZES,
    SMOKE_MATMUL_SIZES,
    SMOKE_SWEEP,
    SWEEP,
    decode_steps,
    estimate_key,
    gemv_steps,
)
from ecf8_jax import codec
from ecf8_jax.format import grouped
from pallas_kernels.ecf8_matmul.reference import fp8_tiled_matmul
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.pallas_gpu import grouped_decode_gpu
from pallas_kernels.grouped_decode.reference import words_to_bytes

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
COLUMNS = [
    Column("op", "op"),
    Column("shape", "shape"),
    Column("ms", "ms", ".4f"),
    Column("gbps", "GB/s", ".1f"),
    Column("est", "est GB/s", ".1f"),
    Column("meas_over_est", "meas/est", ".2f"),
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


CALLS = 20  # back-to-back calls per synchronisation (set by --calls)


@functools.lru_cache(maxsize=2)
def _gaussian_cached(size):
    return gaussian_fp8(size)


@functools.lru_cache(maxsize=2)
def _encoded_steps(size, steps):
    return ecf8_jax.encode(_gaussian_cached(size), chunk_steps=steps)


def _encoded(size, steps):
    """Host encodes dominate the run time at 1 GiB: the decode row and the sweep share them."""
    return _encoded_steps(size, decode_steps(size, steps))


def _timed(fn, repeats):
    """Median over ``repeats`` of the mean time of ``CALLS`` calls issued without waiting."""
    calls = CALLS

    def burst():
        out = None
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)

    return median_time(burst, repeats) / calls


def _label(size):
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size} B"


def _raw_args(t):
    """The version-2 kernel's arrays of ``t``."""
    return grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np)


def bench_sweep(size, configs, repeats, interpret, estimate) -> list[dict[str, Any]]:
    """The version-2 Triton decode at each ``(num_warps, chunk_steps)``, bit-checked, with its
    estimate."""
    x = _gaussian_cached(size)
    want = jax.device_put(x.view(np.uint8))
    rows = []
    for steps in sorted({s for _, s in configs}):
        t = _encoded(size, steps)
        args = jax.device_put(_raw_args(t))
        for warps in sorted(w for w, s in configs if s == steps):
            sizes = BlockSizes(num_warps=warps)
            f = jax.jit(
                lambda *a, sizes=sizes: grouped_decode_gpu(
                    *a, block_sizes=sizes, interpret=interpret
                )
            )
            exact = bool(jnp.array_equal(words_to_bytes(f(*args))[: x.size], want))
            sec = _timed(lambda f=f, args=args: f(*args), repeats)
            est = estimate("decode", size, warps=warps, steps=t.chunk_steps)
            rows.append(measured_row("sweep", f"{_label(size)} w={warps} S={steps}", sec, size,
                                     est, bpw=t.bits_per_weight, exact=exact))  # fmt: skip
    return rows


def measured_row(op, shape, seconds, weights, est, **extra) -> dict[str, Any]:
    """A table row: time, GB/s of FP8 weights, the static estimate and measured / estimate."""
    gbps = weights / 1e9 / seconds
    row = {"op": op, "shape": shape, "ms": seconds * 1e3, "gbps": gbps, "est": est}
    row["meas_over_est"] = gbps / est if est else None
    if "exact" in extra:
        extra["exact"] = str(extra["exact"])
    row.update(extra)
    return row


def no_estimate(*args, **kwargs):
    return None


def estimates_from_json(path) -> Callable[..., float | None]:
    """An estimator reading ``bench.kernel_cost --json`` rows (target h200), for a GPU machine
    without pip triton: cost the configurations on a CPU host, carry the file over."""
    rows = json.loads(Path(path).read_text())["rows"]
    table = {
        estimate_key(r["name"], r["weights"], warps=r["num_warps"], steps=r["chunk_steps"],
                     m=r.get("m")): r.get("gbps_estimate") or None
        for r in rows
        if r.get("target") == "h200" and r.get("num_warps")
    }  # fmt: skip

    def estimate(kind, weights, **settings):
        return table.get(estimate_key(kind, weights, **settings))

    return estimate


def static_estimator():
    """``estimate(kind, weights, *, warps, steps, m=0)`` -> bench.kernel_cost's H200 GB/s, or
    a function returning None when pip triton is missing (printed once)."""
    try:
        from bench import kernel_cost  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        print(f"no static estimates: {e}", file=sys.stderr)
        return no_estimate
    if (why := kernel_cost.tool_missing("h200")) is not None:
        print(f"no static estimates: {why}", file=sys.stderr)
        return no_estimate
    cache = {}

    def estimate(kind, weights, *, warps=4, steps=1024, m=0, k=0):
        key = estimate_key(kind, weights, warps=warps, steps=steps, m=m)
        if key not in cache:
            case = kernel_cost.Case(str(weights), weights, k=k, n=k, m=m, num_warps=warps,
                                    chunk_steps=steps)  # fmt: skip
            kernel = kernel_cost.kernel_named(ESTIMATE_KERNELS[kind], "gpu")
            row = kernel_cost.cost_row(kernel, case, "h200")
            cache[key] = row.get("gbps_estimate") or None
        return cache[key]

    return estimate


def bench_decode(size: int, repeats: int, interpret: bool, estimate=no_estimate):
    x = _gaussian_cached(size)
    t = _encoded(size, None)
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
    label = _label(size)
    est = estimate("decode", size, warps=DECODE_WARPS, steps=t.chunk_steps)
    return [
        {"op": "copy", "shape": label, "ms": t_copy * 1e3, "gbps": 2 * gb / t_copy},
        {"op": "fp8->bf16", "shape": label, "ms": t_cast * 1e3, "gbps": 3 * gb / t_cast},
        measured_row(
            "decode",
            label,
            t_dec,
            size,
            est,
            baseline="fp8->bf16",
            ratio=t_dec / t_cast,
            bpw=t.bits_per_weight,
            exact=exact,
        ),  # fmt: skip
    ]


def bench_matmul(k: int, batches, repeats: int, interpret: bool, estimate=no_estimate):
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
        t_twin = _timed(lambda x=x: tiled(x, w_bytes), repeats)
        shape = f"m={m} k=n={k}"
        est = estimate("matmul", k * n, steps=steps, m=m, k=k)
        rows.append(measured_row("matmul", shape, t_fused, k * n, est,
                                 baseline=f"xla fp8 {t_plain * 1e3:.4f} ms",
                                 ratio=t_plain / t_fused, bpw=t.bits_per_weight, exact=exact))  # fmt: skip
        est_twin = estimate("twin", k * n, steps=steps, m=m, k=k)
        rows.append(measured_row("fp8 twin", shape, t_twin, k * n, est_twin,
                                 baseline="matmul", ratio=t_twin / t_fused))  # fmt: skip
    return rows


def bench_gemv(k: int, batches, repeats: int, interpret: bool, estimate=no_estimate):
    """The fused version-2 decode + GEMV against its raw-FP8 twin and XLA's FP8 dot, m <= 8."""
    n = k
    w = gaussian_fp8(k * n, seed=2).reshape(n, k)  # [out, in], one scale per row
    steps = gemv_steps(k)
    t = jax.device_put(ecf8_jax.encode(w, chunk_steps=steps, balance=False))
    w_dev = jax.device_put(w)
    scale = jnp.ones((n,), jnp.float32)
    fused = jax.jit(lambda x, t: codec.gemv(x, t, scale, interpret=interpret))
    twin = jax.jit(lambda x, w: codec.fp8_gemv(x, w, scale, interpret=interpret))
    plain = jax.jit(
        lambda x, w: jnp.dot(x, w.astype(jnp.bfloat16).T, preferred_element_type=jnp.float32)
    )
    rows = []
    for m in batches:
        x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
        exact = bool(jnp.array_equal(fused(x, t).view(jnp.uint32), twin(x, w_dev).view(jnp.uint32)))
        t_plain = _timed(lambda x=x: plain(x, w_dev), repeats)
        t_fused = _timed(lambda x=x: fused(x, t), repeats)
        t_twin = _timed(lambda x=x: twin(x, w_dev), repeats)
        shape = f"m={m} k=n={k}"
        est = estimate("gemv", k * n, warps=1, steps=steps, m=m, k=k)
        rows.append(measured_row("gemv v2", shape, t_fused, k * n, est,
                                 baseline=f"xla fp8 {t_plain * 1e3:.4f} ms",
                                 ratio=t_plain / t_fused, bpw=t.bits_per_weight, exact=exact))  # fmt: skip
        est_twin = estimate("gemv twin", k * n, warps=1, steps=steps, m=m, k=k)
        rows.append(measured_row("gemv twin", shape, t_twin, k * n, est_twin,
                                 baseline="gemv v2", ratio=t_twin / t_fused))  # fmt: skip
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per synchronisation")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, Pallas interpret mode")
    parser.add_argument("--no-estimate", action="store_true", help="skip bench.kernel_cost")
    parser.add_argument(
        "--estimates",
        type=Path,
        default=None,
        metavar="FILE",
        help="static estimates from `python -m bench.kernel_cost --gpu-bench --json FILE` "
        "(default: compute them here, which needs pip triton)",
    )
    add_json_arg(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, estimate=None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its table and optionally writes ``--json``.

    Returns:
      The table's rows.

    Raises:
      SystemExit: a kernel's output was not bit-identical to its reference.
    """
    global CALLS
    args = parse_args(argv)
    if args.calls < 1:
        raise SystemExit(f"--calls must be >= 1, got {args.calls}")
    CALLS = 1 if args.smoke else args.calls
    if estimate is None:
        if args.estimates is not None:
            estimate = estimates_from_json(args.estimates)
        elif args.no_estimate or args.smoke:
            estimate = no_estimate
        else:
            estimate = static_estimator()
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
    sweep = SMOKE_SWEEP if args.smoke else SWEEP
    sections = [
        (f"decode {s}", bench_decode, (s, repeats, interpret, estimate)) for s in decode_sizes
    ]
    sections += [
        (f"matmul k=n={k}", bench_matmul, (k, batches, repeats, interpret, estimate))
        for k in matmul_sizes
    ]
    sections += [
        (f"gemv k=n={k}", bench_gemv,
         (k, SMOKE_BATCHES if args.smoke else GEMV_BATCHES, repeats, interpret, estimate))
        for k in matmul_sizes
    ]  # fmt: skip
    sections += [
        (f"sweep {s}", bench_sweep, (s, cfg, repeats, interpret, estimate))
        for s, cfg in sorted(sweep.items(), reverse=True)  # 1 GiB first: its encode is cached
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
    print(
        f"{device}: times are medians of {repeats} bursts of {CALLS} calls; GB/s of FP8 "
        "weights (copy: read+write); est = bench.kernel_cost's static H200 estimate"
    )
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
