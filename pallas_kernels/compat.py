"""The few places where Pallas or jax differ between the supported releases (0.10.2 - 0.12).

Keep every version-dependent spelling here rather than scattered through the kernels.
"""

from __future__ import annotations

import contextlib

import jax
from jax.experimental.pallas import tpu as pltpu

# Device kinds used to lower kernels from a host without the accelerator.
CUDA_DEVICE_KIND = "NVIDIA H200"
TPU_DEVICE_KIND = "TPU v5 lite"


def abstract_device(platform: str) -> contextlib.AbstractContextManager:
    """A context in which ``jit(f).trace(...).lower(lowering_platforms=...)`` can lower Pallas
    kernels for ``platform`` ("cuda" or "tpu") on a host that has no such device.

    Triton lowering asks the current device for its compute capability and Mosaic for its
    chip generation; an abstract mesh over one abstract device answers both.
    """
    kind, plat = {
        "cuda": (CUDA_DEVICE_KIND, "gpu"),
        "gpu": (CUDA_DEVICE_KIND, "gpu"),
        "tpu": (TPU_DEVICE_KIND, "tpu"),
    }[platform]
    mesh = jax.sharding.AbstractMesh(
        (1,), ("x",), abstract_device=jax.sharding.AbstractDevice(kind, None, plat)
    )
    return jax.sharding.use_abstract_mesh(mesh)


def tpu_interpret_params():
    """What ``pallas_call(interpret=...)`` takes to run a TPU kernel on the CPU."""
    return pltpu.InterpretParams()
