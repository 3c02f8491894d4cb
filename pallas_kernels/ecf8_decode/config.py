"""Launch parameters of the ECF8 version-1 decode kernels."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters of one decode kernel.

    Attributes:
      num_warps: Triton warps per program (one program decodes one chunk of 128 lanes).
      num_stages: Triton software-pipelining stages.
      vmem_limit_bytes: TPU scoped VMEM limit (None: Mosaic's default). The TPU kernel holds
        the whole stream in VMEM (``api.TPU_MAX_STREAM_BYTES`` bounds it) and decodes 8 chunks
        per program, one per sublane (``pallas_tpu.SUBLANES``: fixed by the vreg, not tunable).
    """

    num_warps: int = 4
    num_stages: int = 1
    vmem_limit_bytes: int | None = None

    @classmethod
    def get_default(cls, signs_shape: tuple[int, ...], backend: str) -> BlockSizes:
        """Defaults for a decode of ``signs_shape = (chunks, steps // 32, lanes)``.

        Untuned: no GPU was available to measure on (see BENCHMARKS.md).
        """
        del signs_shape, backend
        return cls()
