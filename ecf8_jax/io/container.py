"""Model files in and out of ECF8 checkpoints: pack, unpack, verify, inspect.

The Python API behind ``ecf8 compress / decompress / verify / inspect``; the command line only
parses arguments and prints what these functions return::

    from ecf8_jax.io import container

    report = container.pack("model_dir", "model.ecf8")          # safetensors, folder or GGUF
    container.verify("model.ecf8", against="model_dir")         # raises unless bit-identical
    container.unpack("model.ecf8", "model_copy")                # the files again, byte for byte
    summary, rows = container.inspect("model.ecf8")

:func:`pack` stores FP8 tensors (``F8_E4M3``, ``F8_E5M2``) and 16-bit float tensors (``BF16``,
``F16``) as ECF8 (layout ``flat``, format version 2 for the 16-bit ones) and every other tensor
as it is, in an :mod:`ecf8_jax.checkpoint` whose metadata keeps each source file's
safetensors header verbatim, so :func:`unpack` rebuilds the files byte for byte.
``cast="fp8-row"`` is lossy: every 2-D F32/F16/BF16 tensor whose name ends in ``weight`` and
names no embedding or norm is quantized to FP8 E4M3 with one float32 scale per row
(:func:`ecf8_jax.quantize.quantize_fp8`), stored as ``NAME`` (FP8, ECF8-coded) plus
``NAME_scale`` (F32 ``[rows, 1]``, ``NAME ≈ NAME.astype(f32) * NAME_scale``); :func:`unpack`
then writes those two tensors instead of the original, and :func:`verify` compares against the
same quantization of the source.

A GGUF source (llama.cpp) is read with the ``gguf`` package and dequantized to float32 under its
GGUF tensor names (its block formats such as Q4_1 are not FP8); :func:`unpack` then writes those
float32 tensors as safetensors, and :func:`verify` compares against the same dequantization.

Bad input (a missing file, a malformed index, a damaged checkpoint, a mismatch) raises
:class:`ContainerError`, :class:`~ecf8_jax.format.FormatError`,
:class:`~ecf8_jax.io.safetensors_raw.SafetensorsError` or ``OSError``, with a message naming the
file and tensor. Every file is written atomically (:mod:`ecf8_jax.atomic`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ecf8_jax.errors import one_line
from ecf8_jax.io.safetensors import INDEX_NAME, model_files

TOOL = "ecf8 compress"
"""The ``tool`` recorded in a packed checkpoint's user metadata (its name from the CLI)."""

FP8_NAMES = ("F8_E4M3", "F8_E5M2")
WIDE_NAMES = ("BF16", "F16")
CODED_NAMES = FP8_NAMES + WIDE_NAMES
"""Safetensors dtypes :func:`pack` entropy-codes (losslessly); the others are stored as they are."""
CAST_MODES = ("fp8-row",)
CAST_SOURCE_DTYPES = ("F32", "F16", "BF16")

Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], None]]]
"""``progress(description, total_bytes)``: a context manager yielding ``advance(n_bytes)``."""


class ContainerError(ValueError):
    """Input that cannot be packed, unpacked or verified; the message names file and tensor."""


@contextlib.contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """What a path to pack holds.

    Attributes:
      kind: ``"file"`` (one safetensors or GGUF file) or ``"folder"`` (a model folder).
      files: ``(file name, path)`` in order; a GGUF file is named ``STEM.safetensors``.
      index_text: the folder's ``model.safetensors.index.json``, verbatim, or None.
    """

    kind: str
    files: list[tuple[str, Path]]
    index_text: str | None


def resolve_source(src: str | os.PathLike) -> Source:
    """The :class:`Source` of a safetensors file, a model folder or a GGUF file."""
    src = Path(src)
    if not src.exists():
        raise ContainerError(f"{src}: no such file or folder")
    if src.is_file() and src.suffix == ".gguf":
        return Source("file", [(src.stem + ".safetensors", src)], None)
    if src.is_file():
        return Source("file", [(src.name, src)], None)
    files, index_text = model_files(src)  # the resolver io.safetensors reads folders with
    return Source("folder", [(p.name, p) for p in files], index_text)


