"""Orbax checkpoints of ``Ecf8Tensor``s and ordinary arrays, verified on restore.

Three modules: :mod:`~ecf8_jax.checkpoint.layout` (the item layout below and every check on
it, no I/O), :mod:`~ecf8_jax.checkpoint.store` (``save`` / ``restore`` through Orbax, and the
NNX model wrappers) and :mod:`~ecf8_jax.checkpoint.manager` (numbered steps).

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

Only nested dicts with string keys are supported as trees (what ``nnx.to_pure_dict(state)``
and safetensors give); leaves are ``Ecf8Tensor``s (also stacked ones) or array-likes.
"""

from ecf8_jax.checkpoint.layout import (
    ARRAY_LEAF,
    ARRAYS_ITEM,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    ECF8_LEAVES,
    METADATA_ITEM,
    SUPPORTED_CHECKPOINT_VERSIONS,
    dtype_from_name,
    item_name,
)
from ecf8_jax.checkpoint.manager import CheckpointManager
from ecf8_jax.checkpoint.store import (
    Sharding,
    read_metadata,
    restore,
    restore_model,
    save,
    save_model,
)

__all__ = [
    "ARRAYS_ITEM",
    "ARRAY_LEAF",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ECF8_LEAVES",
    "METADATA_ITEM",
    "SUPPORTED_CHECKPOINT_VERSIONS",
    "CheckpointManager",
    "Sharding",
    "dtype_from_name",
    "item_name",
    "read_metadata",
    "restore",
    "restore_model",
    "save",
    "save_model",
]
