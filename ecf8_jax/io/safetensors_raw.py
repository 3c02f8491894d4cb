"""A strict safetensors reader and a byte-exact, atomic writer (numpy + ml_dtypes).

File layout (https://github.com/huggingface/safetensors, "Format")::

    [8 bytes: N, little-endian u64][N bytes: JSON header, UTF-8, may end in spaces][data]
    header = {"__metadata__": {str: str}?,
              name: {"dtype": "F8_E4M3", "shape": [d0, ...], "data_offsets": [begin, end]}, ...}

Offsets are relative to the start of the data. The reader refuses anything the reference
implementation refuses, and says which tensor is at fault: a header that is not a JSON object,
an unknown dtype, a size that differs from ``prod(shape) * itemsize``, offsets out of range,
overlapping or leaving gaps (the tensors must tile the data exactly), trailing bytes.

Dtypes come back as numpy arrays of the matching numpy or ``ml_dtypes`` type (BF16 as
``ml_dtypes.bfloat16``, F8_E4M3 as ``ml_dtypes.float8_e4m3fn``, ...), bit for bit; ``.view``
them as unsigned integers of the same width for raw bits.

The writer reproduces a file byte for byte when given the :class:`Header` read from it (the
header bytes, padding included, are written verbatim and each tensor at its recorded offset);
without one it writes a canonical file (``__metadata__`` first, tensors by decreasing dtype
width then name, so every tensor is aligned). It writes a temporary file next to the target,
fsyncs it and renames it over the target, so readers never see a partial file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from ecf8_jax.atomic import atomic_file

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
"""safetensors dtype name -> numpy dtype (all little-endian)."""

MAX_HEADER_BYTES = 100 * 1000 * 1000
"""The reference implementation's limit on the header length (``N_LEN_MAX``)."""

METADATA_KEY = "__metadata__"
TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class SafetensorsError(ValueError):
    """A safetensors file is malformed, truncated, or holds something this reader refuses."""


def dtype_name(dtype) -> str:
    """The safetensors name of a numpy / ml_dtypes dtype (``"BF16"``, ``"F8_E4M3"``)."""
    dt = np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if dt == candidate:
            return name
    raise SafetensorsError(f"dtype {dt} has no safetensors name")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape and ``[begin, end)`` byte range in the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclasses.dataclass(frozen=True)
