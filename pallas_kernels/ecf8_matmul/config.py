"""Launch parameters of the fused ECF8 version-1 matmul (and of its raw-FP8 twin)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters of ``tiled_matmul_gpu``.

    Attributes:
      block_m: rows of x per program (>= 16 for Triton's dot); None: m rounded up to a power
        of two, between 16 and 64 (each row block of programs decodes the weight anew).
      split_k: programs sharing one output block's row blocks (more parallelism for small m;
        their float32 partial sums are added by XLA in a fixed order); None: every row block
        in parallel when m <= 64, else 1. Clamped to [1, row blocks].
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
    """

    block_m: int | None = None
    split_k: int | None = None
    num_warps: int = 4
    num_stages: int = 1

    @classmethod
    def get_default(cls, m: int, k: int, steps: int) -> BlockSizes:
        """Defaults for ``x`` [m, k] against a weight tiled in ``steps``-row tiles.

        Untuned: no GPU was available to measure on (see BENCHMARKS.md).
        """
        return cls().resolve(m, k, steps)

    def resolve(self, m: int, k: int, steps: int) -> BlockSizes:
        """These sizes with ``block_m`` and ``split_k`` filled in for this problem."""
        row_blocks = -(-k // steps)
        block_m = self.block_m
        if block_m is None:
            block_m = min(max(1 << max(m - 1, 0).bit_length(), 16), 64)
        split_k = self.split_k
        if split_k is None:
            split_k = row_blocks if m <= 64 else 1
        split_k = max(1, min(split_k, row_blocks))
        return dataclasses.replace(self, block_m=block_m, split_k=split_k)
