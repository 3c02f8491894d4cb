"""The checkpoint layout: constants, the item metadata, and every check on it.

What :func:`ecf8_jax.checkpoint.save` writes and :func:`ecf8_jax.checkpoint.restore` refuses
(the package docstring describes the layout). Nothing here reads or writes files: these
functions turn a tree into items and metadata, check metadata (the format's own, the caller's
expected tree, Orbax's stored shapes) and rebuild a validated, checksummed item from its leaves.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from ecf8_jax.format.constants import SUPPORTED_VERSIONS
from ecf8_jax.format.tensor import Ecf8Tensor, FormatError, validate, verify_checksums

CHECKPOINT_FORMAT = "ecf8-checkpoint"
"""The ``format`` field of a checkpoint's metadata."""

CHECKPOINT_VERSION = 1
"""The checkpoint layout written here (the item layout above); bump when it changes."""

SUPPORTED_CHECKPOINT_VERSIONS = (1,)

ARRAYS_ITEM = "arrays"

METADATA_ITEM = "ecf8"

ECF8_LEAVES = ("stream", "chunk_offsets", "signs", "code_lengths", "checksums")

ARRAY_LEAF = "value"


def dtype_from_name(name: str) -> np.dtype:
    """numpy / ml_dtypes dtype from its ``np.dtype(...).name`` (``"bfloat16"``, ``"int64"``)."""
    if not isinstance(name, str):
        raise FormatError(f"dtype name {name!r} is not a string")
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    try:
        return np.dtype(name)
    except TypeError:
        raise FormatError(f"unknown dtype {name!r}") from None


def item_name(path: list | tuple) -> str:
    """The name of an item in messages: its keys joined by ``/``."""
    return "/".join(str(p) for p in path)


def crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def flatten(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """(path, leaf) for every leaf of a tree of nested str-keyed dicts, in key order."""
    out = []

    def walk(node, path):
        if isinstance(node, Ecf8Tensor):
            out.append((path, node))
        elif isinstance(node, Mapping):
            for k in node:
                if not isinstance(k, str):
                    raise TypeError(
                        f"checkpoint trees are dicts with str keys; {item_name(path)!r} has "
                        f"key {k!r}"
                    )
                walk(node[k], (*path, k))
        elif node is None:
            raise TypeError(f"{item_name(path)!r} is None; checkpoints hold arrays only")
        elif isinstance(node, list | tuple):
            raise TypeError(
                f"checkpoint trees are nested dicts; {item_name(path) or 'the root'!r} is a "
                f"{type(node).__name__}"
            )
        else:
            out.append((path, node))

    walk(tree, ())
    return out


def unflatten(pairs: list[tuple[tuple[str, ...], Any]]) -> dict:
    root: dict = {}
    for path, value in pairs:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return root


def host_array(x) -> np.ndarray:
    if isinstance(x, jax.Array):
        return np.asarray(jax.device_get(x))
    return np.asarray(x)


def leaf_meta(arr: np.ndarray, crc: bool) -> dict:
    meta = {"shape": list(arr.shape), "dtype": arr.dtype.name}
    if crc:
        meta["crc32"] = crc32(arr)
    return meta


def batch_shape(t: Ecf8Tensor) -> tuple[int, ...]:
    """Leading (stacked) axes of ``t``: ``chunk_offsets`` is 1-D for one tensor."""
    return tuple(np.shape(t.chunk_offsets)[:-1])


def prepare(tree: Any, user_metadata: Mapping | None) -> tuple[dict, dict]:
    """The ``arrays`` and ``ecf8`` items of a checkpoint of ``tree``."""
    arrays, items = {}, []
    for i, (path, leaf) in enumerate(flatten(tree)):
        key = f"t{i:06d}"
        if not path:
            raise TypeError("a checkpoint tree must be a dict, not a single leaf")
        if isinstance(leaf, Ecf8Tensor):
            batch = batch_shape(leaf)
            leaves = {name: host_array(getattr(leaf, name)) for name in ECF8_LEAVES}
            entry = {"kind": "ecf8", "ecf8": leaf.metadata(), "batch_shape": list(batch)}
            entry["leaves"] = {n: leaf_meta(a, crc=False) for n, a in leaves.items()}
        else:
            value = host_array(leaf)
            if value.dtype.kind in "OUS" or value.dtype.fields is not None:
                raise TypeError(
                    f"{item_name(path)!r}: cannot save an array of {value.dtype} "
                    "(numbers, booleans and FP8 only)"
                )
            leaves = {ARRAY_LEAF: value}
            entry = {"kind": "array", "leaves": {ARRAY_LEAF: leaf_meta(value, crc=True)}}
        stored = {n: a for n, a in leaves.items() if a.size}
        if stored:
            arrays[key] = stored
        items.append({"path": list(path), "key": key, **entry})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "items": items,
        "user": dict(user_metadata or {}),
    }
    return arrays, meta


