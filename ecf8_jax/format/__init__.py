"""The ECF8 format: constants, codebooks, the ``Ecf8Tensor`` pytree, validation, the encoder.

Nothing here imports the kernels; decoding lives in :mod:`ecf8_jax.codec`.
"""

from ecf8_jax.format.constants import FORMAT_VERSION
from ecf8_jax.format.encoder import encode
from ecf8_jax.format.tensor import Ecf8Tensor, FormatError, validate, verify_checksums

__all__ = ["FORMAT_VERSION", "Ecf8Tensor", "FormatError", "encode", "validate", "verify_checksums"]
