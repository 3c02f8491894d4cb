"""The ``ecf8`` command line.

Commands::

    ecf8 demo                               SmolLM2-135M: compress, prove lossless, generate from both
    ecf8 generate [MODEL] --prompt TEXT     greedy generation from ECF8 weights (GGUF or HF folder)
    ecf8 finetune OUT [--model M]           MeZO on word polarity over a frozen ECF8 base
    ecf8 minilm                             compress all-MiniLM-L6-v2 (per-row FP8), prove it lossless
    ecf8 stats FILE                         measure the FP8 tensors of a safetensors file
    ecf8 compress SRC OUT [--cast fp8-row]  safetensors file, model folder or GGUF -> ECF8 checkpoint
    ecf8 decompress OUT DST                 ECF8 checkpoint -> the original safetensors, byte for byte
    ecf8 verify OUT --against SRC           exit 0 only if every tensor decodes bit-identically
    ecf8 inspect OUT [--json] [--plot PNG]  sizes and entropies of a checkpoint

``compress`` stores FP8 tensors (``F8_E4M3``, ``F8_E5M2``) as ECF8 (layout ``flat``) and every
other tensor as it is, in an Orbax checkpoint (:mod:`ecf8_jax.checkpoint`) whose metadata keeps
each source file's safetensors header verbatim, so ``decompress`` rebuilds the files byte for
byte. ``--cast fp8-row`` is lossy: every 2-D F32/F16/BF16 tensor whose name ends in ``weight``
and names no embedding or norm is quantized to FP8 E4M3 with one float32 scale per row
(:func:`ecf8_jax.quantize.quantize_fp8`), stored as ``NAME`` (FP8, ECF8-coded) plus
``NAME_scale`` (F32 ``[rows, 1]``, ``NAME ≈ NAME.astype(f32) * NAME_scale``); ``decompress``
then writes those two tensors instead of the original, and ``verify`` compares against the
same quantization of the source.

A GGUF ``SRC`` (llama.cpp) is read with the ``gguf`` package and dequantized to float32 under its
GGUF tensor names (its block formats such as Q4_1 are not FP8); ``decompress`` then writes
those float32 tensors as safetensors, and ``verify`` compares against the same dequantization.
With ``--cast fp8-row`` its weight matrices become FP8 + scale as above.

Every failure prints one line on stderr, exits non-zero and leaves no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from ecf8_jax.errors import one_line

TOOL = "ecf8 compress"
INDEX_NAME = "model.safetensors.index.json"
FP8_NAMES = ("F8_E4M3", "F8_E5M2")
CAST_MODES = ("fp8-row",)
CAST_SOURCE_DTYPES = ("F32", "F16", "BF16")
PROGRESS_MIN_BYTES = 64 << 20
"""Show a progress bar for work on at least this many bytes (about a second or more)."""


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- output helpers


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def _progress(description: str, total: int, quiet: bool, min_total: int = PROGRESS_MIN_BYTES):
    """Yields ``advance(n)``; draws a rich progress bar on a terminal for long jobs."""
    show = not quiet and total >= min_total and sys.stderr.isatty()
    if show and importlib.util.find_spec("rich") is not None:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
    else:
        yield lambda n: None


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


# ----------------------------------------------------------------------------- sources


def _sources(src: Path) -> tuple[str, list[tuple[str, Path]], str | None]:
    """(kind, [(file name, path)], index text) of a safetensors file, model folder or GGUF."""
    if not src.exists():
        raise CliError(f"{src}: no such file or folder")
    if src.is_file() and src.suffix == ".gguf":
        return "file", [(src.stem + ".safetensors", src)], None
    if src.is_file():
        return "file", [(src.name, src)], None
    index = src / INDEX_NAME
    if index.is_file():
        text = index.read_text(encoding="utf-8")
        try:
            weight_map = json.loads(text)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CliError(f"{index}: not a safetensors index (no weight_map)") from None
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise CliError(f"{index}: shard name {shard!r} is not a file name")
            if not (src / shard).is_file():
                raise CliError(f"{index}: names {shard}, which is missing")
        return "folder", [(s, src / s) for s in shards], text
    files = sorted(p for p in src.glob("*.safetensors") if p.is_file())
    if not files:
        raise CliError(f"{src}: no *.safetensors files in this folder")
    return "folder", [(p.name, p) for p in files], None


@functools.lru_cache(maxsize=2)
def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """A GGUF file's tensors, dequantized to float32 (GGUF's block formats are not FP8), under
    their GGUF names, in numpy (row-major) shape order."""
    try:
        import gguf

        from ecf8_jax.io.gguf import dequantized
    except ImportError:
        raise CliError("reading GGUF needs the gguf package (pip install gguf)") from None
    try:
        reader = gguf.GGUFReader(path)
        out = {}
        for t in reader.tensors:
            out[t.name] = dequantized(t)
    except (ValueError, KeyError, NotImplementedError, struct.error) as e:
        raise CliError(f"{path}: not a readable GGUF file ({one_line(e)})") from None
    return out


def _read_source(path: Path):
    """(header, tensors) of one source file: safetensors as stored, GGUF as float32."""
    from ecf8_jax.io import safetensors_raw as sr

    if path.suffix == ".gguf":
        tensors = _gguf_tensors(path)
        return sr.make_header(tensors), tensors
    return sr.read(path)


def _read_headers(files: list[tuple[str, Path]], index_text: str | None):
    from ecf8_jax.io import safetensors_raw as sr

    headers, owner = {}, {}
    for name, path in files:
        h = _read_source(path)[0] if path.suffix == ".gguf" else sr.read_header(path)
        for t in h.tensors:
            if t in owner:
                raise CliError(f"tensor {t!r} is in both {owner[t]} and {name}")
            owner[t] = name
        headers[name] = h
    if index_text is not None:
        weight_map = json.loads(index_text)["weight_map"]
        for t, shard in weight_map.items():
            if owner.get(t) != shard:
                raise CliError(f"{INDEX_NAME}: tensor {t!r} is not in {shard}")
        for t, shard in owner.items():
            if t not in weight_map:
                raise CliError(f"{shard}: tensor {t!r} is missing from {INDEX_NAME}")
    return headers


def _castable(name: str, dtype: str, shape) -> bool:
    lowered = name.lower()
    return (
        dtype in CAST_SOURCE_DTYPES
        and len(shape) == 2
        and lowered.endswith("weight")
        and "embed" not in lowered
        and "norm" not in lowered
    )


def _cast_fp8_row(name: str, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ecf8_jax.quantize import quantize_fp8

    try:
        return quantize_fp8(arr.astype(np.float32), granularity="row")
    except ValueError as e:
        raise CliError(f"tensor {name!r}: cannot cast to FP8: {e}") from None


# ----------------------------------------------------------------------------- compress


def _exponent_stats(q: np.ndarray) -> dict:
    from ecf8_jax.stats import entropy_bits, exponent_histogram

    hist = exponent_histogram(q)
    return {"exponent_histogram": hist.tolist(), "exponent_entropy": entropy_bits(hist)}


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CliError(f"{path} already exists (pass --overwrite to replace it)")
    if not path.parent.is_dir():
        raise CliError(f"{path.parent}: no such folder")


def cmd_compress(args: argparse.Namespace) -> int:
    """Compresses a safetensors file or model folder into an ECF8 checkpoint."""
    import ecf8_jax
    from ecf8_jax import checkpoint
    from ecf8_jax.io import safetensors_raw as sr

    src, out = Path(args.src), Path(args.out)
    _check_output(out, args.overwrite)
    if args.json is not None:
        _check_output(Path(args.json), True)
    kind, files, index_text = _sources(src)
    headers = _read_headers(files, index_text)
    total = sum(h.data_size for h in headers.values())
    if args.cast and not args.quiet:
        print(f"note: --cast {args.cast} is LOSSY: float weights are quantized to FP8 per row")

    tree, tensor_meta, rows = {}, {}, []
    with _progress("compressing", total, args.quiet) as advance:
        for file_name, path in files:
            _, tensors = _read_source(path)
            for name, arr in tensors.items():
                info = headers[file_name].tensors[name]
                meta = {"dtype": info.dtype, "shape": list(info.shape), "file": file_name}
                row = {"tensor": name, "dtype": info.dtype, "shape": list(info.shape)}
                row["original_bytes"] = info.nbytes
                if args.cast and _castable(name, info.dtype, info.shape):
                    q, scale = _cast_fp8_row(name, arr)
                    scale_name = f"{name}_scale"
                    if scale_name in tensors or scale_name in tree:
                        raise CliError(f"--cast: {scale_name!r} already exists in the source")
                    tree[scale_name] = scale
                    meta["cast"] = args.cast
                    arr = q
                    row["dtype"] = f"{info.dtype}->F8_E4M3 (lossy)"
                if arr.dtype in (sr.DTYPES[n] for n in FP8_NAMES):
                    t = ecf8_jax.encode(arr, chunk_steps=args.chunk_steps, layout="flat")
                    tree[name] = t
                    meta.update(_exponent_stats(arr))
                    stored = t.nbytes + (scale.nbytes if meta.get("cast") else 0)
                    row["bits_per_weight"] = t.bits_per_weight
                    row["exponent_entropy"] = meta["exponent_entropy"]
                else:
                    tree[name] = arr
                    stored = arr.nbytes
                row["ecf8_bytes"] = stored
                tensor_meta[name] = meta
                rows.append(row)
                advance(info.nbytes)

    user = {
        "tool": TOOL,
        "ecf8_jax_version": ecf8_jax.__version__,
        "cast": args.cast,
        "source": {
            "kind": kind,
            "index": index_text,
            "files": [
                {
                    "name": file_name,
                    "header": headers[file_name].raw.decode("utf-8"),
                    "tensors": list(headers[file_name].tensors),
                }
                for file_name, _ in files
            ],
        },
        "tensors": tensor_meta,
    }
    checkpoint.save(out, tree, metadata=user, overwrite=args.overwrite)

    orig = sum(r["original_bytes"] for r in rows)
    packed = sum(r["ecf8_bytes"] for r in rows)
    summary = {
        "tensors": len(rows),
        "original_bytes": orig,
        "ecf8_bytes": packed,
        "saved_percent": 100 * (1 - packed / orig) if orig else 0.0,
        "lossy": bool(args.cast),
    }
    if not args.quiet:
        print(_rows_table(rows))
    print(
        f"{src.name}: {len(rows)} tensors, {orig} -> {packed} bytes "
        f"({summary['saved_percent']:.1f} % saved{', LOSSY cast' if args.cast else ''}) -> {out}"
    )
    if args.json is not None:
        _write_json(Path(args.json), {"summary": summary, "rows": rows})
    return 0


def _rows_table(rows: list[dict]) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    body = [
        [
            r["tensor"],
            r["dtype"],
            _shape(r["shape"]),
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
    return _table(
        body, ["tensor", "dtype", "shape", "bytes", "ECF8 bytes", "bits/weight", "H(exp)"]
    )


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- decompress


class _Decoder:
    """``jax.jit(decode)`` with stream lengths bucketed by :func:`ecf8_jax.pad_stream`."""

    def __init__(self):
        import jax

        import ecf8_jax

        self._decode = jax.jit(ecf8_jax.decode)

    def __call__(self, t) -> np.ndarray:
        from ecf8_jax.codec import pad_stream
        from ecf8_jax.format.constants import DTYPES

        if t.size == 0:
            return np.zeros(t.shape, DTYPES[t.dtype])
        return np.asarray(self._decode(pad_stream(t)))


def _load(out: Path, quiet: bool) -> tuple[dict, dict]:
    """(tree on the host, the compress metadata) of a checkpoint, verified."""
    from ecf8_jax import checkpoint

    if not out.exists():
        raise CliError(f"{out}: no such checkpoint")
    meta = checkpoint.read_metadata(out)
    user = meta.get("user", {})
    if not isinstance(user, dict) or user.get("tool") != TOOL:
        raise CliError(f"{out}: an ECF8 checkpoint, but not one written by 'ecf8 compress'")
    return checkpoint.restore(out, to_host=True), user


def _decoded_files(tree: dict, user: dict, advance=lambda n: None):
    """Yields (file name, {name: array}, header or None) of the files the checkpoint holds."""
    from ecf8_jax.format.tensor import Ecf8Tensor
    from ecf8_jax.io import safetensors_raw as sr

    decode = _Decoder()
    tensors_meta = user["tensors"]
    for f in user["source"]["files"]:
        out = {}
        for name in f["tensors"]:
            if name not in tree:
                raise CliError(f"checkpoint: tensor {name!r} is missing")
            leaf = tree[name]
            arr = decode(leaf) if isinstance(leaf, Ecf8Tensor) else np.asarray(leaf)
            advance(arr.nbytes)
            meta = tensors_meta[name]
            if meta.get("cast"):
                out[name] = arr
                out[f"{name}_scale"] = np.asarray(tree[f"{name}_scale"])
                continue
            if arr.dtype != sr.DTYPES[meta["dtype"]] or list(arr.shape) != meta["shape"]:
                raise CliError(
                    f"checkpoint: tensor {name!r} is {arr.dtype}{list(arr.shape)}, "
                    f"expected {meta['dtype']}{meta['shape']}"
                )
            out[name] = arr
        raw = f["header"].encode("utf-8")
        if user.get("cast"):
            header = sr.parse_header(raw, _data_size(raw), source=f["name"])
            yield f["name"], out, None, header.metadata
        else:
            header = sr.parse_header(raw, sum(a.nbytes for a in out.values()), source=f["name"])
            yield f["name"], out, header, header.metadata


def _data_size(raw: bytes) -> int:
    doc = json.loads(raw)
    doc.pop("__metadata__", None)
    return max((v["data_offsets"][1] for v in doc.values()), default=0)


def cmd_decompress(args: argparse.Namespace) -> int:
    """Writes the safetensors file (or folder) a checkpoint was made from."""
    from ecf8_jax.io import safetensors_raw as sr

    out, dst = Path(args.out), Path(args.dst)
    _check_output(dst, args.overwrite)
    tree, user = _load(out, args.quiet)
    kind = user["source"]["kind"]
    start = time.perf_counter()
    total = sum(_itemsize(m["dtype"]) * int(np.prod(m["shape"])) for m in user["tensors"].values())
    with _progress("decoding", total, args.quiet) as advance:
        decoded = list(_decoded_files(tree, user, advance))
    if kind == "file":
        ((name, tensors, header, metadata),) = decoded
        sr.write(dst, tensors, header=header, metadata=metadata)
        written = [dst]
    else:
        staging = dst.with_name(f".{dst.name}.ecf8-new-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
        try:
            all_names = {}
            for name, tensors, header, metadata in decoded:
                sr.write(staging / name, tensors, header=header, metadata=metadata)
                all_names.update({t: (name, a.nbytes) for t, a in tensors.items()})
            index = user["source"]["index"]
            if index is not None:
                if user.get("cast"):
                    doc = json.loads(index)
                    doc["weight_map"] = {t: f for t, (f, _) in all_names.items()}
                    if isinstance(doc.get("metadata"), dict) and "total_size" in doc["metadata"]:
                        doc["metadata"]["total_size"] = sum(n for _, n in all_names.values())
                    index = json.dumps(doc, indent=2) + "\n"
                (staging / INDEX_NAME).write_text(index, encoding="utf-8")
            if dst.exists():
                old = dst.with_name(f".{dst.name}.ecf8-old-{uuid.uuid4().hex[:8]}")
                os.replace(dst, old)
                os.replace(staging, dst)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
            else:
                os.replace(staging, dst)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        written = sorted(dst.iterdir())
    size = sum(p.stat().st_size for p in written if p.is_file())
    print(
        f"{out.name} -> {dst}: {len(user['tensors'])} tensors, {size} bytes"
        f"{' (from a LOSSY cast)' if user.get('cast') else ''} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


# ----------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if every tensor of the checkpoint decodes bit-identically to SRC."""
    from ecf8_jax.format.tensor import Ecf8Tensor

    out, src = Path(args.out), Path(args.against)
    kind, files, index_text = _sources(src)
    headers = _read_headers(files, index_text)
    tree, user = _load(out, args.quiet)
    cast = user.get("cast")
    decode = _Decoder()
    source_names = [t for h in headers.values() for t in h.tensors]
    expected_names = set(source_names)
    for name, meta in user["tensors"].items():
        if meta.get("cast"):
            expected_names.add(f"{name}_scale")
    for name in source_names:
        if name not in tree:
            raise CliError(f"verify: tensor {name!r} of {src.name} is not in the checkpoint")
    for name in tree:
        if name not in expected_names:
            raise CliError(f"verify: tensor {name!r} of the checkpoint is not in {src.name}")
    count = 0
    total = sum(h.data_size for h in headers.values())
    with _progress("verifying", total, args.quiet) as advance:
        for file_name, path in files:
            _, tensors = _read_source(path)
            for name, want in tensors.items():
                leaf = tree[name]
                got = decode(leaf) if isinstance(leaf, Ecf8Tensor) else np.asarray(leaf)
                pairs = [(name, got, want)]
                if user["tensors"].get(name, {}).get("cast"):
                    q, scale = _cast_fp8_row(name, want)
                    pairs = [
                        (name, got, q),
                        (f"{name}_scale", np.asarray(tree[f"{name}_scale"]), scale),
                    ]
                for n, g, w in pairs:
                    if g.dtype != w.dtype or g.shape != w.shape:
                        raise CliError(
                            f"verify: tensor {n!r} differs: {g.dtype}{list(g.shape)} in the "
                            f"checkpoint, {w.dtype}{list(w.shape)} in {file_name}"
                        )
                    gb, wb = g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8)
                    if not np.array_equal(gb, wb):
                        diff = int(np.count_nonzero(gb != wb))
                        raise CliError(
                            f"verify: tensor {n!r} differs from {file_name} "
                            f"({diff} of {wb.size} bytes)"
                        )
                    count += 1
                advance(want.nbytes)
    lossy = f" (against its LOSSY --cast {cast})" if cast else ""
    print(f"OK: {count} tensors of {out.name} decode bit-identically to {src.name}{lossy}")
    return 0


