"""Reading safetensors files (a file, or a folder with ``model.safetensors[.index.json]``).

A small reader of its own rather than ``safetensors.numpy``: numpy has no bfloat16 or FP8, so
tensors of those dtypes are returned as ``ml_dtypes`` arrays, memory-mapped, bit for bit.
File layout: 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the data.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, memory-mapped (read-only), by name.

    Raises:
      ValueError: an unknown dtype or a truncated file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path.name}: {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if end > data.shape[0]:
            raise ValueError(f"{path.name}: {name} ends at byte {end}, past the file's data")
        arr = data[begin:end].view(DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file or of a model folder (single file or sharded).

    A folder is read through ``model.safetensors.index.json`` when present (every shard it
    names), else ``model.safetensors``.

    Raises:
      FileNotFoundError: no safetensors file in the folder.
    """
    path = Path(path)
    if path.is_file():
        return read_safetensors_file(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(read_safetensors_file(path / shard))
        return out
    single = path / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    return read_safetensors_file(single)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes numpy / ml_dtypes arrays as one safetensors file (used by tests and examples)."""
    names = {np.dtype(v): k for k, v in DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        blob = arr.tobytes()
        header[name] = {
            "dtype": names[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)
