"""Helpers shared by the benchmarks: median timing, aligned text tables, ``--json`` output.

Every benchmark builds a list of rows (flat dicts of str / int / float / None), prints them with
:func:`format_table` and, when asked with ``--json FILE``, writes the very same rows with
:func:`write_json` next to a header that says where and how they were measured.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

MB = 1e6
"""Throughputs are in MB/s of 10**6 bytes (of raw, uncompressed data)."""


def median_time(fn: Callable[[], Any], repeats: int = 5, *, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls.

    ``fn`` must finish its work before returning: for jax results, call
    ``jax.block_until_ready`` inside it, or the time measures only the dispatch.

    Args:
      fn: the work to time; called ``warmup + repeats`` times, its result discarded.
      repeats: timed calls (>= 1; benchmarks default to 5).
      warmup: untimed calls first (compilation, caches, lazy imports).

    Returns:
      The median of the timed calls, in seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput_mbps(nbytes: int, seconds: float) -> float:
    """MB/s (10**6 bytes per second) for ``nbytes`` processed in ``seconds``."""
    return nbytes / MB / seconds if seconds > 0 else math.inf


class Column(NamedTuple):
    """One column of a printed table.

    Attributes:
      key: the row dict key.
      header: the column title.
      fmt: format spec for numbers (``".3f"``); ignored for strings. ``None`` prints as "n/a".
    """

    key: str
    header: str
    fmt: str = ""


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as an aligned plain-text table (strings left-aligned, numbers right-aligned).

    Args:
      rows: the rows; missing keys and ``None`` values print as "n/a".
      columns: which keys to show, in order, with their titles and number formats.

    Returns:
      The table, one line per row under a header and a rule, without a trailing newline.
    """
    cells = []
    for row in rows:
        line = []
        for col in columns:
            value = row.get(col.key)
            if value is None:
                line.append(("n/a", True))
            elif isinstance(value, str):
                line.append((value, False))
            else:
                line.append((format(value, col.fmt), True))
        cells.append(line)
    widths = [
        max([len(col.header)] + [len(line[i][0]) for line in cells])
        for i, col in enumerate(columns)
    ]
    left = [not any(line[i][1] for line in cells) and bool(cells) for i in range(len(columns))]
    header = "  ".join(
        c.header.ljust(w) if lft else c.header.rjust(w)
        for c, w, lft in zip(columns, widths, left, strict=True)
    )
    out = [header, "  ".join("-" * w for w in widths)]
    for line in cells:
        out.append(
            "  ".join(
                text.rjust(w) if is_num else text.ljust(w)
                for (text, is_num), w in zip(line, widths, strict=True)
            )
        )
    return "\n".join(s.rstrip() for s in out)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmarks' common ``--json FILE`` option (``args.json``: a Path or None)."""
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the table's rows, with a header describing the run, to FILE as JSON",
    )


def run_metadata(**extra: Any) -> dict[str, Any]:
    """Where and how a benchmark ran: versions, date, command line, machine.

    Args:
      **extra: more fields to record (e.g. the benchmark's own settings).

    Returns:
      A JSON-serialisable dict.
    """
    import jax
    import numpy as np

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "jax_backend": jax.default_backend(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    meta.update(extra)
    return meta


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar or 0-d array
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Writes ``{"meta": ..., "rows": [...]}`` to ``path``, atomically.

    Args:
      path: output file (its parent directories are created).
      rows: the same rows the benchmark printed, as flat dicts.
      meta: the header; :func:`run_metadata` when omitted.
    """
    doc = {"meta": dict(meta) if meta is not None else run_metadata(), "rows": list(rows)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ecf8_jax.atomic import write_json as write_json_atomically

    write_json_atomically(path, _jsonable(doc), allow_nan=False)
