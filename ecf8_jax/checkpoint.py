"""Orbax checkpoints of ``Ecf8Tensor``s and ordinary arrays, verified on restore.

A checkpoint is one Orbax composite checkpoint with two items:

* ``arrays`` (``ocp.args.StandardSave``): a flat dict ``{key: {leaf: array}}`` with one entry
  per saved item. An ``Ecf8Tensor`` contributes its five arrays (``stream``, ``chunk_offsets``,
  ``signs``, ``code_lengths``, ``checksums``), an ordinary array one leaf, ``value``. Keys are
  positional (``t000000``, ``t000001``, ...) so tensor names with dots or slashes never reach
  Orbax's parameter naming. Zero-size leaves are not written (Orbax cannot store them); they are
  rebuilt from their recorded shape.
* ``ecf8`` (``ocp.args.JsonSave``): the format metadata::

      {"format": "ecf8-checkpoint", "format_version": 1,
       "items": [{"path": ["layer0", "w"], "key": "t000000", "kind": "ecf8",
                  "ecf8": {"version": 1, "shape": [...], "dtype": "float8_e4m3fn",
                           "chunk_steps": 1024, "layout": "flat"},
                  "leaves": {"stream": {"shape": [...], "dtype": "uint32"}, ...}},
                 {"path": ["layer0", "b"], "key": "t000001", "kind": "array",
                  "leaves": {"value": {"shape": [...], "dtype": "bfloat16", "crc32": 123}}}],
       "user": {...}}

Restoring never returns a silently different model. Before any array is read, the metadata's
format name and version, every item's ECF8 version, and (when the caller passes the expected
tree) the tree's paths, kinds, shapes and dtypes are checked; then each stored array's shape and
dtype; then each ``Ecf8Tensor`` is validated and its CRC-32s recomputed, and each ordinary array's
CRC-32 (recorded at save time) is compared. Every failure is a :class:`FormatError` naming the
item. Orbax's OCDBT storage has no checksums of its own: a flipped bit in an array file otherwise
reads back as a different value.

Writes are atomic: Orbax writes into a temporary folder and renames it when complete, so a save
that is interrupted (even by SIGKILL) leaves earlier checkpoints intact and readable.

Only nested dicts with string keys are supported as trees (what ``nnx.State.to_pure_dict()``
and safetensors give); leaves are ``Ecf8Tensor``s (also stacked ones) or array-likes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from ecf8_jax.atomic import atomic_folder
from ecf8_jax.errors import one_line
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

Sharding = jax.sharding.Sharding | Callable[[str, str], jax.sharding.Sharding] | None
"""Where restored arrays go: one ``Sharding`` for every array, or ``f(item_name, leaf_name)``
(``leaf_name`` is ``"value"`` for ordinary arrays) returning one, or ``None`` for the default
device."""


# ----------------------------------------------------------------------------- helpers


def _quiet_absl() -> None:
    """Orbax logs routine warnings through absl; keep them off stderr."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with orbax
        pass


def _ocp():
    import orbax.checkpoint as ocp

    _quiet_absl()
    return ocp


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


def _crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _flatten(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
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


def _unflatten(pairs: list[tuple[tuple[str, ...], Any]]) -> dict:
    root: dict = {}
    for path, value in pairs:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return root


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array):
        return np.asarray(jax.device_get(x))
    return np.asarray(x)


def _leaf_meta(arr: np.ndarray, crc: bool) -> dict:
    meta = {"shape": list(arr.shape), "dtype": arr.dtype.name}
    if crc:
        meta["crc32"] = _crc32(arr)
    return meta


def _batch_shape(t: Ecf8Tensor) -> tuple[int, ...]:
    """Leading (stacked) axes of ``t``: ``chunk_offsets`` is 1-D for one tensor."""
    return tuple(np.shape(t.chunk_offsets)[:-1])


