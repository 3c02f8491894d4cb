"""Atomic writes: the one way this project writes a file or a folder.

A reader (or a later run) sees either the old file or the complete new one, never a part: the
content goes to a hidden temporary name in the same folder (same file system), is flushed and
``fsync``-ed, and then takes the target's name with one ``os.replace``. A write that fails, or a
process killed mid-write, leaves the target as it was; a killed process can leave its hidden
temporary behind (``.NAME.tmp-XXXXXXXX`` or ``.NAME.ecf8-new-XXXXXXXX``), never a partial
``NAME``.

* :func:`atomic_file`: a context manager yielding an open file; replaces ``path`` on success.
* :func:`write_bytes`, :func:`write_text`, :func:`write_json`: one call each.
* :func:`save_figure`: a matplotlib figure (the format follows ``path``'s suffix).
* :func:`atomic_folder`: a context manager yielding a staging folder path (not yet created);
  swaps it in for ``path`` on success. Checkpoints and model folders are written through it.

Used by :mod:`ecf8_jax.checkpoint`, :mod:`ecf8_jax.io.safetensors_raw`, the CLI and the benches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flushes a folder's entries (a rename into it) to disk, where the platform allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file next to ``path``; on a clean exit it replaces ``path``.

    Args:
      path: the target file; its folder must exist.
      mode: ``"wb"`` or ``"w"`` (text; pass ``encoding=`` in ``open_kwargs``).
      **open_kwargs: passed to ``open``.

    Yields:
      The open temporary file. On an exception it is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_tag()}")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)


def write_json(path: str | os.PathLike, doc: Any, *, indent: int | None = 2, **dumps_kwargs):
    """Writes ``json.dumps(doc)`` plus a newline to ``path`` atomically.

    The document is serialised before the file is opened, so a value JSON cannot hold raises
    without touching ``path``.
    """
    write_text(path, json.dumps(doc, indent=indent, **dumps_kwargs) + "\n")


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Saves a matplotlib figure to ``path`` atomically (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or (path.suffix.lstrip(".") or "png")
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format=fmt, **savefig_kwargs)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a staging folder path next to ``path``; on a clean exit it becomes ``path``.

    The staging folder is not created (Orbax, for one, wants to create it); the caller fills it.
    An existing ``path`` (with ``overwrite``) is moved aside, the staging folder renamed in, and
    the old one removed, so an interruption leaves the old folder or the new one in place. On an
    exception the staging folder, and any sibling that starts with its name (Orbax's own
    ``*.orbax-checkpoint-tmp*``), is removed.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    tag = _tag()
    staging = path.with_name(f".{path.name}.ecf8-new-{tag}")
    try:
        yield staging
    except BaseException:
        _remove(staging)
        for leftover in staging.parent.glob(f"{staging.name}*"):
            _remove(leftover)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.ecf8-old-{tag}")
        os.replace(path, old)
        os.replace(staging, path)
        _remove(old)
    else:
        os.replace(staging, path)
    fsync_dir(path.parent)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
