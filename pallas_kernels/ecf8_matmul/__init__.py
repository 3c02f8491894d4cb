"""Fused ECF8 decode + matmul, and its raw-FP8 twin (the bit-exact reference)."""

from pallas_kernels.ecf8_matmul.api import ecf8_matmul

__all__ = ["ecf8_matmul"]
