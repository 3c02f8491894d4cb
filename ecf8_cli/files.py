"""``ecf8 compress / decompress / verify / inspect / stats / minilm``: model files and ECF8.

Each command parses nothing itself and decides nothing about the format: it calls
:mod:`ecf8_jax.io.container` (the same functions a Python user calls) and prints the result.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from ecf8_cli.common import CliError, check_output, progress, pyplot, save_plot, shape_text, table

ROW_HEADER = ["tensor", "dtype", "shape", "bytes", "ECF8 bytes", "bits/weight", "H(exp)"]


def _progress(args):
    return functools.partial(progress, quiet=args.quiet)


def rows_table(rows: list[dict]) -> str:
    """The per-tensor table of ``compress`` and ``inspect``, with a total line."""

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    body = [
        [
            r["tensor"],
            r["dtype"],
            shape_text(r["shape"]),
            r["original_bytes"],
            r["ecf8_bytes"],
            fmt(r.get("bits_per_weight"), ".3f"),
            fmt(r.get("exponent_entropy"), ".3f"),
        ]
        for r in rows
    ]
    orig = sum(r["original_bytes"] for r in rows)
    packed = sum(r["ecf8_bytes"] for r in rows)
    body.append(["total", "", "", orig, packed, "", ""])
    return table(body, ROW_HEADER)


def cmd_compress(args: argparse.Namespace) -> int:
    """Compresses a safetensors file, model folder or GGUF file into an ECF8 checkpoint."""
    from ecf8_jax.atomic import write_json
    from ecf8_jax.io import container

    src, out = Path(args.src), Path(args.out)
    check_output(out, args.overwrite)
    if args.json is not None:
        check_output(Path(args.json), True)
    if args.cast and not args.quiet:
        print(f"note: --cast {args.cast} is LOSSY: float weights are quantized to FP8 per row")
    report = container.pack(
        src,
        out,
        cast=args.cast,
        chunk_steps=args.chunk_steps,
        overwrite=args.overwrite,
        progress=_progress(args),
    )
    summary = report.summary
    if not args.quiet:
        print(rows_table(report.rows))
    print(
        f"{src.name}: {summary['tensors']} tensors, {summary['original_bytes']} -> "
        f"{summary['ecf8_bytes']} bytes ({summary['saved_percent']:.1f} % saved"
        f"{', LOSSY cast' if args.cast else ''}) -> {out}"
    )
    if report.nothing_to_compress:
        print(f"note: nothing to compress: {container.nothing_to_compress_hint(summary)}")
    if args.json is not None:
        write_json(Path(args.json), {"summary": summary, "rows": report.rows})
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    """Writes the safetensors file (or folder) a checkpoint was made from."""
    from ecf8_jax.io import container

    out, dst = Path(args.out), Path(args.dst)
    check_output(dst, args.overwrite)
    start = time.perf_counter()
    user, written = container.unpack(out, dst, overwrite=args.overwrite, progress=_progress(args))
    size = sum(p.stat().st_size for p in written if p.is_file())
    print(
        f"{out.name} -> {dst}: {len(user['tensors'])} tensors, {size} bytes"
        f"{' (from a LOSSY cast)' if user.get('cast') else ''} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if every tensor of the checkpoint decodes bit-identically to SRC."""
    from ecf8_jax.io import container

    out, src = Path(args.out), Path(args.against)
    user, count = container.verify(out, src, progress=_progress(args))
    cast = user.get("cast")
    lossy = f" (against its LOSSY --cast {cast})" if cast else ""
    print(f"OK: {count} tensors of {out.name} decode bit-identically to {src.name}{lossy}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Sizes and entropies of a checkpoint's tensors."""
    from ecf8_jax.io import container

    out = Path(args.out)
    if args.plot is not None:
        pyplot()  # fail before any work when matplotlib is missing
        check_output(Path(args.plot), True)
    summary, rows = container.inspect(out)
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2))
    else:
        print(rows_table(rows))
        print(
            f"{out.name}: {len(rows)} tensors, {summary['original_bytes']} -> "
            f"{summary['ecf8_bytes']} bytes ({summary['on_disk_bytes']} on disk), "
            f"every checksum verified{', LOSSY cast' if summary['cast'] else ''}"
        )
    if args.plot is not None:
        plot_checkpoint(rows, Path(args.plot))
    return 0


