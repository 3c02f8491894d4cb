"""Dispatch for ECF8 decoding: picks a backend by name or by the current platform."""

from __future__ import annotations

import jax

from pallas_kernels.ecf8_decode.reference import ecf8_decode_reference

IMPLEMENTATIONS = ("xla",)


def decode(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    signs: jax.Array,
    limits: jax.Array,
    deltas: jax.Array,
    symbols: jax.Array,
    *,
    implementation: str | None = None,
) -> jax.Array:
    """Decodes ECF8 chunks to uint8[C * S * L]; see ``reference.ecf8_decode_reference``.

    Args:
      stream, chunk_offsets, signs, limits, deltas, symbols: the raw arrays.
      implementation: ``None`` (best available) or one of ``IMPLEMENTATIONS``.

    Raises:
      ValueError: an unknown or unavailable implementation was asked for explicitly.
    """
    if implementation not in (None, *IMPLEMENTATIONS):
        raise ValueError(
            f"unknown ECF8 decode implementation {implementation!r}; available: {IMPLEMENTATIONS}"
        )
    return ecf8_decode_reference(stream, chunk_offsets, signs, limits, deltas, symbols)