def _prepare(tree: Any, user_metadata: Mapping | None) -> tuple[dict, dict]:
    """The ``arrays`` and ``ecf8`` items of a checkpoint of ``tree``."""
    arrays, items = {}, []
    for i, (path, leaf) in enumerate(_flatten(tree)):
        key = f"t{i:06d}"
        if not path:
            raise TypeError("a checkpoint tree must be a dict, not a single leaf")
        if isinstance(leaf, Ecf8Tensor):
            batch = _batch_shape(leaf)
            leaves = {name: _host(getattr(leaf, name)) for name in ECF8_LEAVES}
            entry = {"kind": "ecf8", "ecf8": leaf.metadata(), "batch_shape": list(batch)}
            entry["leaves"] = {n: _leaf_meta(a, crc=False) for n, a in leaves.items()}
        else:
            value = _host(leaf)
            if value.dtype.kind in "OUS" or value.dtype.fields is not None:
                raise TypeError(
                    f"{item_name(path)!r}: cannot save an array of {value.dtype} "
                    "(numbers, booleans and FP8 only)"
                )
            leaves = {ARRAY_LEAF: value}
            entry = {"kind": "array", "leaves": {ARRAY_LEAF: _leaf_meta(value, crc=True)}}
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


def _as_dicts(tree: Any) -> Any:
    """Any pytree of containers (tuples, NamedTuples such as optax states, lists, dicts) as
    nested dicts with string keys (``flax.serialization.to_state_dict``); leaves unchanged."""
    from flax import serialization

    return serialization.to_state_dict(tree)


def _save_args(tree: Any, user_metadata: Mapping | None):
    ocp = _ocp()
    arrays, meta = _prepare(_as_dicts(tree), user_metadata)
    return ocp.args.Composite(
        **{
            ARRAYS_ITEM: ocp.args.StandardSave(arrays),
            METADATA_ITEM: ocp.args.JsonSave(meta),
        }
    )


# ----------------------------------------------------------------------------- metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """The format metadata of the checkpoint at ``path`` (see the module docstring).

    Raises:
      FormatError: no checkpoint there, or its metadata is unreadable, of another format or
        of an unsupported version.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise FormatError(f"{path}: no checkpoint (not a folder)")
    meta_dir = path / METADATA_ITEM
    if not (meta_dir / "metadata").is_file():
        raise FormatError(f"{path}: not an ECF8 checkpoint (no '{METADATA_ITEM}' item)")
    ocp = _ocp()
    args = ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()})
    try:
        meta = _orbax_restore(path, args)[METADATA_ITEM]
    except Exception as e:  # json or Orbax errors: a damaged metadata item
        raise FormatError(f"{path}: unreadable checkpoint metadata ({one_line(e)})") from None
    _check_metadata(meta, path)
    return meta


def _check_metadata(meta: Any, path: Path) -> None:
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


# ----------------------------------------------------------------------------- save