def check_metadata(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FormatError(f"{path}: not an ECF8 checkpoint (format {fmt!r})")
    version = meta.get("format_version")
    if version not in SUPPORTED_CHECKPOINT_VERSIONS:
        raise FormatError(
            f"{path}: unsupported ECF8 checkpoint version {version!r} "
            f"(this build reads {SUPPORTED_CHECKPOINT_VERSIONS})"
        )
    items = meta.get("items")
    if not isinstance(items, list):
        raise FormatError(f"{path}: checkpoint metadata has no item list")
    seen = set()
    for i, item in enumerate(items):
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("path"), list)
            and item["path"]
            and all(isinstance(p, str) for p in item["path"])
            and isinstance(item.get("key"), str)
            and item.get("kind") in ("ecf8", "array")
            and isinstance(item.get("leaves"), dict)
        )
        if not ok:
            raise FormatError(f"{path}: checkpoint metadata item {i} is malformed")
        name = item_name(item["path"])
        if name in seen:
            raise FormatError(f"{path}: item {name!r} appears twice")
        seen.add(name)
        expected = set(ECF8_LEAVES) if item["kind"] == "ecf8" else {ARRAY_LEAF}
        if set(item["leaves"]) != expected:
            raise FormatError(
                f"{name}: leaves {sorted(item['leaves'])}, expected {sorted(expected)}"
            )
        for leaf, lm in item["leaves"].items():
            if not (
                isinstance(lm, dict)
                and isinstance(lm.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in lm["shape"])
            ):
                raise FormatError(f"{name}: malformed metadata of {leaf!r}")
            dtype_from_name(lm.get("dtype"))
        if item["kind"] == "ecf8":
            e = item.get("ecf8")
            if not isinstance(e, dict):
                raise FormatError(f"{name}: no ECF8 metadata")
            if e.get("version") not in SUPPORTED_VERSIONS:
                raise FormatError(
                    f"{name}: unsupported ECF8 format version {e.get('version')!r} "
                    f"(this build reads {SUPPORTED_VERSIONS})"
                )


def target_items(target: Any) -> dict[str, tuple[str, dict]]:
    """item name -> (kind, static description) of the caller's expected tree."""
    out = {}
    for path, leaf in flatten(target):
        name = item_name(path)
        if isinstance(leaf, Ecf8Tensor):
            m = leaf.metadata()
            out[name] = ("ecf8", {k: m[k] for k in ("shape", "dtype", "layout")})
        else:
            shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
            dtype = getattr(leaf, "dtype", None)
            dtype = np.dtype(dtype) if dtype is not None else np.asarray(leaf).dtype
            out[name] = ("array", {"shape": list(shape), "dtype": dtype.name})
    return out


def check_target(items: list[dict], target: Any, path: Path) -> None:
    expected = target_items(target)
    stored = {}
    for item in items:
        if item["kind"] == "ecf8":
            e = item["ecf8"]
            desc = {"shape": e.get("shape"), "dtype": e.get("dtype"), "layout": e.get("layout")}
        else:
            v = item["leaves"][ARRAY_LEAF]
            desc = {"shape": v["shape"], "dtype": v["dtype"]}
        stored[item_name(item["path"])] = (item["kind"], desc)
    for name in expected:
        if name not in stored:
            raise FormatError(
                f"{path}: item {name!r} of the expected tree is not in the checkpoint"
            )
    for name in stored:
        if name not in expected:
            raise FormatError(f"{path}: item {name!r} is in the checkpoint but not expected")
    for name, (kind, desc) in expected.items():
        if stored[name] != (kind, desc):
            raise FormatError(
                f"{name}: checkpoint holds {stored[name][0]} {stored[name][1]}, "
                f"expected {kind} {desc}"
            )


