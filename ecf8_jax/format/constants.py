"""Bit layouts and fixed parameters of the ECF8 format, version 1 (see docs/FORMAT.md).

Every constant here is part of format version 1: changing one changes the bytes on disk, so it
must come with a version bump. Version 2's own constants live in ``grouped.py``; the dtypes,
lanes and layouts below are shared.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FORMAT_VERSION = 2
"""The version the encoder writes by default for the ``flat`` layout (``tiles``, which the
fused matmul reads, is still written as version 1)."""

SUPPORTED_VERSIONS = (1, 2)
"""Versions this build decodes; any other is refused with ``FormatError``."""

# float8_e4m3fn: s eeee mmm   (no infinities; s 1111 111 is NaN)
# float8_e5m2:   s eeeee mm   (IEEE-like: e = 11111 holds inf and NaN)
SIGN_SHIFT = 7
SIGN_MASK = 0x80  # s ....... : stored raw, one bit per weight, in the sign plane
MAGNITUDE_MASK = 0x7F  # . eeeemmm / . eeeeemm : entropy-coded together as one symbol
NUM_SYMBOLS = 128  # every 7-bit magnitude; also exactly one 128-lane vector row

# bfloat16:      s eeeeeeee mmmmmmm  (version 2 only: symbol bits 14..7 = the exponent)
# float16:       s eeeee mmmmmmmmmm  (version 2 only: symbol = exponent + top 3 mantissa bits)
FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")
"""The dtypes both versions carry; version 1 (and layout ``tiles``) carries only these."""

WIDE_DTYPES = ("bfloat16", "float16")
"""16-bit dtypes, carried by format version 2 (``grouped.WIDE``) only."""

DTYPES: dict[str, np.dtype] = {
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
EXPONENT_BITS = {"float8_e4m3fn": 4, "float8_e5m2": 5, "bfloat16": 8, "float16": 5}
MANTISSA_BITS = {"float8_e4m3fn": 3, "float8_e5m2": 2, "bfloat16": 7, "float16": 10}

LANES = 128
"""Decoders that share one stream per chunk. 128 fills a TPU vreg row and a Triton block."""

SIGN_WORD_BITS = 32
"""Sign bits are packed per lane, 32 consecutive steps to a uint32 word."""

UNIT_BITS = 16
"""A lane refills its bit buffer 16 bits at a time; the stream is a sequence of such units,
stored two to a uint32 word (the first unit in the high half)."""

MAX_CODE_LEN = 16
"""Longest Huffman code. A uint32 bit buffer refilled when it holds fewer than 16 bits always
holds a whole code, so the decoder needs no 64-bit arithmetic (Mosaic TPU has none)."""

DEFAULT_CHUNK_STEPS = 1024
"""Symbols each lane decodes per chunk (a chunk is LANES * chunk_steps weights). Chosen by
measurement: see docs/FORMAT.md, "Choosing the chunk size"."""

LAYOUTS = ("flat", "tiles")
"""How weights map to chunk slots. ``flat``: the row-major flattened tensor, chunk after chunk.
``tiles`` (2-D tensors whose last dimension is a multiple of 128): chunk ``(rb, cb)`` is the
tile ``x[rb*S : rb*S+S, cb*128 : cb*128+128]``, step = row, lane = column, chunks in row-block
major order, so a fused matmul decodes whole [rows, 128] weight tiles."""
