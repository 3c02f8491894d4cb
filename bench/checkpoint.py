"""Checkpoint benchmark: on-disk size and save/restore time of Orbax checkpoints, raw FP8 vs ECF8.

Run as::

    python -m bench.checkpoint [--json FILE] [--repeats N] [--smoke]

Corpus: the 37 linear weights of all-MiniLM-L6-v2 (10.76 M weights), quantized to FP8 E4M3 with
one scale per row (:func:`ecf8_jax.quantize.quantize_fp8`); ``--smoke`` keeps the first 3.

Rows (one per stored form, each a dict ``{name: weight}`` saved with
:func:`ecf8_jax.checkpoint.save`, i.e. Orbax ``StandardSave`` + the JSON format metadata):

- ``raw FP8``: the FP8 arrays as ordinary arrays;
- ``ECF8``: their ``Ecf8Tensor`` encodings (default chunking).

Columns: ``in_memory_bytes`` (sum of the arrays' ``nbytes``), ``on_disk_bytes`` (every file of the
checkpoint folder), ``disk_vs_raw`` (on-disk bytes over the raw FP8 bytes), ``disk_bpw`` (8 *
on-disk bytes / weights), ``save_s`` and ``restore_s`` (median of ``--repeats`` runs; restore
is to the host with every checksum verified; a save writes a fresh folder each time). Every restore
is compared bit for bit with what was saved; a difference aborts the run.

Orbax zstd-compresses array chunks, so ``raw FP8`` is already about as small on disk as ECF8
(MiniLM: 6.66 vs 6.68 bits/weight on one run): ECF8's gain is the size in (device) memory, where
it stays compressed until a kernel decodes it, not the size of the file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import ecf8_jax
from bench.common import Column, add_json_arg, format_table, median_time, run_metadata, write_json
from ecf8_jax import checkpoint
from ecf8_jax.quantize import quantize_fp8

DEFAULT_REPEATS = 3
SMOKE_TENSORS = 3

COLUMNS = [
    Column("form", "stored as"),
    Column("n_tensors", "tensors"),
    Column("n_weights", "weights"),
    Column("in_memory_bytes", "in memory B"),
    Column("on_disk_bytes", "on disk B"),
    Column("disk_vs_raw", "disk/raw FP8", ".3f"),
    Column("disk_bpw", "disk bits/w", ".3f"),
    Column("save_s", "save s", ".3f"),
    Column("restore_s", "restore s", ".3f"),
]


class RoundTripError(AssertionError):
    """A restored checkpoint differs from what was saved."""


def corpus(limit: int | None) -> dict[str, np.ndarray]:
    """MiniLM's linear weights as per-row FP8 E4M3, by name (the first ``limit``)."""
    from ecf8_jax.models_data import minilm_linear_weights

    weights = minilm_linear_weights(limit).items()
    return {name: quantize_fp8(w, granularity="row")[0] for name, w in weights}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _leaf_bytes(tree: dict) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree))


def _check_equal(saved: dict, restored: dict, form: str) -> None:
    a, ta = jax.tree_util.tree_flatten(saved)
    b, tb = jax.tree_util.tree_flatten(restored)
    if ta != tb:
        raise RoundTripError(f"{form}: restored tree structure differs")
    for x, y in zip(a, b):
        if not np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8)):
            raise RoundTripError(f"{form}: restored bytes differ")


def bench_form(form: str, tree: dict, raw_bytes: int, n_weights: int, repeats: int, work: Path):
    count = iter(range(1 << 30))

    def save():
        path = work / f"{form.replace(' ', '_')}-{next(count)}"
        checkpoint.save(path, tree)
        return path

    save_s = median_time(save, repeats=repeats)
    path = save()
    restored = {}

    def restore():
        restored["tree"] = checkpoint.restore(path, to_host=True)

    restore_s = median_time(restore, repeats=repeats)
    _check_equal(tree, restored["tree"], form)
    on_disk = folder_bytes(path)
    for p in work.iterdir():
        shutil.rmtree(p)
    return {
        "form": form,
        "n_tensors": len(tree),
        "n_weights": n_weights,
        "in_memory_bytes": _leaf_bytes(tree),
        "on_disk_bytes": on_disk,
        "disk_vs_raw": on_disk / raw_bytes,
        "disk_bpw": 8 * on_disk / n_weights,
        "save_s": save_s,
        "restore_s": restore_s,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoint", description=__doc__)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_TENSORS} tensors, 1 repeat")
    add_json_arg(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its table and optionally writes ``--json``; returns the rows."""
    args = parse_args(argv)
    fp8 = corpus(SMOKE_TENSORS if args.smoke else None)
    n_weights = sum(q.size for q in fp8.values())
    raw_bytes = sum(q.nbytes for q in fp8.values())
    print(f"MiniLM linear, per-row FP8: {len(fp8)} tensors ...", file=sys.stderr, flush=True)
    encoded = {name: ecf8_jax.encode(q) for name, q in fp8.items()}
    with tempfile.TemporaryDirectory(prefix="ecf8-bench-") as tmp:
        work = Path(tmp)
        rows = [
            bench_form("raw FP8", fp8, raw_bytes, n_weights, args.repeats, work),
            bench_form("ECF8", encoded, raw_bytes, n_weights, args.repeats, work),
        ]
    print(f"Orbax checkpoints of MiniLM linear weights (median of {args.repeats}).")
    print(format_table(rows, COLUMNS))
    if args.json is not None:
        meta = run_metadata(
            benchmark="checkpoint",
            repeats=args.repeats,
            smoke=args.smoke,
            argv=list(sys.argv[1:] if argv is None else argv),
        )
        write_json(args.json, rows, meta=meta)
    return rows


if __name__ == "__main__":
    main()