def check_ecf8(t: Ecf8Tensor, name: str, verify: bool) -> None:
    batch = batch_shape(t)
    for index in np.ndindex(*batch):
        one = t if not batch else jax.tree_util.tree_map(lambda a, i=index: a[i], t)
        where = name if not batch else f"{name}[{', '.join(map(str, index))}]"
        try:
            (verify_checksums if verify else validate)(one)
        except FormatError as e:
            raise FormatError(f"{where}: {e}") from None


def expected_arrays(items: list[dict]) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """What Orbax should hold, from the format metadata: ``{key: {leaf: ShapeDtypeStruct}}``
    (zero-size leaves are not stored)."""
    wanted: dict[str, dict] = {}
    for item in items:
        leaves = {}
        for leaf, lm in item["leaves"].items():
            if math.prod(lm["shape"]):
                leaves[leaf] = jax.ShapeDtypeStruct(
                    tuple(lm["shape"]), dtype_from_name(lm["dtype"])
                )
        if leaves:
            wanted[item["key"]] = leaves
    return wanted


def check_stored_arrays(items: list[dict], wanted: Mapping, on_disk: Mapping) -> None:
    """Every array the metadata expects is on disk with its shape and dtype (``on_disk``:
    Orbax's own metadata), checked before any array data is read."""
    for item in items:
        name = item_name(item["path"])
        for leaf, want in wanted.get(item["key"], {}).items():
            got = on_disk.get(item["key"], {})
            got = got.get(leaf) if isinstance(got, Mapping) else None
            if got is None:
                raise FormatError(f"{name}: array {leaf!r} is missing from the checkpoint")
            if tuple(got.shape) != want.shape or np.dtype(got.dtype) != want.dtype:
                raise FormatError(
                    f"{name}: stored {leaf!r} is {got.dtype}{list(got.shape)}, "
                    f"metadata says {want.dtype}{list(want.shape)}"
                )


def item_value(item: dict, stored: Mapping, verify: bool) -> Ecf8Tensor | np.ndarray:
    """One item rebuilt on the host from its stored leaves, validated and checksummed.

    Args:
      item: the item's format metadata.
      stored: its leaves as read (zero-size leaves are absent and rebuilt from their shape).
      verify: recompute CRC-32s (an ``Ecf8Tensor`` is always validated).

    Raises:
      FormatError: malformed ECF8 metadata, a tensor that fails validation, a checksum mismatch.
    """
    name = item_name(item["path"])
    leaves = {}
    for leaf, lm in item["leaves"].items():
        if leaf in stored:
            leaves[leaf] = np.asarray(stored[leaf])
        else:
            leaves[leaf] = np.zeros(lm["shape"], dtype_from_name(lm["dtype"]))
    if item["kind"] == "ecf8":
        e = item["ecf8"]
        try:
            t = Ecf8Tensor(
                **leaves,
                shape=tuple(e["shape"]),
                dtype=e["dtype"],
                chunk_steps=e["chunk_steps"],
                version=e["version"],
                layout=e.get("layout", "flat"),
            )
        except (KeyError, TypeError) as err:
            raise FormatError(f"{name}: malformed ECF8 metadata ({err})") from None
        check_ecf8(t, name, verify)
        return t
    value = leaves[ARRAY_LEAF]
    crc = item["leaves"][ARRAY_LEAF].get("crc32")
    if verify and crc is not None and crc32(value) != crc:
        raise FormatError(
            f"{name}: checksum mismatch: stored {crc:#010x}, "
            f"computed {crc32(value):#010x} (corrupted array data)"
        )
    return value