def plot_checkpoint(rows: list[dict], path: Path) -> None:
    """Writes :func:`checkpoint_figure` to ``path`` (atomically)."""
    save_plot(checkpoint_figure(rows), path)


def checkpoint_figure(rows: list[dict]):
    """Three panels that stay readable for hundreds of tensors: the exponent histogram of all
    FP8 tensors, bits/weight and exponent entropy per layer (at most ~16 tick labels), and the
    same per tensor kind (one label per kind, e.g. ``self_attn.q_proj.weight``)."""
    from ecf8_jax.io.container import group_rows

    plt = pyplot()
    coded = [r for r in rows if r.get("exponent_histogram")]
    by_layer, by_kind = group_rows(rows, "layer"), group_rows(rows, "kind")
    fig, (hist_ax, layer_ax, kind_ax) = plt.subplots(
        1, 3, figsize=(16, max(4.0, 0.25 * len(by_kind) + 1.5))
    )
    if coded:
        size = len(coded[0]["exponent_histogram"])
        hist = np.sum(
            [r["exponent_histogram"] for r in coded if len(r["exponent_histogram"]) == size],
            axis=0,
        )
        hist_ax.bar(np.arange(hist.size), hist)
    hist_ax.set(title="exponent histogram (all FP8 tensors)", xlabel="exponent field")
    hist_ax.set(ylabel="count")
    if by_layer:
        x = np.arange(len(by_layer))
        layer_ax.plot(x, [g["bits_per_weight"] for g in by_layer], "o-", label="bits/weight")
        layer_ax.plot(x, [g["exponent_entropy"] for g in by_layer], "s--", label="H(exponent)")
        step = max(1, len(by_layer) // 16)  # at most ~16 tick labels
        layer_ax.set_xticks(x[::step], [str(g["group"]) for g in by_layer][::step])
        layer_ax.legend()
    layer_ax.set(title="per layer (all kinds)", xlabel="layer", ylabel="bits")
    if by_kind:
        y = np.arange(len(by_kind))
        kind_ax.barh(y - 0.2, [g["bits_per_weight"] for g in by_kind], 0.4, label="bits/weight")
        kind_ax.barh(y + 0.2, [g["exponent_entropy"] for g in by_kind], 0.4, label="H(exponent)")
        kind_ax.set_yticks(y, [str(g["group"]) for g in by_kind], fontsize=8)
        kind_ax.invert_yaxis()
        kind_ax.legend()
    kind_ax.set(title="per tensor kind (all layers)", xlabel="bits")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- minilm and stats


def _compress_and_check(named: dict[str, np.ndarray]) -> tuple[list, int, int]:
    import ecf8_jax
    from ecf8_jax.io.container import _Decoder

    decode = _Decoder()
    rows, raw_total, ecf8_total = [], 0, 0
    for name, q in named.items():
        t = ecf8_jax.verify_checksums(ecf8_jax.encode(q))
        back = decode(t)
        if not np.array_equal(back.view(np.uint8), q.view(np.uint8)):
            raise RuntimeError(f"{name}: decoded bytes differ from the original")
        s = ecf8_jax.stats(q, encoded=t)
        raw_total += q.nbytes
        ecf8_total += t.nbytes
        rows.append(
            [
                name,
                shape_text(q.shape),
                q.nbytes,
                t.nbytes,
                f"{t.bits_per_weight:.3f}",
                f"{s.exponent_entropy:.3f}",
            ]
        )
    return rows, raw_total, ecf8_total


def cmd_minilm(args: argparse.Namespace) -> int:
    """Compresses all-MiniLM-L6-v2's linear weights (per-row FP8, or BF16) and proves it
    lossless."""
    import ml_dtypes

    from ecf8_jax.models_data import minilm_linear_weights
    from ecf8_jax.quantize import quantize_fp8

    start = time.perf_counter()
    weights = minilm_linear_weights()
    if args.dtype == "bf16":
        named = {k: w.astype(ml_dtypes.bfloat16) for k, w in weights.items()}
        kind, what = "BF16", "BF16 weights (rounded from FP32)"
    else:
        named = {k: quantize_fp8(w, granularity="row")[0] for k, w in weights.items()}
        kind, what = "FP8", "FP8 E4M3 weights (per-row scales)"
    rows, raw, packed = _compress_and_check(named)
    if not args.quiet:
        header = ["tensor", "shape", f"{kind} bytes", "ECF8 bytes", "bits/weight", "H(exp)"]
        print(table(rows, header))
    n = sum(q.size for q in named.values())
    print(
        f"all-MiniLM-L6-v2, {len(named)} linear weights, {n} {what}: "
        f"{raw} -> {packed} bytes ({8 * packed / n:.3f} bits/weight, "
        f"{100 * (1 - packed / raw):.1f} % saved); every tensor decodes bit-identically "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Measures every FP8, BF16 and F16 tensor of a safetensors file."""
    from ecf8_jax.io import safetensors_raw as sr
    from ecf8_jax.io.container import CODED_NAMES

    _, tensors = sr.read(args.file)
    coded = [sr.DTYPES[n] for n in CODED_NAMES]
    named = {k: v for k, v in tensors.items() if v.dtype in coded}
    if not named:
        raise CliError(
            f"{args.file}: no FP8, BF16 or F16 tensors to measure (ECF8 codes those only; "
            "'ecf8 compress --cast fp8-row' quantizes float weights to FP8 first, lossy)"
        )
    rows, raw, packed = _compress_and_check(named)
    print(table(rows, ["tensor", "shape", "raw bytes", "ECF8 bytes", "bits/weight", "H(exp)"]))
    print(f"total: {raw} -> {packed} bytes ({100 * (1 - packed / raw):.1f} % saved)")
    return 0


def add_commands(sub) -> None:
    """Registers the file commands on the ``ecf8`` parser."""
    from ecf8_jax.io.container import CAST_MODES

    p = sub.add_parser(
        "compress",
        help="store a model's weights as ECF8 (safetensors file, model folder or GGUF)",
        description="Store a safetensors file, a model folder or a GGUF file as an ECF8 "
        "checkpoint folder. FP8, BF16 and F16 weights are entropy-coded without loss; "
        "everything else is kept as it is. Models without such weights (F32) save nothing "
        "unless --cast is given.",
    )
    p.add_argument("src", help="a .safetensors or .gguf file, or a model folder")
    p.add_argument("out", help="the checkpoint folder to create")
    p.add_argument(
        "--cast",
        choices=CAST_MODES,
        default=None,
        help="LOSSY: quantize 2-D float weights to FP8 E4M3 with one scale per row (NAME_scale)",
    )
    p.add_argument("--chunk-steps", type=int, default=None, help="ECF8 chunk size limit (advanced)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the table as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        "decompress",
        help="write the original safetensors back from a checkpoint, byte for byte",
    )
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("dst", help="the .safetensors file (or, for a folder source, folder) to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser(
        "verify", help="check that a checkpoint gives back exactly the weights of its source"
    )
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("--against", required=True, metavar="SRC", help="the source it came from")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="show how many bytes each tensor of a checkpoint takes")
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="also draw bits/weight and exponent entropy per layer and per tensor kind "
        "(needs matplotlib)",
    )
    p.add_argument("--quiet", action="store_true", help="accepted for scripts")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "stats", help="measure how well the FP8, BF16 and F16 tensors of a file compress"
    )
    p.add_argument("file", help="a .safetensors file")
    p.add_argument("--quiet", action="store_true", help="accepted for scripts")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "minilm",
        help="compress all-MiniLM-L6-v2 (cast to FP8 per row, or BF16) and prove it lossless",
    )
    p.add_argument(
        "--dtype", choices=("fp8", "bf16"), default="fp8", help="the weights to compress"
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=cmd_minilm)
