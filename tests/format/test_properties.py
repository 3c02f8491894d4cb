"""Hypothesis property tests: encode -> decode is the identity on bit patterns.

Shapes, dtypes, distributions and injected special values (NaN, inf, ±0, subnormals, ±max)
are drawn at random. To keep compilations few, every tensor has at most two chunks of at most
64 steps, and it is decoded through one jitted function per (dtype, chunks, steps): its stream
is zero-padded to capacity and its shape flattened to the chunk slots (both leave the decoded
slots unchanged). ``jax.eval_shape`` checks the real shape and dtype without compiling.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ecf8_jax


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
LANES = 128
DECODE = jax.jit(ecf8_jax.decode)

DISTRIBUTIONS = ("gaussian", "student_t", "cauchy", "lognormal", "sparse", "uniform_bytes", "few")


def _specials(dtype) -> np.ndarray:
    """Bit patterns of NaN, ±0, the smallest subnormals, ±max (and ±inf for e5m2)."""
    finfo = ml_dtypes.finfo(dtype)
    values = [np.nan, 0.0, -0.0, finfo.smallest_subnormal, -finfo.smallest_subnormal]
    values += [float(finfo.max), -float(finfo.max)]
    if dtype == E5M2:
        values += [np.inf, -np.inf]
    raw = np.array(values, np.float32).astype(dtype).view(np.uint8)
    return np.concatenate([raw, raw | 0x80])  # NaN with the sign bit too


def _sample(rng: np.random.Generator, dist: str, n: int, scale: float, dtype) -> np.ndarray:
    if dist == "uniform_bytes":
        return rng.integers(0, 256, n, dtype=np.uint8)
    if dist == "few":
        return rng.choice(rng.integers(0, 256, 3, dtype=np.uint8), n)
    if dist == "gaussian":
        v = rng.standard_normal(n)
    elif dist == "student_t":
        v = rng.standard_t(rng.choice([1.5, 3.0, 5.0]), n)
    elif dist == "cauchy":
        v = rng.standard_cauchy(n)
    elif dist == "lognormal":
        v = rng.lognormal(0.0, 3.0, n) * rng.choice([-1.0, 1.0], n)
    else:  # sparse: mostly exact zeros
        v = rng.standard_normal(n) * (rng.random(n) < rng.choice([0.01, 0.1, 0.5]))
    finfo = ml_dtypes.finfo(dtype)
    v = np.clip(v * scale, -float(finfo.max), float(finfo.max))  # no overflow warnings
    return v.astype(np.float32).astype(dtype).view(np.uint8)


@st.composite
def fp8_arrays(draw):
    dtype = draw(st.sampled_from([E4M3, E5M2]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=20))
    n = int(np.prod(shape))
    dist = draw(st.sampled_from(DISTRIBUTIONS))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 100.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    inject = draw(st.sampled_from([0.0, 0.001, 0.05]))
    rng = np.random.default_rng(seed)
    raw = _sample(rng, dist, n, scale, dtype)
    mask = rng.random(n) < inject
    raw[mask] = rng.choice(_specials(dtype), int(mask.sum()))
    return raw.reshape(shape).view(dtype)


def _decode_slots(t: ecf8_jax.Ecf8Tensor) -> np.ndarray:
    """Decodes every chunk slot through a compile shared by tensors of the same chunking."""
    slots = t.num_chunks * t.chunk_steps * LANES
    words = slots // 2  # at most S * 128 units per chunk
    stream = np.pad(t.stream, (0, words - t.stream.shape[0]))
    flat = dataclasses.replace(t, stream=stream, shape=(slots,))
    return np.asarray(DECODE(flat)).view(np.uint8)


@settings(max_examples=30, deadline=None)
@given(x=fp8_arrays(), chunk_steps=st.sampled_from([32, 64]))
def test_encode_then_decode_is_the_identity_on_bit_patterns(x, chunk_steps):
    t = encode_v1(x, chunk_steps=chunk_steps)
    ecf8_jax.validate(t)
    assert t.shape == x.shape
    assert t.num_chunks <= 2
    out = jax.eval_shape(ecf8_jax.decode, t)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    if x.size == 0:
        decoded = np.asarray(ecf8_jax.decode(t))
    else:
        decoded = _decode_slots(t)[: x.size].view(x.dtype).reshape(x.shape)
    np.testing.assert_array_equal(decoded.view(np.uint8), x.view(np.uint8))


@settings(max_examples=30, deadline=None)
@given(x=fp8_arrays(), chunk_steps=st.sampled_from([32, 64, 1024]))
def test_encoding_is_valid_with_complete_code_and_matching_checksums(x, chunk_steps):
    t = encode_v1(x, chunk_steps=chunk_steps)
    ecf8_jax.verify_checksums(t)
    lengths = t.code_lengths.astype(np.int64)
    present = np.unique(x.view(np.uint8) & 0x7F)
    np.testing.assert_array_equal(np.flatnonzero(lengths), present)
    assert lengths.max(initial=0) <= 16
    kraft = sum(2.0 ** -lengths[present])
    assert kraft == (0 if present.size == 0 else 0.5 if present.size == 1 else 1.0)
    # Units two to a word; an odd count is padded with one zero unit.
    units = int(t.chunk_offsets[-1])
    assert t.stream.shape == (-(-units // 2),)
    if units % 2:
        assert int(t.stream[-1]) & 0xFFFF == 0
    assert t.nbytes == sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(t))
    # The sign plane holds exactly the sign bits.
    signs = np.unpackbits(t.signs.view(np.uint8), bitorder="little").reshape(
        t.num_chunks, t.chunk_steps // 32, LANES, 32
    )
    slots = signs.transpose(0, 1, 3, 2).reshape(-1)  # chunk, step, lane
    np.testing.assert_array_equal(slots[: x.size], x.reshape(-1).view(np.uint8) >> 7)
    assert not slots[x.size :].any()
