"""Fused version-2 decode + GEMV (Triton) and its raw-FP8 twin; not yet used by the models."""
