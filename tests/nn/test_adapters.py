"""Adapters over a frozen ECF8 base: only they train; the base stays bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from flax import nnx

import ecf8_jax
import training
from ecf8_jax.nn import Ecf8Linear, Ecf8Weight
from ecf8_jax.nn.adapters import LoRA, SparseDelta, merge_delta
from ecf8_jax.quantize import quantize_fp8

OUT, IN = 32, 64


def _base(seed=0) -> Ecf8Linear:
    w = np.random.default_rng(seed).standard_normal((OUT, IN)).astype(np.float32) * 0.1
    q, scale = quantize_fp8(w, granularity="row")
    return Ecf8Linear(ecf8_jax.encode(q), scale)


def _base_bits(model) -> list[np.ndarray]:
    state = nnx.state(model, Ecf8Weight)
    return [np.asarray(x).copy() for x in jax.tree_util.tree_leaves(state)]


def test_untrained_lora_changes_nothing_and_only_the_adapter_gets_gradients():
    base = _base()
    lora = LoRA(base, rank=4, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, IN)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(lora(x)), np.asarray(base(x)))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(lora)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(grads)}
    assert names == {"a", "b"}


def test_mezo_trains_a_sparse_delta_while_the_ecf8_base_stays_bit_identical():
    rng = np.random.default_rng(2)
    model = SparseDelta(_base(), rng.random((OUT, IN)) < 0.05)
    mask = np.zeros((OUT, IN), bool)
    mask[np.asarray(model.rows[...]), np.asarray(model.cols[...])] = True
    target = SparseDelta(_base(), mask)
    target.values[...] = jnp.asarray(rng.standard_normal(int(mask.sum())) * 0.5, jnp.float32)
    x = jnp.asarray(rng.standard_normal((256, IN)), jnp.float32)
    y = target(x)
    before = _base_bits(model)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((nnx.merge(graphdef, p, rest)(xb) - yb) ** 2)

    step = training.mezo_step(loss_fn, optax.sgd(0.05), eps=1e-3)
    opt_state = optax.sgd(0.05).init(params)
    first = float(loss_fn(params, (x, y)))
    root = jax.random.key(0)
    for t in range(300):
        params, opt_state, _ = step(params, opt_state, (x, y), training.step_key(root, t))
    assert float(loss_fn(params, (x, y))) < 0.5 * first
    nnx.update(model, params)
    for a, b in zip(before, _base_bits(model), strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_merge_delta_re_encodes_the_trained_weight():
    rng = np.random.default_rng(3)
    layer = SparseDelta(_base(), rng.random((OUT, IN)) < 0.1)
    layer.values[...] = jnp.asarray(rng.standard_normal(layer.values[...].shape) * 0.05)
    merged = merge_delta(layer)
    assert isinstance(merged, Ecf8Linear)
    ecf8_jax.verify_checksums(merged.weight.get_value())
    x = jnp.asarray(rng.standard_normal((8, IN)), jnp.float32)
    want, got = np.asarray(layer(x)), np.asarray(merged(x))
    np.testing.assert_allclose(got, want, rtol=0.1, atol=0.05)  # requantized to FP8: lossy
    raw = merge_delta(layer, encode=False)
    np.testing.assert_array_equal(
        np.asarray(raw.raw_weight()).view(np.uint8),
        np.asarray(merged.raw_weight()).view(np.uint8),
    )
    assert raw.raw_weight().dtype == ml_dtypes.float8_e4m3fn
