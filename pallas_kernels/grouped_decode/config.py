"""Launch parameters of the ECF8 version-2 decode kernels."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters of one decode kernel.

    Attributes:
      num_warps: Triton warps per program (a program decodes one chunk of 128 lanes; with one
        warp each thread runs four lanes: 19 SASS instructions per weight against 30 with
        four warps, see docs/kernels.md).
      num_stages: Triton software-pipelining stages.
      chunks_per_program: TPU chunks per program, a multiple of 8 (one chunk per sublane; more
        vregs give the scheduler independent chains to interleave).
      vmem_limit_bytes: TPU scoped VMEM limit (None: Mosaic's default).
    """

    num_warps: int = 1
    num_stages: int = 1
    chunks_per_program: int = 8
    vmem_limit_bytes: int | None = None

    @classmethod
    def get_default(cls, raw_shape: tuple[int, ...], backend: str) -> BlockSizes:
        """Defaults for a decode of ``raw_shape = (chunks, steps // 8, lanes)``.

        Chosen from compiled code (``python -m bench.kernel_cost``), not yet from a device.
        """
        del raw_shape, backend
        return cls()