class Header:
    """A parsed, validated header.

    Attributes:
      raw: the header bytes exactly as in the file (padding included).
      metadata: the ``__metadata__`` dict, or ``None`` when absent.
      tensors: the entries, in header order.
      data_size: bytes of data after the header (the sum of the tensors' sizes).
    """

    raw: bytes
    metadata: dict[str, str] | None
    tensors: dict[str, TensorInfo]
    data_size: int

    @property
    def data_start(self) -> int:
        return 8 + len(self.raw)

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_size


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"header: key {k!r} appears twice")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw: bytes, data_size: int, *, source: str = "safetensors") -> Header:
    """Validates header bytes against the size of the data that follows them.

    Args:
      raw: the ``N`` header bytes.
      data_size: bytes in the file after the header.
      source: a name for messages (usually the file name).

    Raises:
      SafetensorsError: naming the offending tensor.
    """
    if not raw.startswith(b"{"):
        raise SafetensorsError(f"{source}: header does not start with '{{'")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        raise SafetensorsError(f"{source}: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"{source}: header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise SafetensorsError(f"{source}: header is not a JSON object")
    metadata = doc.pop(METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise SafetensorsError(f"{source}: __metadata__ must map strings to strings")
    tensors = {}
    for name, info in doc.items():
        where = f"{source}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != TENSOR_KEYS:
            keys = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise SafetensorsError(f"{where}: entry has {keys}, expected {sorted(TENSOR_KEYS)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(
                f"{where}: unknown dtype {dtype!r} (this reader knows {', '.join(DTYPES)})"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsError(f"{where}: shape {shape!r} is not a list of sizes")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise SafetensorsError(f"{where}: data_offsets {offsets!r} are not [begin, end]")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != expected:
            raise SafetensorsError(
                f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but "
                f"{dtype}{shape} needs {expected}"
            )
        if offsets[1] > data_size:
            raise SafetensorsError(
                f"{where}: data_offsets {offsets} end past the data ({data_size} bytes; "
                "truncated file?)"
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    position, previous = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin < position:
            raise SafetensorsError(
                f"{source}: tensor {t.name!r} at [{t.begin}, {t.end}] overlaps "
                f"{previous.name!r} at [{previous.begin}, {previous.end}]"
            )
        if t.begin > position:
            raise SafetensorsError(
                f"{source}: tensor {t.name!r} starts at {t.begin}, leaving a gap of "
                f"{t.begin - position} bytes after {position}"
            )
        position, previous = t.end, t
    if position != data_size:
        raise SafetensorsError(
            f"{source}: {data_size - position} bytes after the last tensor (ends at {position})"
        )
    return Header(raw=bytes(raw), metadata=metadata, tensors=tensors, data_size=data_size)


def read_header(path: str | os.PathLike) -> Header:
    """Reads and validates the header of the safetensors file at ``path``.

    Raises:
      OSError: the file cannot be read.
      SafetensorsError: the header is malformed or does not match the file's size.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path.name}: {size} bytes, too short for a header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path.name}: header length {n} exceeds {MAX_HEADER_BYTES}")
        if n > size - 8:
            raise SafetensorsError(
                f"{path.name}: header length {n} exceeds the file ({size} bytes; truncated?)"
            )
        raw = f.read(n)
    return parse_header(raw, size - 8 - n, source=path.name)


def read(
    path: str | os.PathLike, names: list[str] | None = None
) -> tuple[Header, dict[str, np.ndarray]]:
    """The validated header and the tensors (all, or ``names``) of a safetensors file.

    Returns:
      ``(header, {name: array})`` in header order; arrays own their memory.

    Raises:
      OSError, SafetensorsError: as :func:`read_header`; ``KeyError`` for an unknown name.
    """
    path = Path(path)
    header = read_header(path)
    wanted = list(header.tensors) if names is None else names
    out = {}
    with open(path, "rb") as f:
        for name in wanted:
            info = header.tensors[name]
            arr = np.empty(info.shape, info.np_dtype)
            f.seek(header.data_start + info.begin)
            if info.nbytes and f.readinto(arr.reshape(-1).view(np.uint8)) != info.nbytes:
                raise SafetensorsError(f"{path.name}: tensor {name!r}: file ended while reading")
            out[name] = arr
    return header, out


def make_header(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Header:
    """The canonical header for ``tensors``: ``__metadata__`` first, then the tensors by
    decreasing dtype width and name (each aligned to its width), padded with spaces to 8."""
    doc: dict = {}
    if metadata is not None:
        doc[METADATA_KEY] = dict(metadata)
    order = sorted(tensors, key=lambda k: (-np.dtype(tensors[k].dtype).itemsize, k))
    offset, infos = 0, {}
    for name in order:
        arr = tensors[name]
        nbytes = arr.size * arr.dtype.itemsize
        doc[name] = {
            "dtype": dtype_name(arr.dtype),
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        infos[name] = TensorInfo(name, doc[name]["dtype"], arr.shape, offset, offset + nbytes)
        offset += nbytes
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    return Header(raw=raw, metadata=doc.get(METADATA_KEY), tensors=infos, data_size=offset)


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
    header: Header | None = None,
) -> None:
    """Writes ``tensors`` as a safetensors file at ``path``, atomically.

    Args:
      path: the target file (replaced if it exists, only once the new one is complete).
      tensors: numpy / ml_dtypes arrays by name.
      metadata: the ``__metadata__`` dict (ignored with ``header``, which carries its own).
      header: a header read from a file; the output is then that file, byte for byte, and
        ``tensors`` must match it exactly (names, dtypes, shapes).

    Raises:
      SafetensorsError: ``tensors`` does not match ``header`` or has an unsupported dtype.
    """
    path = Path(path)
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    if header is None:
        header = make_header(tensors, metadata)
    if set(tensors) != set(header.tensors):
        extra = sorted(set(tensors) ^ set(header.tensors))
        raise SafetensorsError(f"{path.name}: tensors and header differ in {extra[:3]}")
    for name, info in header.tensors.items():
        arr = tensors[name]
        if arr.dtype != info.np_dtype or arr.shape != info.shape:
            raise SafetensorsError(
                f"{path.name}: tensor {name!r} is {arr.dtype}{list(arr.shape)}, "
                f"header says {info.dtype}{list(info.shape)}"
            )
    order = sorted(header.tensors.values(), key=lambda t: t.begin)
    with atomic_file(path, "wb") as f:
        f.write(struct.pack("<Q", len(header.raw)))
        f.write(header.raw)
        for info in order:
            f.write(np.ascontiguousarray(tensors[info.name]).reshape(-1).view(np.uint8).data)
