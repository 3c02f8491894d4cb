"""Pallas kernels for ECF8 (they import only jax; they take raw arrays, never format classes)."""
