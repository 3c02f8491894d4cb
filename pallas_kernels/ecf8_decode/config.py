"""Block sizes of the ECF8 decode kernels."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters of one decode kernel.

    Attributes:
      num_warps: Triton warps per program (one program decodes one chunk of 128 lanes).
      num_stages: Triton software-pipelining stages.
    """

    num_warps: int = 4
    num_stages: int = 1

    @classmethod
    def get_default(cls, signs_shape: tuple[int, ...], backend: str) -> BlockSizes:
        """Defaults for a decode of ``signs_shape = (chunks, steps // 32, lanes)``.

        Untuned: no GPU was available to measure on (see BENCHMARKS.md).
        """
        del signs_shape, backend
        return cls()
