"""The ``ecf8`` command line.

``ecf8 demo`` runs the main job on the embedded default model; ``ecf8 stats FILE`` measures the
FP8 tensors of a safetensors file. Every failure prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _compress_and_check(named: dict[str, np.ndarray], quiet: bool) -> tuple[list, int, int]:
    import jax

    import ecf8_jax
    import ecf8_jax.codec

    decode = jax.jit(ecf8_jax.decode)
    rows, raw_total, ecf8_total = [], 0, 0
    for name, q in named.items():
        t = ecf8_jax.verify_checksums(ecf8_jax.encode(q))
        back = np.asarray(decode(ecf8_jax.codec.pad_stream(t)))
        if not np.array_equal(back.view(np.uint8), q.view(np.uint8)):
            raise RuntimeError(f"{name}: decoded bytes differ from the original")
        s = ecf8_jax.stats(q, encoded=t)
        raw_total += q.nbytes
        ecf8_total += t.nbytes
        rows.append(
            [
                name,
                "x".join(map(str, q.shape)),
                q.nbytes,
                t.nbytes,
                f"{t.bits_per_weight:.3f}",
                f"{s.exponent_entropy:.3f}",
            ]
        )
    return rows, raw_total, ecf8_total


def cmd_demo(args: argparse.Namespace) -> int:
    """Compresses all-MiniLM-L6-v2's linear weights (per-row FP8) and proves it lossless."""
    from ecf8_jax.models_data import minilm_linear_weights
    from ecf8_jax.quantize import quantize_fp8

    start = time.perf_counter()
    named = {k: quantize_fp8(w, granularity="row")[0] for k, w in minilm_linear_weights().items()}
    rows, raw, packed = _compress_and_check(named, args.quiet)
    if not args.quiet:
        header = ["tensor", "shape", "FP8 bytes", "ECF8 bytes", "bits/weight", "H(exp)"]
        print(_table(rows, header))
    n = sum(q.size for q in named.values())
    print(
        f"all-MiniLM-L6-v2, {len(named)} linear weights, {n} FP8 E4M3 weights (per-row scales): "
        f"{raw} -> {packed} bytes ({8 * packed / n:.3f} bits/weight, "
        f"{100 * (1 - packed / raw):.1f} % saved); every tensor decodes bit-identically "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Measures every FP8 tensor of a safetensors file."""
    from safetensors.numpy import load_file

    named = {k: v for k, v in load_file(args.file).items() if v.dtype.itemsize == 1}
    named = {k: v for k, v in named.items() if v.dtype.name.startswith("float8")}
    if not named:
        raise ValueError(f"{args.file}: no float8 tensors")
    rows, raw, packed = _compress_and_check(named, args.quiet)
    print(_table(rows, ["tensor", "shape", "FP8 bytes", "ECF8 bytes", "bits/weight", "H(exp)"]))
    print(f"total: {raw} -> {packed} bytes ({100 * (1 - packed / raw):.1f} % saved)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecf8", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compress the embedded default model and verify it")
    demo.add_argument("--quiet", action="store_true", help="print only the summary line")
    demo.set_defaults(func=cmd_demo)
    stats = sub.add_parser("stats", help="measure the FP8 tensors of a safetensors file")
    stats.add_argument("file")
    stats.add_argument("--quiet", action="store_true")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"ecf8: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
