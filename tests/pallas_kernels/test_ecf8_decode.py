"""``pallas_kernels.ecf8_decode``: the plain-jnp reference and the ``implementation=`` dispatch.

The kernels take raw arrays (never format classes); tables come from the lengths through
``canonical_tables``, as in ``ecf8_jax.decode``. One suite, parameterised over every
implementation the dispatcher lists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format.codebook import canonical_tables
from pallas_kernels.ecf8_decode import api
from pallas_kernels.ecf8_decode.reference import ecf8_decode_reference


def encode_v1(x, **kw):
    """This module tests the version-1 kernels; version 2 is test_grouped_decode.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
LANES = 128


def _raw_arrays(t: ecf8_jax.Ecf8Tensor):
    limits, deltas, symbols = canonical_tables(t.code_lengths, np)
    return t.stream, t.chunk_offsets, t.signs, limits, deltas, symbols


def _encoded(n: int, chunk_steps: int, seed: int = 0) -> ecf8_jax.Ecf8Tensor:
    x = (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(E4M3)
    return encode_v1(x, chunk_steps=chunk_steps)


@pytest.mark.parametrize("name", ["no_such_backend", "pallas_typo", ""])
def test_an_unknown_implementation_fails_fast_naming_the_available_ones(name):
    with pytest.raises(ValueError, match="available") as info:
        # Arrays are never touched: the request is refused before any work.
        api.decode(None, None, None, None, None, None, implementation=name)
    for available in api.IMPLEMENTATIONS:
        assert repr(available) in str(info.value)
    assert repr(name) in str(info.value)


def test_ecf8_jax_decode_passes_the_implementation_through():
    t = encode_v1(np.ones(3, E4M3))
    with pytest.raises(ValueError, match="available"):
        ecf8_jax.decode(t, implementation="no_such_backend")


@pytest.mark.parametrize(
    "n, chunk_steps, chunks, steps",
    [
        (3, 32, 1, 32),
        (4097, 32, 2, 32),
        (12000, 32, 3, 32),
        (12000, 1024, 1, 96),
    ],
)
def test_reference_output_has_c_times_s_times_l_bytes(n, chunk_steps, chunks, steps):
    t = _encoded(n, chunk_steps)
    assert (t.num_chunks, t.chunk_steps) == (chunks, steps)
    out = jax.eval_shape(ecf8_decode_reference, *_raw_arrays(t))
    assert out.shape == (chunks * steps * LANES,)
    assert out.dtype == jnp.uint8


def test_reference_with_no_chunks_returns_no_bytes():
    t = encode_v1(np.zeros((0,), E4M3))
    out = ecf8_decode_reference(*_raw_arrays(t))
    assert out.shape == (0,)
    assert out.dtype == jnp.uint8


def test_reference_decodes_the_worked_example_from_raw_arrays():
    stream = np.array([0x80000000, 0x80000000], np.uint32)
    offsets = np.array([0, 3], np.uint32)
    signs = np.zeros((1, 1, LANES), np.uint32)
    signs[0, 0, 1] = 1
    lengths = np.zeros(128, np.uint8)
    lengths[[48, 56]] = 1
    limits, deltas, symbols = canonical_tables(lengths, np)
    out = np.asarray(ecf8_decode_reference(stream, offsets, signs, limits, deltas, symbols))
    assert out.shape == (32 * LANES,)
    np.testing.assert_array_equal(out[:3], [0x38, 0xB0, 0x38])


@pytest.mark.parametrize("implementation", [None, *api.IMPLEMENTATIONS])
def test_every_implementation_matches_the_input_bits(implementation):
    t = _encoded(12000, 32, seed=1)
    x = (np.random.default_rng(1).standard_normal(12000) * 0.1).astype(E4M3)
    interpret = implementation != "xla" and jax.default_backend() == "cpu"
    decode = jax.jit(
        lambda *arrays: api.decode(*arrays, implementation=implementation, interpret=interpret)
    )
    out = np.asarray(decode(*_raw_arrays(t)))
    assert out.shape == (3 * 32 * LANES,)
    np.testing.assert_array_equal(out[: x.size], x.view(np.uint8))


def test_reference_decodes_chunks_independently():
    t = _encoded(12000, 32, seed=2)
    whole = np.asarray(ecf8_decode_reference(*_raw_arrays(t)))
    stream, offsets, signs, limits, deltas, symbols = _raw_arrays(t)
    for c in range(t.num_chunks):  # chunk c alone: its offsets and its sign words
        one = ecf8_decode_reference(
            stream, offsets[c : c + 2], signs[c : c + 1], limits, deltas, symbols
        )
        np.testing.assert_array_equal(np.asarray(one), whole[c * 32 * LANES : (c + 1) * 32 * LANES])
