"""What every ``ecf8`` command shares: the user-error type, tables, progress bars, plots, and
the checks on output paths."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

PROGRESS_MIN_BYTES = 64 << 20
"""Show a progress bar for work on at least this many bytes (about a second or more)."""


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def table(rows: list[list], header: list[str]) -> str:
    """Right-aligned columns, one header line."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def shape_text(shape) -> str:
    """``[3, 4]`` -> ``"3x4"``; ``[]`` -> ``"scalar"``."""
    return "x".join(map(str, shape)) or "scalar"


@contextlib.contextmanager
def progress(description: str, total: int, quiet: bool, min_total: int = PROGRESS_MIN_BYTES):
    """Yields ``advance(n)``; draws a rich progress bar on a terminal for long jobs."""
    show = not quiet and total >= min_total and sys.stderr.isatty()
    if show and importlib.util.find_spec("rich") is not None:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
    else:
        yield lambda n: None


def check_output(path: Path, overwrite: bool) -> None:
    """Fails early when ``path`` exists (without ``overwrite``) or its folder does not."""
    if path.exists() and not overwrite:
        raise CliError(f"{path} already exists (pass --overwrite to replace it)")
    if not path.parent.is_dir():
        raise CliError(f"{path.parent}: no such folder")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error when it is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, path: Path, **savefig_kwargs) -> None:
    """Saves a figure atomically and closes it."""
    from ecf8_jax.atomic import save_figure

    try:
        save_figure(fig, path, **savefig_kwargs)
    finally:
        pyplot().close(fig)