@functools.lru_cache(maxsize=2)
def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """A GGUF file's tensors, dequantized to float32 (GGUF's block formats are not FP8), under
    their GGUF names, in numpy (row-major) shape order."""
    try:
        import gguf

        from ecf8_jax.io.gguf import dequantized
    except ImportError:
        raise ContainerError("reading GGUF needs the gguf package (pip install gguf)") from None
    try:
        reader = gguf.GGUFReader(path)
        out = {}
        for t in reader.tensors:
            out[t.name] = dequantized(t)
    except (ValueError, KeyError, NotImplementedError, struct.error) as e:
        raise ContainerError(f"{path}: not a readable GGUF file ({one_line(e)})") from None
    return out


def read_source_file(path: Path):
    """``(header, tensors)`` of one source file: safetensors as stored, GGUF as float32."""
    from ecf8_jax.io import safetensors_raw as sr

    if path.suffix == ".gguf":
        tensors = _gguf_tensors(path)
        return sr.make_header(tensors), tensors
    return sr.read(path)


def read_headers(source: Source) -> dict:
    """``{file name: Header}`` of a source, checked against each other and the index."""
    from ecf8_jax.io import safetensors_raw as sr

    headers, owner = {}, {}
    for name, path in source.files:
        h = read_source_file(path)[0] if path.suffix == ".gguf" else sr.read_header(path)
        for t in h.tensors:
            if t in owner:
                raise ContainerError(f"tensor {t!r} is in both {owner[t]} and {name}")
            owner[t] = name
        headers[name] = h
    if source.index_text is not None:
        weight_map = json.loads(source.index_text)["weight_map"]
        for t, shard in weight_map.items():
            if owner.get(t) != shard:
                raise ContainerError(f"{INDEX_NAME}: tensor {t!r} is not in {shard}")
        for t, shard in owner.items():
            if t not in weight_map:
                raise ContainerError(f"{shard}: tensor {t!r} is missing from {INDEX_NAME}")
    return headers


def castable(name: str, dtype: str, shape) -> bool:
    """Whether ``cast="fp8-row"`` quantizes this tensor (2-D float weights, no embedding/norm)."""
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
        raise ContainerError(f"tensor {name!r}: cannot cast to FP8: {e}") from None


def _exponent_stats(q: np.ndarray) -> dict:
    from ecf8_jax.stats import entropy_bits, exponent_histogram

    hist = exponent_histogram(q)
    return {"exponent_histogram": hist.tolist(), "exponent_entropy": entropy_bits(hist)}


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ecf8-jax")
    except importlib.metadata.PackageNotFoundError:  # a checkout that is not installed
        return "unknown"


def _itemsize(dtype: str) -> int:
    from ecf8_jax.io import safetensors_raw as sr

    return sr.DTYPES[dtype].itemsize


# ----------------------------------------------------------------------------- pack


@dataclasses.dataclass(frozen=True)
class PackReport:
    """What :func:`pack` wrote.

    Attributes:
      rows: one dict per source tensor: ``tensor``, ``dtype``, ``shape``, ``original_bytes``,
        ``ecf8_bytes`` and, for coded tensors, ``bits_per_weight`` and ``exponent_entropy``.
      summary: ``tensors``, ``original_bytes``, ``ecf8_bytes``, ``saved_percent``, ``lossy``,
        ``coded_tensors`` (how many were entropy-coded: FP8, BF16, F16), ``fp8_tensors`` (how
        many of them FP8) and ``dtypes`` (source dtype -> count).
    """

    rows: list[dict]
    summary: dict

    @property
    def nothing_to_compress(self) -> bool:
        """True when no tensor was entropy-coded (none FP8, BF16 or F16): nothing is saved."""
        return self.summary["coded_tensors"] == 0