# ----------------------------------------------------------------------------- inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    """Sizes and entropies of a checkpoint's tensors."""
    from ecf8_jax.format.tensor import Ecf8Tensor

    out = Path(args.out)
    if args.plot is not None:
        _pyplot()  # fail before any work when matplotlib is missing
        _check_output(Path(args.plot), True)
    tree, user = _load(out, args.quiet)
    rows = []
    for name, meta in user["tensors"].items():
        leaf = tree[name]
        info = meta.get("shape"), meta.get("dtype")
        row = {"tensor": name, "dtype": info[1], "shape": info[0]}
        row["original_bytes"] = int(np.prod(info[0])) * _itemsize(info[1])
        if isinstance(leaf, Ecf8Tensor):
            row["ecf8_bytes"] = leaf.nbytes
            row["bits_per_weight"] = leaf.bits_per_weight
            row["exponent_entropy"] = meta.get("exponent_entropy")
            row["exponent_histogram"] = meta.get("exponent_histogram")
            row["chunk_steps"] = leaf.chunk_steps
        else:
            row["ecf8_bytes"] = np.asarray(leaf).nbytes
        if meta.get("cast"):
            row["dtype"] = f"{info[1]}->F8_E4M3 (lossy)"
            row["ecf8_bytes"] += np.asarray(tree[f"{name}_scale"]).nbytes
        rows.append(row)
    orig = sum(r["original_bytes"] for r in rows)
    packed = sum(r["ecf8_bytes"] for r in rows)
    on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = {
        "tensors": len(rows),
        "original_bytes": orig,
        "ecf8_bytes": packed,
        "on_disk_bytes": on_disk,
        "cast": user.get("cast"),
        "checksums": "ok",
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2))
    else:
        print(_rows_table(rows))
        print(
            f"{out.name}: {len(rows)} tensors, {orig} -> {packed} bytes ({on_disk} on disk), "
            f"every checksum verified{', LOSSY cast' if user.get('cast') else ''}"
        )
    if args.plot is not None:
        _plot(rows, Path(args.plot))
    return 0


