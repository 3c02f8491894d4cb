"""ECF8 chunk decoding: a plain-jnp reference and its Pallas backends."""

from pallas_kernels.ecf8_decode.api import decode

__all__ = ["decode"]
