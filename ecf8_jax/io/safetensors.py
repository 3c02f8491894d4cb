"""Reading safetensors files (a file, or a model folder: index, else every ``*.safetensors``).

Files go through :mod:`ecf8_jax.io.safetensors_raw`, the strict reader and writer (bfloat16 and
FP8 come back as ``ml_dtypes`` arrays, bit for bit); this module adds model folders and
sharded indexes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ecf8_jax.io import safetensors_raw
from ecf8_jax.io.safetensors_raw import SafetensorsError

INDEX_NAME = "model.safetensors.index.json"


def read_safetensors_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, by name (validated by the strict reader).

    Raises:
      SafetensorsError: a malformed header, an unknown dtype, or sizes and offsets that do not
        match the file.
    """
    return safetensors_raw.read(path)[1]


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file or of a model folder (single file or sharded).

    A folder is read through ``model.safetensors.index.json`` when present (every shard it
    names), else every ``*.safetensors`` file in it (:func:`model_files`, the resolver
    ``ecf8 compress`` uses too).

    Raises:
      SafetensorsError: a malformed index, or no safetensors file in the folder.
    """
    path = Path(path)
    if path.is_file():
        return read_safetensors_file(path)
    out = {}
    for shard in model_files(path)[0]:
        out.update(read_safetensors_file(shard))
    return out


def model_files(folder: str | os.PathLike) -> tuple[list[Path], str | None]:
    """The safetensors files of a model folder: the one resolver of the project.

    With ``model.safetensors.index.json`` the shards it names (each must be a plain file name
    and exist), else every ``*.safetensors`` file in the folder, sorted by name.

    Returns:
      ``(paths, index text or None)``.

    Raises:
      SafetensorsError: a malformed index, or no safetensors file.
    """
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        text = index.read_text(encoding="utf-8")
        try:
            weight_map = json.loads(text)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SafetensorsError(f"{index}: not a safetensors index (no weight_map)") from None
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise SafetensorsError(f"{index}: shard name {shard!r} is not a file name")
            if not (folder / shard).is_file():
                raise SafetensorsError(f"{index}: names {shard}, which is missing")
        return [folder / s for s in shards], text
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise SafetensorsError(f"{folder}: no *.safetensors files in this folder")
    return files, None


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes numpy / ml_dtypes arrays as one safetensors file, atomically."""
    safetensors_raw.write(path, tensors)
