"""``ecf8_jax.decode`` under ``jax.jit``, ``jax.vmap`` and ``lax.scan``, without retracing.

Stream lengths differ from tensor to tensor, so same-shape tensors are made to share array
shapes with ``ecf8_jax.stack`` (which zero-pads the streams); slicing one stack gives
tensors (or smaller stacks) whose leaves all have equal shapes.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
from jax import lax

import ecf8_jax


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
SHAPE = (48, 96)  # 4608 weights: two chunks of 32 steps


def _weights(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    scales = [1e-3, 0.02, 1.0, 30.0, 0.5, 2.0][:count]
    return [(rng.standard_t(4, SHAPE) * s).astype(E4M3) for s in scales]


def _stacked(xs: list[np.ndarray]) -> ecf8_jax.Ecf8Tensor:
    tensors = [encode_v1(x, chunk_steps=32) for x in xs]
    assert len({t.stream.shape for t in tensors}) > 1, "streams should differ in length"
    return ecf8_jax.stack(tensors)


def _take(t: ecf8_jax.Ecf8Tensor, index) -> ecf8_jax.Ecf8Tensor:
    return jax.tree_util.tree_map(lambda leaf: leaf[index], t)


def _assert_bits_equal(actual, expected) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


def test_stack_adds_a_leading_axis_and_pads_streams_to_the_longest():
    xs = _weights(3)
    tensors = [encode_v1(x, chunk_steps=32) for x in xs]
    s = ecf8_jax.stack(tensors)
    width = max(t.stream.shape[0] for t in tensors)
    assert s.stream.shape == (3, width)
    assert s.chunk_offsets.shape == (3, 3)
    assert s.signs.shape == (3, 2, 1, 128)
    assert s.code_lengths.shape == (3, 128)
    assert s.checksums.shape == (3, 3)
    assert s.metadata() == tensors[0].metadata()
    for i, t in enumerate(tensors):
        np.testing.assert_array_equal(s.stream[i, : t.stream.shape[0]], t.stream)
        assert not s.stream[i, t.stream.shape[0] :].any()


def test_stack_rejects_no_tensors_and_mixed_metadata():
    with pytest.raises(ecf8_jax.FormatError, match="at least one"):
        ecf8_jax.stack([])
    a = encode_v1(np.zeros(SHAPE, E4M3), chunk_steps=32)
    b = encode_v1(np.zeros(SHAPE[::-1], E4M3), chunk_steps=32)
    with pytest.raises(ecf8_jax.FormatError, match="tensor 1"):
        ecf8_jax.stack([a, b])


def test_jitted_decode_does_not_retrace_for_new_data_of_the_same_shapes():
    xs = _weights(2)
    stacked = _stacked(xs)
    traces = []

    @jax.jit
    def decode(t):
        traces.append(None)  # Python side effect: runs once per trace
        return ecf8_jax.decode(t)

    for i, x in enumerate(xs):
        _assert_bits_equal(decode(_take(stacked, i)), x)
    assert len(traces) == 1


def test_vmap_decode_of_a_stack_is_bit_exact_and_does_not_retrace():
    xs = _weights(4)
    stacked = _stacked(xs)
    traces = []

    @jax.jit
    def decode_all(t):
        traces.append(None)
        return jax.vmap(ecf8_jax.decode)(t)

    for half in (slice(0, 2), slice(2, 4)):
        out = decode_all(_take(stacked, half))
        _assert_bits_equal(out, np.stack(xs[half]))
    assert len(traces) == 1


def test_scan_decode_over_a_stack_is_bit_exact_and_does_not_retrace():
    xs = _weights(6)
    stacked = _stacked(xs)
    traces = []

    @jax.jit
    def decode_layers(t):
        traces.append(None)

        def body(layers_seen, layer):
            return layers_seen + 1, ecf8_jax.decode(layer)

        return lax.scan(body, np.int32(0), t)

    for part in (slice(0, 3), slice(3, 6)):
        layers_seen, out = decode_layers(_take(stacked, part))
        assert int(layers_seen) == 3
        _assert_bits_equal(out, np.stack(xs[part]))
    assert len(traces) == 1


def test_decode_of_device_arrays_matches_decode_of_host_arrays():
    (x,) = _weights(1)
    t = encode_v1(x, chunk_steps=32)
    on_device = jax.device_put(t)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(on_device))
    _assert_bits_equal(jax.jit(ecf8_jax.decode)(on_device), x)