def save(
    path: str | os.PathLike,
    tree: Any,
    *,
    metadata: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``tree`` as one checkpoint folder at ``path``, atomically.

    Args:
      path: the checkpoint folder (must not exist unless ``overwrite``).
      tree: a pytree of ``Ecf8Tensor``s and arrays: nested dicts (str keys), or any containers
        ``flax.serialization`` knows (tuples, NamedTuples such as optax states, lists), which
        are stored as dicts and rebuilt by :func:`restore` given a ``target`` of that shape.
      metadata: JSON-serialisable data stored with the checkpoint (``read_metadata(p)["user"]``).
      overwrite: replace an existing checkpoint. The new one is written next to it first and
        swapped in by two renames, so an interrupted save leaves the old one in place.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is false.
      TypeError: the tree holds something other than dicts, arrays and ``Ecf8Tensor``s.
    """
    ocp = _ocp()
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    args = _save_args(tree, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(path, overwrite=overwrite) as staging:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        try:
            checkpointer.save(staging, args=args)
        finally:
            checkpointer.close()
    return path


# ----------------------------------------------------------------------------- restore


def _target_items(target: Any) -> dict[str, tuple[str, dict]]:
    """item name -> (kind, static description) of the caller's expected tree."""
    out = {}
    for path, leaf in _flatten(target):
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


def _check_target(items: list[dict], target: Any, path: Path) -> None:
    expected = _target_items(target)
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


def _stored_array_metadata(path: Path) -> dict:
    """Shapes and dtypes of the arrays Orbax wrote, by key and leaf."""
    ocp = _ocp()
    arrays_dir = path / ARRAYS_ITEM
    if not arrays_dir.is_dir():
        return {}
    handler = ocp.StandardCheckpointHandler()
    try:
        tree = handler.metadata(arrays_dir)
        tree = getattr(tree, "tree", tree)
    except Exception as e:
        raise FormatError(f"{path}: unreadable array metadata ({one_line(e)})") from None
    finally:
        handler.close()
    return tree if isinstance(tree, Mapping) else {}


def _orbax_restore(path: Path, args):
    """One restore with a fresh checkpointer (a composite handler binds each item to the
    argument type it first saw), closed afterwards."""
    ocp = _ocp()
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        return checkpointer.restore(path, args=args)
    finally:
        checkpointer.close()


def _restore_arrays(path: Path, target: dict) -> dict:
    ocp = _ocp()
    args = ocp.args.Composite(**{ARRAYS_ITEM: ocp.args.StandardRestore(target)})
    return _orbax_restore(path, args)[ARRAYS_ITEM]


def _restore_one(path: Path, key: str, target: dict) -> dict:
    ocp = _ocp()
    restore_args = {key: {n: ocp.RestoreArgs(restore_type=np.ndarray) for n in target[key]}}
    args = ocp.args.Composite(
        **{
            ARRAYS_ITEM: ocp.args.PyTreeRestore(
                {key: target[key]}, restore_args=restore_args, partial_restore=True
            )
        }
    )
    return _orbax_restore(path, args)[ARRAYS_ITEM]


def _device_put(arr: np.ndarray, name: str, leaf: str, sharding: Sharding):
    if arr.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise FormatError(
            f"{name}: {arr.dtype} would be narrowed on device (jax_enable_x64 is off); "
            "restore with to_host=True"
        )
    if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
        sharding = sharding(name, leaf)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.device_put(arr, sharding)


def _check_ecf8(t: Ecf8Tensor, name: str, verify: bool) -> None:
    batch = _batch_shape(t)
    for index in np.ndindex(*batch):
        one = t if not batch else jax.tree_util.tree_map(lambda a, i=index: a[i], t)
        where = name if not batch else f"{name}[{', '.join(map(str, index))}]"
        try:
            (verify_checksums if verify else validate)(one)
        except FormatError as e:
            raise FormatError(f"{where}: {e}") from None


def restore(
    path: str | os.PathLike,
    *,
    target: Any = None,
    sharding: Sharding = None,
    to_host: bool = False,
    verify: bool = True,
) -> dict:
    """Reads the checkpoint at ``path`` back, bit-exactly, or refuses it.

    Args:
      path: a checkpoint folder written by :func:`save` (or a step of a
        :class:`CheckpointManager`).
      target: the expected tree (``Ecf8Tensor``s and arrays or ``jax.ShapeDtypeStruct``s);
        the checkpoint must hold exactly its items, with the same kinds, shapes, dtypes (and
        layouts). ``None`` accepts any structure.
      sharding: where arrays go (see :data:`Sharding`); ignored with ``to_host``.
      to_host: return numpy arrays instead of device arrays (needed for 64-bit dtypes when
        ``jax_enable_x64`` is off).
      verify: recompute every CRC-32 (ECF8 chunk and header checksums, and the checksums of
        ordinary arrays). ``Ecf8Tensor``s are always validated.

    Returns:
      Nested dicts of ``Ecf8Tensor``s and arrays, or a tree shaped like ``target`` when it is
      not a dict (an optax state, a tuple of parameters and state, ...).

    Raises:
      FormatError: naming the item when anything is missing, different from ``target``,
        truncated, corrupted or of another format version.
    """
    path = Path(path).absolute()
    meta = read_metadata(path)
    items = meta["items"]
    template = target
    if target is not None:
        target = _as_dicts(target)
        _check_target(items, target, path)

    # What Orbax should hold, from the format metadata; checked against Orbax's own metadata.
    wanted: dict[str, dict] = {}
    for item in items:
        name = item_name(item["path"])
        leaves = {}
        for leaf, lm in item["leaves"].items():
            if math.prod(lm["shape"]):
                leaves[leaf] = jax.ShapeDtypeStruct(
                    tuple(lm["shape"]), dtype_from_name(lm["dtype"])
                )
        if leaves:
            wanted[item["key"]] = leaves
    on_disk = _stored_array_metadata(path)
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

    try:
        arrays = _restore_arrays(path, wanted) if wanted else {}
    except Exception as whole:
        for item in items:  # find the item that cannot be read
            if item["key"] not in wanted:
                continue
            try:
                _restore_one(path, item["key"], wanted)
            except Exception as e:
                raise FormatError(
                    f"{item_name(item['path'])}: unreadable array data ({one_line(e)})"
                ) from None
        raise FormatError(f"{path}: unreadable array data ({one_line(whole)})") from None

    pairs = []
    for item in items:
        name = item_name(item["path"])
        got = arrays.get(item["key"], {})
        leaves = {}
        for leaf, lm in item["leaves"].items():
            if leaf in got:
                leaves[leaf] = np.asarray(got[leaf])
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
            _check_ecf8(t, name, verify)
            if not to_host:
                t = dataclasses.replace(
                    t, **{n: _device_put(leaves[n], name, n, sharding) for n in ECF8_LEAVES}
                )
            pairs.append((tuple(item["path"]), t))
        else:
            value = leaves[ARRAY_LEAF]
            crc = item["leaves"][ARRAY_LEAF].get("crc32")
            if verify and crc is not None and _crc32(value) != crc:
                raise FormatError(
                    f"{name}: checksum mismatch: stored {crc:#010x}, "
                    f"computed {_crc32(value):#010x} (corrupted array data)"
                )
            if not to_host:
                value = _device_put(value, name, ARRAY_LEAF, sharding)
            pairs.append((tuple(item["path"]), value))
    tree = _unflatten(pairs)
    if template is not None:
        from flax import serialization

        return serialization.from_state_dict(template, _refill(target, tree))
    return tree


def _refill(target: Any, tree: Any) -> Any:
    """``tree`` with the empty containers of ``target`` (e.g. optax's ``EmptyState``) back."""
    if isinstance(target, Mapping) and not isinstance(target, Ecf8Tensor):
        got = tree if isinstance(tree, Mapping) else {}
        return {k: _refill(v, got.get(k, {})) for k, v in target.items()}
    return tree


# ----------------------------------------------------------------------------- manager


def save_model(path: str | os.PathLike, model, **kwargs) -> Path:
    """Saves a whole Flax NNX model's state (ECF8 weights stay compressed) with :func:`save`.

    Args:
      path: the checkpoint folder.
      model: an ``nnx.Module``.
      **kwargs: ``metadata``, ``overwrite`` (see :func:`save`).
    """
    from flax import nnx

    return save(path, nnx.state(model).to_pure_dict(), **kwargs)


def restore_model(path: str | os.PathLike, model, **kwargs):
    """Loads a checkpoint written by :func:`save_model` into ``model``, in place.

    ``model`` gives the expected structure: a checkpoint of another model (a missing or extra
    layer, another shape, dtype or layout, FP8 where ECF8 is expected) is refused with a
    ``FormatError`` naming the item, before anything is changed.

    Args:
      path: the checkpoint folder.
      model: an ``nnx.Module`` of the same structure (its values are replaced).
      **kwargs: ``sharding``, ``verify`` (see :func:`restore`).

    Returns:
      ``model``.
    """
    from flax import nnx

    state = nnx.state(model)
    restored = restore(path, target=state.to_pure_dict(), **kwargs)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


class CheckpointManager:
    """Numbered steps of ECF8 checkpoints in one folder (wraps ``ocp.CheckpointManager``).

    Example::

        with CheckpointManager("/ckpt", max_to_keep=3) as mngr:
            mngr.save(step, {"params": tree})        # async: returns once the copy is taken
            ...
            tree = mngr.restore(mngr.latest_step())  # verified, bit-exact

    Args:
      directory: the folder holding one subfolder per step (created if missing).
      max_to_keep: keep only the newest this many steps (``None``: all).
      async_save: write in a background thread; :meth:`wait_until_finished` (or the next save,
        or :meth:`close`) waits for it.
    """

    def __init__(
        self, directory: str | os.PathLike, *, max_to_keep: int | None = None, async_save=True
    ):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(ARRAYS_ITEM, METADATA_ITEM)
        )

    def save(self, step: int, tree: Any, *, metadata: Mapping | None = None) -> bool:
        """Starts saving ``tree`` as ``step``; returns whether a save was started."""
        return self._manager.save(step, args=_save_args(tree, metadata))

    def wait_until_finished(self) -> None:
        """Blocks until the pending async save (if any) is on disk."""
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        """Finished steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished step, or ``None``."""
        return self._manager.latest_step()

    def step_path(self, step: int) -> Path:
        """The folder of ``step``."""
        return self.directory / str(step)

    def restore(self, step: int | None = None, **kwargs) -> dict:
        """:func:`restore` of ``step`` (default: the latest); same keyword arguments."""
        self.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FormatError(f"{self.directory}: no finished checkpoint")
        if step not in self.all_steps():
            raise FormatError(f"{self.directory}: no finished checkpoint for step {step}")
        return restore(self.step_path(step), **kwargs)

    def metadata(self, step: int | None = None) -> dict:
        """:func:`read_metadata` of ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        return read_metadata(self.step_path(step))

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
