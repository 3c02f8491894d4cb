"""Stacked layers: stacking, indexing, scanning, and converting a stack to ECF8."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecf8_jax import nn as enn
from ecf8_jax.format import Ecf8Tensor


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


class _Block(nnx.Module):
    def __init__(self, rng, width=64):
        self.up = enn.Fp8Linear.from_float(rng.standard_normal((2 * width, width)))
        self.down = enn.Fp8Linear.from_float(rng.standard_normal((width, 2 * width)))
        self.gain = nnx.Param(jnp.asarray(rng.uniform(0.5, 1.5, width), jnp.float32))

    def __call__(self, x):
        return x + self.gain[...] * self.down(jax.nn.relu(self.up(x)))


def blocks(n=3, seed=0, width=64):
    rng = np.random.default_rng(seed)
    return [_Block(rng, width) for _ in range(n)]


def run(layers, x):
    return enn.scan_layers(layers, lambda layer, h, _: (layer(h), None), x)[0]


def test_scan_over_a_stack_is_bit_identical_to_the_loop_over_its_layers_fp8_and_ecf8():
    x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 64)), jnp.float32)
    listed = blocks()
    stacked = enn.Stacked(blocks())
    assert len(stacked) == 3
    assert stacked.layer.up.weight[...].shape == (3, 128, 64)
    f = nnx.jit(run)
    loop = f(nnx.List(listed), x)
    np.testing.assert_array_equal(bits(f(stacked, x)), bits(loop))
    enn.compress_model(stacked)
    for layer in listed:
        enn.compress_model(layer)
    assert isinstance(stacked[2].down, enn.Ecf8Linear)
    ecf8_loop = f(nnx.List(listed), x)
    np.testing.assert_array_equal(bits(f(stacked, x)), bits(ecf8_loop))
    np.testing.assert_array_equal(bits(ecf8_loop), bits(loop))


def test_indexing_returns_the_original_layer_and_fp8_is_stored_as_bits():
    layers = blocks(seed=1)
    stacked = enn.Stacked(layers)
    assert stacked.layer.up.weight[...].dtype == jnp.uint8  # see Stacked's docstring
    for i in (0, 2, -1):
        got, want = stacked[i], layers[i]
        assert got.up.weight[...].dtype == want.up.weight[...].dtype
        np.testing.assert_array_equal(
            np.asarray(got.up.weight[...]).view(np.uint8),
            np.asarray(want.up.weight[...]).view(np.uint8),
        )
        np.testing.assert_array_equal(got.gain[...], want.gain[...])
    with pytest.raises(IndexError):
        stacked[3]


def test_stacked_ecf8_weights_are_one_tensor_with_padded_streams():
    stacked = enn.compress_model(enn.Stacked(blocks(seed=2)))
    (t,) = [
        x
        for x in jax.tree.leaves(
            nnx.state(stacked.layer.up, enn.Ecf8Weight), is_leaf=lambda x: isinstance(x, Ecf8Tensor)
        )
    ]
    assert t.shape == (128, 64) and t.stream.ndim == 2 and t.stream.shape[0] == 3
    assert not jax.tree.leaves(nnx.state(stacked, enn.Fp8Weight))


def test_layers_that_differ_cannot_be_stacked_and_fall_back_to_a_list_with_a_warning():
    odd = blocks(2, seed=3) + blocks(1, seed=4, width=32)
    with pytest.raises(ValueError, match="layer 2"):
        enn.Stacked(odd)
    with pytest.warns(UserWarning, match="Python loop"):
        layers = enn.stack_or_list(odd)
    assert isinstance(layers, nnx.List)


def test_where_selects_paths_inside_a_stack_and_must_choose_alike():
    stacked = enn.Stacked(blocks(seed=5))
    seen = []
    enn.compress_model(stacked, where=lambda p, m: seen.append(p) or p.endswith("down"))
    assert "0.up" in seen and "2.down" in seen
    assert isinstance(stacked[1].down, enn.Ecf8Linear)
    assert isinstance(stacked[1].up, enn.Fp8Linear)
    with pytest.raises(ValueError, match="where"):
        enn.compress_model(enn.Stacked(blocks(seed=6)), where=lambda p, m: p.startswith("1."))