def pack(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cast: str | None = None,
    chunk_steps: int | None = None,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> PackReport:
    """Packs a safetensors file, model folder or GGUF file into an ECF8 checkpoint at ``out``.

    Args:
      src: a ``.safetensors`` file, a folder of them (see :func:`ecf8_jax.io.safetensors.model_files`) or a ``.gguf``.
      out: the checkpoint folder to write (atomically).
      cast: None (lossless) or ``"fp8-row"`` (LOSSY, see the module docstring).
      chunk_steps: the ECF8 chunk size limit (:func:`ecf8_jax.encode`).
      overwrite: replace ``out`` if it exists.
      progress: reports bytes read (see :data:`Progress`).

    Returns:
      A :class:`PackReport`.

    Raises:
      ContainerError: unreadable or inconsistent input, or a tensor that cannot be cast.
      FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    from ecf8_jax import checkpoint
    from ecf8_jax.format import encode
    from ecf8_jax.io import safetensors_raw as sr

    if cast is not None and cast not in CAST_MODES:
        raise ContainerError(f"cast must be one of {CAST_MODES} or None, not {cast!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite to replace it)")
    source = resolve_source(src)
    headers = read_headers(source)
    total = sum(h.data_size for h in headers.values())
    coded_dtypes = [sr.DTYPES[n] for n in CODED_NAMES]
    fp8_dtypes = [sr.DTYPES[n] for n in FP8_NAMES]
    fp8_count = 0

    tree, tensor_meta, rows = {}, {}, []
    with progress("compressing", total) as advance:
        for file_name, path in source.files:
            _, tensors = read_source_file(path)
            for name, arr in tensors.items():
                info = headers[file_name].tensors[name]
                meta = {"dtype": info.dtype, "shape": list(info.shape), "file": file_name}
                row = {"tensor": name, "dtype": info.dtype, "shape": list(info.shape)}
                row["original_bytes"] = info.nbytes
                if cast and castable(name, info.dtype, info.shape):
                    q, scale = _cast_fp8_row(name, arr)
                    scale_name = f"{name}_scale"
                    if scale_name in tensors or scale_name in tree:
                        raise ContainerError(f"--cast: {scale_name!r} already exists in the source")
                    tree[scale_name] = scale
                    meta["cast"] = cast
                    arr = q
                    row["dtype"] = f"{info.dtype}->F8_E4M3 (lossy)"
                if arr.dtype in coded_dtypes:
                    fp8_count += arr.dtype in fp8_dtypes
                    t = encode(arr, chunk_steps=chunk_steps, layout="flat")
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
        "ecf8_jax_version": _version(),
        "cast": cast,
        "source": {
            "kind": source.kind,
            "index": source.index_text,
            "files": [
                {
                    "name": file_name,
                    "header": headers[file_name].raw.decode("utf-8"),
                    "tensors": list(headers[file_name].tensors),
                }
                for file_name, _ in source.files
            ],
        },
        "tensors": tensor_meta,
    }
    checkpoint.save(out, tree, metadata=user, overwrite=overwrite)

    orig = sum(r["original_bytes"] for r in rows)
    packed = sum(r["ecf8_bytes"] for r in rows)
    dtypes: dict[str, int] = {}
    for m in tensor_meta.values():
        dtypes[m["dtype"]] = dtypes.get(m["dtype"], 0) + 1
    summary = {
        "tensors": len(rows),
        "original_bytes": orig,
        "ecf8_bytes": packed,
        "saved_percent": 100 * (1 - packed / orig) if orig else 0.0,
        "lossy": bool(cast),
        "coded_tensors": sum("bits_per_weight" in r for r in rows),
        "fp8_tensors": fp8_count,
        "dtypes": dtypes,
    }
    return PackReport(rows, summary)


def nothing_to_compress_hint(summary: dict) -> str:
    """Why a pack saved nothing and what to do, for a summary with no coded tensor."""
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(summary["dtypes"].items())) or "none"
    return (
        f"no FP8, BF16 or F16 tensors (found {dtypes}): ECF8 entropy-codes those only, so every "
        "tensor was stored as it is; pass --cast fp8-row to quantize 2-D float weights to FP8 "
        "first (lossy)"
    )


# ----------------------------------------------------------------------------- load / unpack


class _Decoder:
    """``jax.jit(decode)`` with stream lengths bucketed by :func:`ecf8_jax.pad_stream`."""

    def __init__(self):
        import jax

        from ecf8_jax.codec import decode

        self._decode = jax.jit(decode)

    def __call__(self, t) -> np.ndarray:
        from ecf8_jax.codec import pad_stream
        from ecf8_jax.format.constants import DTYPES

        if t.size == 0:
            return np.zeros(t.shape, DTYPES[t.dtype])
        return np.asarray(self._decode(pad_stream(t)))


def load(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(tree on the host, pack metadata)`` of a checkpoint written by :func:`pack`.

    Every checksum is verified on the way (:func:`ecf8_jax.checkpoint.restore`).
    """
    from ecf8_jax import checkpoint

    path = Path(path)
    if not path.exists():
        raise ContainerError(f"{path}: no such checkpoint")
    meta = checkpoint.read_metadata(path)
    user = meta.get("user", {})
    if not isinstance(user, dict) or user.get("tool") != TOOL:
        raise ContainerError(f"{path}: an ECF8 checkpoint, but not one written by 'ecf8 compress'")
    return checkpoint.restore(path, to_host=True), user


def _decoded_files(tree: dict, user: dict, advance=lambda n: None):
    """Yields (file name, {name: array}, header or None, metadata) of the packed files."""
    from ecf8_jax.format.tensor import Ecf8Tensor
    from ecf8_jax.io import safetensors_raw as sr

    decode = _Decoder()
    tensors_meta = user["tensors"]
    for f in user["source"]["files"]:
        out = {}
        for name in f["tensors"]:
            if name not in tree:
                raise ContainerError(f"checkpoint: tensor {name!r} is missing")
            leaf = tree[name]
            arr = decode(leaf) if isinstance(leaf, Ecf8Tensor) else np.asarray(leaf)
            advance(arr.nbytes)
            meta = tensors_meta[name]
            if meta.get("cast"):
                out[name] = arr
                out[f"{name}_scale"] = np.asarray(tree[f"{name}_scale"])
                continue
            if arr.dtype != sr.DTYPES[meta["dtype"]] or list(arr.shape) != meta["shape"]:
                raise ContainerError(
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


def unpack(
    path: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> tuple[dict, list[Path]]:
    """Writes the safetensors file (or model folder) a checkpoint was packed from.

    Without a cast the output is the source, byte for byte; a GGUF source comes back as the
    float32 safetensors it was read as.

    Args:
      path: a checkpoint written by :func:`pack`.
      dst: the ``.safetensors`` file, or for a folder source the folder, to write (atomically).
      overwrite: replace ``dst`` if it exists.
      progress: reports bytes decoded.

    Returns:
      ``(pack metadata, the files written)``.
    """
    from ecf8_jax.atomic import atomic_folder, write_text
    from ecf8_jax.io import safetensors_raw as sr

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite to replace it)")
    tree, user = load(path)
    kind = user["source"]["kind"]
    total = sum(_itemsize(m["dtype"]) * int(np.prod(m["shape"])) for m in user["tensors"].values())
    with progress("decoding", total) as advance:
        decoded = list(_decoded_files(tree, user, advance))
    if kind == "file":
        ((name, tensors, header, metadata),) = decoded
        sr.write(dst, tensors, header=header, metadata=metadata)
        return user, [dst]
    with atomic_folder(dst, overwrite=overwrite) as staging:
        staging.mkdir()
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
            write_text(staging / INDEX_NAME, index)
    return user, sorted(dst.iterdir())


# ----------------------------------------------------------------------------- verify


def verify(
    path: str | os.PathLike, against: str | os.PathLike, *, progress: Progress = _no_progress
) -> tuple[dict, int]:
    """Checks that every tensor of a checkpoint decodes bit-identically to its source.

    A cast checkpoint is compared with the same quantization of the source.

    Args:
      path: a checkpoint written by :func:`pack`.
      against: the safetensors file, model folder or GGUF it was packed from.
      progress: reports source bytes compared.

    Returns:
      ``(pack metadata, number of tensors compared)``.

    Raises:
      ContainerError: a tensor is missing on either side or differs (named, with the count of
        differing bytes).
    """
    from ecf8_jax.format.tensor import Ecf8Tensor

    against = Path(against)
    source = resolve_source(against)
    headers = read_headers(source)
    tree, user = load(path)
    decode = _Decoder()
    source_names = [t for h in headers.values() for t in h.tensors]
    expected_names = set(source_names)
    for name, meta in user["tensors"].items():
        if meta.get("cast"):
            expected_names.add(f"{name}_scale")
    for name in source_names:
        if name not in tree:
            raise ContainerError(
                f"verify: tensor {name!r} of {against.name} is not in the checkpoint"
            )
    for name in tree:
        if name not in expected_names:
            raise ContainerError(
                f"verify: tensor {name!r} of the checkpoint is not in {against.name}"
            )
    count = 0
    total = sum(h.data_size for h in headers.values())
    with progress("verifying", total) as advance:
        for file_name, file_path in source.files:
            _, tensors = read_source_file(file_path)
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
                        raise ContainerError(
                            f"verify: tensor {n!r} differs: {g.dtype}{list(g.shape)} in the "
                            f"checkpoint, {w.dtype}{list(w.shape)} in {file_name}"
                        )
                    gb, wb = g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8)
                    if not np.array_equal(gb, wb):
                        diff = int(np.count_nonzero(gb != wb))
                        raise ContainerError(
                            f"verify: tensor {n!r} differs from {file_name} "
                            f"({diff} of {wb.size} bytes)"
                        )
                    count += 1
                advance(want.nbytes)
    return user, count


# ----------------------------------------------------------------------------- inspect


def inspect(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Sizes and entropies of a packed checkpoint's tensors (every checksum verified).

    Returns:
      ``(summary, rows)``: rows as in :class:`PackReport` (plus ``exponent_histogram`` and
      ``chunk_steps`` for ECF8 tensors); the summary adds ``on_disk_bytes`` and ``cast``.
    """
    from ecf8_jax.format.tensor import Ecf8Tensor

    path = Path(path)
    tree, user = load(path)
    rows = []
    for name, meta in user["tensors"].items():
        leaf = tree[name]
        shape, dtype = meta.get("shape"), meta.get("dtype")
        row = {"tensor": name, "dtype": dtype, "shape": shape}
        row["original_bytes"] = int(np.prod(shape)) * _itemsize(dtype)
        if isinstance(leaf, Ecf8Tensor):
            row["ecf8_bytes"] = leaf.nbytes
            row["bits_per_weight"] = leaf.bits_per_weight
            row["exponent_entropy"] = meta.get("exponent_entropy")
            row["exponent_histogram"] = meta.get("exponent_histogram")
            row["chunk_steps"] = leaf.chunk_steps
        else:
            row["ecf8_bytes"] = np.asarray(leaf).nbytes
        if meta.get("cast"):
            row["dtype"] = f"{dtype}->F8_E4M3 (lossy)"
            row["ecf8_bytes"] += np.asarray(tree[f"{name}_scale"]).nbytes
        rows.append(row)
    summary = {
        "tensors": len(rows),
        "original_bytes": sum(r["original_bytes"] for r in rows),
        "ecf8_bytes": sum(r["ecf8_bytes"] for r in rows),
        "on_disk_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
        "cast": user.get("cast"),
        "checksums": "ok",
    }
    return summary, rows


_LAYER = re.compile(r"(?:^|\.)(?:layers?|blocks?|h|layer)\.(\d+)\.|(?:^|\.)blk\.(\d+)\.")


def split_name(name: str) -> tuple[int | None, str]:
    """``(layer index or None, tensor kind)`` of a tensor name.

    ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "self_attn.q_proj.weight")``;
    ``blk.3.attn_q.weight`` (GGUF) -> ``(3, "attn_q.weight")``; a name outside the layers
    (``model.embed_tokens.weight``) -> ``(None, name)``.
    """
    m = _LAYER.search(name)
    if m is None:
        return None, name
    return int(m.group(1) or m.group(2)), name[m.end() :]


def group_rows(rows: list[dict], by: str) -> list[dict]:
    """ECF8 rows summed per layer (``by="layer"``) or per tensor kind (``by="kind"``).

    Returns:
      One dict per group, in layer order (``by="layer"``, layers without an index last under
      ``"other"``) or by name: ``group``, ``tensors``, ``weights``, ``bits_per_weight`` (coded bits over all the group's weights) and ``exponent_entropy``
      (mean over the group's weights). Only rows with ``bits_per_weight`` count.
    """
    if by not in ("layer", "kind"):
        raise ValueError(f"by must be 'layer' or 'kind', not {by!r}")
    groups: dict[Any, dict] = {}
    for r in rows:
        if r.get("bits_per_weight") is None:
            continue
        layer, kind = split_name(r["tensor"])
        key = kind if by == "kind" else ("other" if layer is None else layer)
        n = int(np.prod(r["shape"]))
        g = groups.setdefault(key, {"group": key, "tensors": 0, "weights": 0, "_bits": 0.0})
        g["tensors"] += 1
        g["weights"] += n
        g["_bits"] += r["bits_per_weight"] * n
        g.setdefault("_h", 0.0)
        g["_h"] += (r.get("exponent_entropy") or 0.0) * n
    order = sorted(groups, key=lambda k: (isinstance(k, str), k))
    out = []
    for k in order:
        g = groups[k]
        w = max(g["weights"], 1)
        out.append(
            {
                "group": g["group"],
                "tensors": g["tensors"],
                "weights": g["weights"],
                "bits_per_weight": g["_bits"] / w,
                "exponent_entropy": g["_h"] / w,
            }
        )
    return out