def _itemsize(dtype: str) -> int:
    from ecf8_jax.io import safetensors_raw as sr

    return sr.DTYPES[dtype].itemsize


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error when it is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    coded = [r for r in rows if r.get("exponent_histogram")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    if coded:
        hist = np.sum(
            [
                np.asarray(r["exponent_histogram"])
                for r in coded
                if len(r["exponent_histogram"]) == len(coded[0]["exponent_histogram"])
            ],
            axis=0,
        )
        left.bar(np.arange(hist.size), hist)
        right.barh([r["tensor"] for r in coded], [r["exponent_entropy"] for r in coded])
    left.set(title="exponent histogram (all FP8 tensors)", xlabel="exponent field", ylabel="count")
    right.set(title="exponent entropy per tensor", xlabel="bits")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- demo and stats


def _compress_and_check(named: dict[str, np.ndarray], quiet: bool) -> tuple[list, int, int]:
    import ecf8_jax

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
                "x".join(map(str, q.shape)),
                q.nbytes,
                t.nbytes,
                f"{t.bits_per_weight:.3f}",
                f"{s.exponent_entropy:.3f}",
            ]
        )
    return rows, raw_total, ecf8_total


def cmd_minilm(args: argparse.Namespace) -> int:
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
    from ecf8_jax.io import safetensors_raw as sr

    _, tensors = sr.read(args.file)
    named = {k: v for k, v in tensors.items() if v.dtype in (sr.DTYPES[n] for n in FP8_NAMES)}
    if not named:
        raise CliError(f"{args.file}: no float8 tensors")
    rows, raw, packed = _compress_and_check(named, args.quiet)
    print(_table(rows, ["tensor", "shape", "FP8 bytes", "ECF8 bytes", "bits/weight", "H(exp)"]))
    print(f"total: {raw} -> {packed} bytes ({100 * (1 - packed / raw):.1f} % saved)")
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecf8", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from ecf8_jax.cli_llm import add_commands

    add_commands(sub)
    demo = sub.add_parser("minilm", help="compress all-MiniLM-L6-v2 (per-row FP8), verify it")
    demo.add_argument("--quiet", action="store_true", help="print only the summary line")
    demo.set_defaults(func=cmd_minilm)
    stats = sub.add_parser("stats", help="measure the FP8 tensors of a safetensors file")
    stats.add_argument("file")
    stats.add_argument("--quiet", action="store_true")
    stats.set_defaults(func=cmd_stats)

    p = sub.add_parser("compress", help="safetensors file or model folder -> ECF8 checkpoint")
    p.add_argument("src", help="a .safetensors file, or a folder of them (with optional index)")
    p.add_argument("out", help="the checkpoint folder to create")
    p.add_argument(
        "--cast",
        choices=CAST_MODES,
        default=None,
        help="LOSSY: quantize 2-D float weights to FP8 E4M3 with per-row scales (NAME_scale)",
    )
    p.add_argument("--chunk-steps", type=int, default=None, help="ECF8 chunk size limit")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the table as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="ECF8 checkpoint -> the original safetensors")
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("dst", help="the .safetensors file (or, for a folder source, folder) to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("verify", help="check that a checkpoint decodes bit-identically to SRC")
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("--against", required=True, metavar="SRC", help="the source it came from")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="sizes and entropies of a checkpoint")
    p.add_argument("out", help="a checkpoint written by 'ecf8 compress'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="needs matplotlib")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_inspect)
    return parser


def _quiet_unraisable(hook):
    """Drops the ``RuntimeError: Event loop is closed`` that tensorstore callbacks raise after
    Orbax gave up on a damaged checkpoint (it would print a traceback after our one line)."""

    def quiet(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and "Event loop is closed" in str(e):
            return
        hook(unraisable)

    return quiet


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: this process is ours
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ecf8: interrupted", file=sys.stderr)
        return 130
    except (CliError, OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        print(f"ecf8: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback: one line, but say it is a bug
        print(f"ecf8: internal error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
