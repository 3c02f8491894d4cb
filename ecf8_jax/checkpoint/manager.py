"""Numbered steps of ECF8 checkpoints in one folder: :class:`CheckpointManager`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ecf8_jax.checkpoint.layout import ARRAYS_ITEM, METADATA_ITEM
from ecf8_jax.checkpoint.store import orbax_module, read_metadata, restore, save_args
from ecf8_jax.format.tensor import FormatError


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
        ocp = orbax_module()
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
        return self._manager.save(step, args=save_args(tree, metadata))

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
