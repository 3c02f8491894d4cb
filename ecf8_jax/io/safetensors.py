"""Reading safetensors files (a file, or a model folder: index, else every ``*.safetensors``).

Files go through :mod:`ecf8_jax.io.safetensors_raw`, the strict reader and writer (bfloat16 and
FP8 come back as ``ml_dtypes`` arrays, bit for bit); this module adds model folders and
sharded indexes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ecf8_jax.io import safetensors_raw
from ecf8_jax.io.container import model_files


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
    names), else every ``*.safetensors`` file in it: the same resolver as ``ecf8 compress``
    (:func:`ecf8_jax.io.container.model_files`).

    Raises:
      ContainerError: a malformed index, or no safetensors file in the folder.
    """
    path = Path(path)
    if path.is_file():
        return read_safetensors_file(path)
    out = {}
    for shard in model_files(path)[0]:
        out.update(read_safetensors_file(shard))
    return out


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes numpy / ml_dtypes arrays as one safetensors file, atomically."""
    safetensors_raw.write(path, tensors)
