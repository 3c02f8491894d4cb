"""The ``Ecf8Tensor`` pytree: the arrays of one encoded tensor and their static metadata.

Invariants of version 2 (``grouped.py``; checked by :func:`validate`), with the same ``n``,
``L``, ``S``, ``C`` as below: ``stream`` uint32[W] code words; ``chunk_offsets`` uint32[C + 1]
word index of each chunk, starting at 0, non-decreasing, at most ``128 * (S / 4 + 2)`` words
per chunk, ending within ``W``; ``signs`` holds the **raw plane**: FP8 uint32[C, S // 8, L]
(nibbles), bfloat16/float16 uint32[C, S // 4, L] (bytes); ``code_lengths`` uint8[C, K], one
codebook per chunk over K = 16 (FP8) or 256 (16-bit) symbols, lengths <= 8, Kraft sum <= 1, at
least one present per chunk; ``checksums`` uint32[C + 1].

Version 1 and layout ``tiles`` carry FP8 only.

Invariants of version 1 (see docs/FORMAT.md for the bit-level layout). With
``n = prod(shape)``, ``L = LANES``, ``S = chunk_steps`` and ``C = ceil(n / (L * S))``:

* ``stream``: uint32[W], the 16-bit code units of all chunks, two per word (high half first).
* ``chunk_offsets``: uint32[C + 1], unit index where each chunk starts; ``chunk_offsets[0] == 0``,
  non-decreasing, ``chunk_offsets[C] <= 2 * W`` and at most ``S * L`` units per chunk.
* ``signs``: uint32[C, S // 32, L], bit ``j`` of word ``(c, w, l)`` is the sign of element
  ``c * S * L + (32 * w + j) * L + l``.
* ``code_lengths``: uint8[128], Huffman code length of each 7-bit magnitude (0 = absent), all
  ``<= MAX_CODE_LEN``, Kraft sum ``<= 1``, at least one present when ``n > 0``.
* ``checksums``: uint32[C + 1], CRC-32 of each chunk's units and sign words, then of the
  header (metadata, code lengths, offsets).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib

import jax
import numpy as np

from ecf8_jax.format import grouped
from ecf8_jax.format.codebook import kraft_sum
from ecf8_jax.format.constants import (
    DTYPES,
    FP8_DTYPES,
    LANES,
    LAYOUTS,
    MAX_CODE_LEN,
    NUM_SYMBOLS,
    SIGN_WORD_BITS,
    SUPPORTED_VERSIONS,
)


class FormatError(ValueError):
    """An ECF8 tensor or checkpoint is malformed, corrupted or of an unsupported version."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["stream", "chunk_offsets", "signs", "code_lengths", "checksums"],
    meta_fields=["shape", "dtype", "chunk_steps", "version", "layout"],
)
@dataclasses.dataclass(frozen=True)
class Ecf8Tensor:
    """One FP8, bfloat16 or float16 tensor, losslessly entropy-coded (format version
    ``version``; 16-bit dtypes are version 2 only).

    Leaves are the arrays (numpy on the host, jax arrays on device, tracers under ``jit``);
    ``shape``, ``dtype`` (a name from ``DTYPES``), ``chunk_steps``, ``version`` and ``layout``
    (one of ``LAYOUTS``) are static.
    Stacking tensors of one shape adds a leading axis to every leaf, which ``jax.vmap`` and
    ``lax.scan`` map over.
    """

    stream: jax.Array  # uint32[W]
    chunk_offsets: jax.Array  # uint32[C + 1]
    signs: jax.Array  # v1: uint32[C, S // 32, L] signs; v2: uint32[C, S // 8 | S // 4, L] raw
    code_lengths: jax.Array  # v1: uint8[NUM_SYMBOLS]; v2: uint8[C, 16 | 256]
    checksums: jax.Array  # uint32[C + 1]
    shape: tuple[int, ...]
    dtype: str
    chunk_steps: int
    version: int
    layout: str = "flat"

    @property
    def size(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)

    @property
    def num_chunks(self) -> int:
        """Independently decodable chunks."""
        return num_chunks(self.size, self.chunk_steps, self.layout, self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (the stored size, excluding the few bytes of static metadata)."""
        return sum(
            math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
            for leaf in jax.tree_util.tree_leaves(self)
        )

    @property
    def bits_per_weight(self) -> float:
        """``8 * nbytes / size``; raw FP8 is 8, raw bfloat16 16."""
        return 8.0 * self.nbytes / max(self.size, 1)

    def metadata(self) -> dict:
        """The static metadata as a JSON-serialisable dict."""
        return {
            "version": self.version,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunk_steps": self.chunk_steps,
            "layout": self.layout,
        }


def num_chunks(
    size: int, chunk_steps: int, layout: str = "flat", shape: tuple[int, ...] = ()
) -> int:
    """Chunks of ``LANES * chunk_steps`` slots needed for ``size`` weights in ``layout``."""
    if layout == "tiles" and len(shape) == 2:
        return -(-shape[0] // chunk_steps) * (shape[1] // LANES)
    return -(-size // (LANES * chunk_steps))


def header_bytes(metadata: dict, code_lengths: np.ndarray, chunk_offsets: np.ndarray) -> bytes:
    """The bytes the header checksum covers."""
    meta = "ecf8 v{version} {dtype} {shape} S={chunk_steps}".format(
        version=metadata["version"],
        dtype=metadata["dtype"],
        shape="x".join(map(str, metadata["shape"])),
        chunk_steps=metadata["chunk_steps"],
    )
    if metadata.get("layout", "flat") != "flat":
        meta += " layout=" + metadata["layout"]
    return (
        meta.encode()
        + np.asarray(code_lengths, dtype=np.uint8).tobytes()
        + np.asarray(chunk_offsets, dtype="<u4").tobytes()
    )


def compute_checksums(
    metadata: dict,
    stream: np.ndarray,
    chunk_offsets: np.ndarray,
    signs: np.ndarray,
    code_lengths: np.ndarray,
) -> np.ndarray:
    """CRC-32 of each chunk, then of the header.

    A chunk's CRC covers, version 1: its 16-bit units (big-endian) and its sign words;
    version 2: its stream words, raw words and code lengths (little-endian).

    Returns:
      uint32[C + 1].
    """
    v2 = metadata["version"] == 2
    stream = np.asarray(stream, dtype=np.uint32)
    units = stream.astype("<u4") if v2 else stream.astype(">u4").view(">u2")
    offsets = np.asarray(chunk_offsets, dtype=np.int64)
    signs = np.asarray(signs, dtype="<u4")
    lengths = np.asarray(code_lengths, dtype=np.uint8)
    out = np.empty(offsets.shape[0], dtype=np.uint32)
    for c in range(offsets.shape[0] - 1):
        crc = zlib.crc32(units[offsets[c] : offsets[c + 1]].tobytes())
        crc = zlib.crc32(signs[c].tobytes(), crc)
        out[c] = zlib.crc32(lengths[c].tobytes(), crc) if v2 else crc
    out[-1] = zlib.crc32(header_bytes(metadata, code_lengths, chunk_offsets))
    return out


def _host(name: str, leaf) -> np.ndarray:
    try:
        return np.asarray(leaf)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise FormatError(
            f"validate needs concrete arrays; {name} is traced (call it outside jit)"
        ) from None


def _expect(name: str, arr: np.ndarray, dtype, shape: tuple[int, ...] | None) -> None:
    if arr.dtype != np.dtype(dtype):
        raise FormatError(f"{name}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and arr.shape != shape:
        raise FormatError(f"{name}: shape {arr.shape}, expected {shape}")


def check_known(t: Ecf8Tensor) -> None:
    """Refuses a version, dtype or layout this build does not know (static metadata only, so
    it also runs under ``jit``: the decoder calls it)."""
    if t.version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"unsupported ECF8 format version {t.version!r} (this build reads {SUPPORTED_VERSIONS})"
        )
    if t.dtype not in DTYPES:
        raise FormatError(f"unknown dtype {t.dtype!r}; expected one of {sorted(DTYPES)}")
    if t.layout not in LAYOUTS:
        raise FormatError(f"unknown layout {t.layout!r}; expected one of {LAYOUTS}")
    if t.dtype not in FP8_DTYPES and (t.version != 2 or t.layout != "flat"):
        raise FormatError(
            f"{t.dtype} is carried by format version 2 with layout 'flat' only, not by version "
            f"{t.version} with layout {t.layout!r}"
        )


def validate(t: Ecf8Tensor) -> Ecf8Tensor:
    """Checks every size and table of ``t`` before any decode.

    Args:
      t: an unbatched ``Ecf8Tensor`` with concrete (host or device) arrays.

    Returns:
      ``t`` unchanged, so calls can be chained.

    Raises:
      FormatError: naming the offending field and its sizes.
    """
    if not isinstance(t, Ecf8Tensor):
        raise FormatError(f"expected an Ecf8Tensor, got {type(t).__name__}")
    check_known(t)
    if not all(isinstance(d, int) and d >= 0 for d in t.shape):
        raise FormatError(f"shape {t.shape!r} must be non-negative integers")
    if t.layout == "tiles" and (len(t.shape) != 2 or t.shape[1] % LANES):
        raise FormatError(
            f"layout 'tiles' needs a 2-D shape whose last dimension is a multiple of {LANES}, "
            f"got {t.shape}"
        )
    s = t.chunk_steps
    if not isinstance(s, int) or s <= 0 or s % SIGN_WORD_BITS:
        raise FormatError(f"chunk_steps {s!r} must be a positive multiple of {SIGN_WORD_BITS}")
    n, c = t.size, t.num_chunks
    stream = _host("stream", t.stream)
    offsets = _host("chunk_offsets", t.chunk_offsets)
    signs = _host("signs", t.signs)
    lengths = _host("code_lengths", t.code_lengths)
    checksums = _host("checksums", t.checksums)
    _expect("stream", stream, np.uint32, None)
    if stream.ndim != 1:
        raise FormatError(f"stream: shape {stream.shape}, expected one axis")
    if t.version == 2:
        _validate_v2(t, stream, offsets, signs, lengths, checksums)
        return t
    _expect("chunk_offsets", offsets, np.uint32, (c + 1,))
    _expect("signs", signs, np.uint32, (c, s // SIGN_WORD_BITS, LANES))
    _expect("code_lengths", lengths, np.uint8, (NUM_SYMBOLS,))
    _expect("checksums", checksums, np.uint32, (c + 1,))
    if lengths.max(initial=0) > MAX_CODE_LEN:
        raise FormatError(f"code_lengths: longest code {lengths.max()} > {MAX_CODE_LEN}")
    if kraft_sum(lengths) > 1 << MAX_CODE_LEN:
        raise FormatError("code_lengths: over-subscribed (Kraft sum > 1), not a prefix code")
    if n > 0 and not lengths.any():
        raise FormatError(f"code_lengths: no symbol present for {n} weights")
    _check_offsets(offsets, s * LANES, 2 * stream.shape[0], "units",
                   f"{stream.shape[0]} words hold {2 * stream.shape[0]} units")  # fmt: skip
    return t


def _check_offsets(offsets, most: int, available: int, unit: str, stream_says: str) -> None:
    """Offsets start at 0, never decrease, give no chunk more than ``most`` and end within the
    ``available`` units of the stream (both versions; ``unit`` names what they count)."""
    off = offsets.astype(np.int64)
    if off[0] != 0:
        raise FormatError(f"chunk_offsets[0] = {off[0]}, expected 0")
    sizes = np.diff(off)
    if (sizes < 0).any():
        bad = int(np.argmax(sizes < 0))
        raise FormatError(f"chunk_offsets decrease at chunk {bad}: {off[bad]} > {off[bad + 1]}")
    if (sizes > most).any():
        bad = int(np.argmax(sizes > most))
        raise FormatError(f"chunk {bad} holds {sizes[bad]} {unit}, more than {most}")
    if off[-1] > available:
        raise FormatError(
            f"stream: {stream_says}, but chunk_offsets end at {unit[:-1]} {off[-1]} (truncated?)"
        )


def _validate_v2(t, stream, offsets, raw, lengths, checksums) -> None:
    n, c, s = t.size, t.num_chunks, t.chunk_steps
    if t.layout != "flat":
        raise FormatError(f"format version 2 has layout 'flat' only, not {t.layout!r}")
    width = grouped.width_of_dtype(t.dtype)
    field = "raw nibbles" if width.bits == 8 else "raw bytes"
    _expect("chunk_offsets", offsets, np.uint32, (c + 1,))
    _expect(f"signs ({field} of {t.dtype})", raw, np.uint32,
            (c, s // width.raws_per_word, LANES))  # fmt: skip
    _expect(f"code_lengths ({t.dtype})", lengths, np.uint8, (c, width.num_symbols))
    _expect("checksums", checksums, np.uint32, (c + 1,))
    if lengths.max(initial=0) > grouped.MAX_CODE_LEN:
        bad = int(np.argmax(lengths.max(axis=1) > grouped.MAX_CODE_LEN))
        raise FormatError(
            f"code_lengths: chunk {bad} has a code of {lengths[bad].max()} bits "
            f"> {grouped.MAX_CODE_LEN}"
        )
    kraft = np.where(lengths > 0, 1 << (grouped.MAX_CODE_LEN - lengths.astype(np.int64)), 0)
    over = kraft.sum(axis=1) > 1 << grouped.MAX_CODE_LEN
    if over.any():
        raise FormatError(
            f"code_lengths: chunk {int(np.argmax(over))} is over-subscribed (Kraft sum > 1), "
            "not a prefix code"
        )
    if n > 0 and not lengths.any(axis=1).all():
        bad = int(np.argmax(~lengths.any(axis=1)))
        raise FormatError(f"code_lengths: chunk {bad} has no symbol present")
    _check_offsets(offsets, grouped.max_chunk_words(s), stream.shape[0], "words",
                   f"{stream.shape[0]} words")  # fmt: skip


def verify_checksums(t: Ecf8Tensor) -> Ecf8Tensor:
    """Validates ``t`` and recomputes its CRC-32s, catching flipped payload or table bits.

    Returns:
      ``t`` unchanged.

    Raises:
      FormatError: naming the first chunk (or the header) whose checksum differs.
    """
    validate(t)
    stored = np.asarray(t.checksums)
    actual = compute_checksums(
        t.metadata(),
        np.asarray(t.stream),
        np.asarray(t.chunk_offsets),
        np.asarray(t.signs),
        np.asarray(t.code_lengths),
    )
    if stored[-1] != actual[-1]:
        raise FormatError(
            f"header checksum mismatch: stored {stored[-1]:#010x}, computed {actual[-1]:#010x}"
        )
    bad = np.flatnonzero(stored[:-1] != actual[:-1])
    if bad.size:
        c = int(bad[0])
        raise FormatError(
            f"chunk {c} checksum mismatch: stored {stored[c]:#010x}, computed {actual[c]:#010x}"
            f" ({bad.size} of {t.num_chunks} chunks differ)"
        )
    return t
