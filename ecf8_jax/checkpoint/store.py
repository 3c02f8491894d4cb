"""Saving and restoring checkpoints through Orbax: :func:`save`, :func:`restore`, and the NNX
model wrappers :func:`save_model` / :func:`restore_model`.

The layout and its checks live in :mod:`ecf8_jax.checkpoint.layout`; this module does the I/O:
Orbax composite checkpoints, written atomically (:func:`ecf8_jax.atomic.atomic_folder`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ecf8_jax.atomic import atomic_folder
from ecf8_jax.checkpoint.layout import (
    ARRAY_LEAF,
    ARRAYS_ITEM,
    ECF8_LEAVES,
    METADATA_ITEM,
    check_metadata,
    check_stored_arrays,
    check_target,
    expected_arrays,
    item_name,
    item_value,
    prepare,
    unflatten,
)
from ecf8_jax.errors import one_line
from ecf8_jax.format.tensor import Ecf8Tensor, FormatError

Sharding = jax.sharding.Sharding | Callable[[str, str], jax.sharding.Sharding] | None
"""Where restored arrays go: one ``Sharding`` for every array, or ``f(item_name, leaf_name)``
(``leaf_name`` is ``"value"`` for ordinary arrays) returning one, or ``None`` for the default
device."""


def _quiet_absl() -> None:
    """Orbax logs routine warnings through absl; keep them off stderr."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with orbax
        pass


def orbax_module():
    import orbax.checkpoint as ocp

    _quiet_absl()
    return ocp


def _as_dicts(tree: Any) -> Any:
    """Any pytree of containers (tuples, NamedTuples such as optax states, lists, dicts) as
    nested dicts with string keys (``flax.serialization.to_state_dict``); leaves unchanged."""
    from flax import serialization

    return serialization.to_state_dict(tree)


def save_args(tree: Any, user_metadata: Mapping | None):
    ocp = orbax_module()
    arrays, meta = prepare(_as_dicts(tree), user_metadata)
    return ocp.args.Composite(
        **{
            ARRAYS_ITEM: ocp.args.StandardSave(arrays),
            METADATA_ITEM: ocp.args.JsonSave(meta),
        }
    )


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
    ocp = orbax_module()
    args = ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()})
    try:
        meta = _orbax_restore(path, args)[METADATA_ITEM]
    except Exception as e:  # json or Orbax errors: a damaged metadata item
        raise FormatError(f"{path}: unreadable checkpoint metadata ({one_line(e)})") from None
    check_metadata(meta, path)
    return meta


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
    ocp = orbax_module()
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    args = save_args(tree, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(path, overwrite=overwrite) as staging:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        try:
            checkpointer.save(staging, args=args)
        finally:
            checkpointer.close()
    return path


def _stored_array_metadata(path: Path) -> dict:
    """Shapes and dtypes of the arrays Orbax wrote, by key and leaf."""
    ocp = orbax_module()
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
    ocp = orbax_module()
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        return checkpointer.restore(path, args=args)
    finally:
        checkpointer.close()


def _restore_arrays(path: Path, target: dict) -> dict:
    ocp = orbax_module()
    args = ocp.args.Composite(**{ARRAYS_ITEM: ocp.args.StandardRestore(target)})
    return _orbax_restore(path, args)[ARRAYS_ITEM]


def _restore_one(path: Path, key: str, target: dict) -> dict:
    ocp = orbax_module()
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


def _read_arrays(path: Path, items: list[dict], wanted: dict) -> dict:
    """All stored arrays in one Orbax restore; when that fails, finds the item that cannot be
    read and names it."""
    if not wanted:
        return {}
    try:
        return _restore_arrays(path, wanted)
    except Exception as whole:
        for item in items:
            if item["key"] not in wanted:
                continue
            try:
                _restore_one(path, item["key"], wanted)
            except Exception as e:
                raise FormatError(
                    f"{item_name(item['path'])}: unreadable array data ({one_line(e)})"
                ) from None
        raise FormatError(f"{path}: unreadable array data ({one_line(whole)})") from None


def restore(
    path: str | os.PathLike,
    *,
    target: Any = None,
    sharding: Sharding = None,
    to_host: bool = False,
    verify: bool = True,
) -> dict:
    """Reads the checkpoint at ``path`` back, bit-exactly, or refuses it.

    In order: the format metadata; the caller's expected tree against it; Orbax's stored shapes
    and dtypes against it; then the array data, each item validated and checksummed
    (:func:`ecf8_jax.checkpoint.layout.item_value`) and placed on device.

    Args:
      path: a checkpoint folder written by :func:`save` (or a step of a
        :class:`~ecf8_jax.checkpoint.CheckpointManager`).
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
    items = read_metadata(path)["items"]
    template = target
    if target is not None:
        target = _as_dicts(target)
        check_target(items, target, path)
    wanted = expected_arrays(items)
    check_stored_arrays(items, wanted, _stored_array_metadata(path))
    arrays = _read_arrays(path, items, wanted)
    pairs = []
    for item in items:
        value = item_value(item, arrays.get(item["key"], {}), verify)
        if not to_host:
            value = _place(value, item_name(item["path"]), sharding)
        pairs.append((tuple(item["path"]), value))
    tree = unflatten(pairs)
    if template is not None:
        from flax import serialization

        return serialization.from_state_dict(template, _refill(target, tree))
    return tree


def _place(value, name: str, sharding: Sharding):
    """An item's arrays on device (an ``Ecf8Tensor`` leaf by leaf)."""
    if isinstance(value, Ecf8Tensor):
        leaves = {n: _device_put(getattr(value, n), name, n, sharding) for n in ECF8_LEAVES}
        return dataclasses.replace(value, **leaves)
    return _device_put(value, name, ARRAY_LEAF, sharding)


def _refill(target: Any, tree: Any) -> Any:
    """``tree`` with the empty containers of ``target`` (e.g. optax's ``EmptyState``) back."""
    if isinstance(target, Mapping) and not isinstance(target, Ecf8Tensor):
        got = tree if isinstance(tree, Mapping) else {}
        return {k: _refill(v, got.get(k, {})) for k, v in target.items()}
    return tree


def save_model(path: str | os.PathLike, model, **kwargs) -> Path:
    """Saves a whole Flax NNX model's state (ECF8 weights stay compressed) with :func:`save`.

    Args:
      path: the checkpoint folder.
      model: an ``nnx.Module``.
      **kwargs: ``metadata``, ``overwrite`` (see :func:`save`).
    """
    from flax import nnx

    return save(path, nnx.to_pure_dict(nnx.state(model)), **kwargs)


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
    restored = restore(path, target=nnx.to_pure_dict(state), **kwargs)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
