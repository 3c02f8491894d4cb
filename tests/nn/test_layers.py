"""Layers on FP8 weights: numerics of the three scale layouts, and ECF8 twins that are bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import ecf8_jax
from ecf8_jax import nn as enn
from ecf8_jax.format import Ecf8Tensor

FP8 = ml_dtypes.float8_e4m3fn


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


def fp8_weight(rng, shape):
    return (rng.standard_normal(shape) * 8).astype(FP8)


def scales(rng, kind, shape):
    out, inp = shape
    if kind == "tensor":
        return np.float32(0.01)
    if kind == "channel":
        return rng.uniform(0.001, 0.02, (out, 1)).astype(np.float32)
    return rng.uniform(0.001, 0.02, (-(-out // 128), -(-inp // 128))).astype(np.float32)


def dense_scale(kind, scale, shape):
    if kind != "block":
        return np.broadcast_to(scale, shape)
    return np.repeat(np.repeat(scale, 128, 0), 128, 1)[: shape[0], : shape[1]]


@pytest.mark.parametrize("kind", ["tensor", "channel", "block"])
def test_fp8_linear_matches_numpy_dequantized_matmul(kind):
    rng = np.random.default_rng(0)
    shape = (300, 200)  # not multiples of 128: partial edge blocks
    w, s = fp8_weight(rng, shape), scales(rng, kind, shape)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((2, 5, shape[1])).astype(np.float32)
    layer = enn.Fp8Linear(w, s, bias)
    assert (layer.block_size is not None) == (kind == "block")
    wd = w.astype(np.float64) * dense_scale(kind, s, shape)
    np.testing.assert_allclose(layer(x), x @ wd.T + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tensor", "channel", "block"])
def test_ecf8_linear_is_bit_identical_to_fp8_linear_under_jit(kind):
    rng = np.random.default_rng(1)
    shape = (260, 130)
    fp8 = enn.Fp8Linear(fp8_weight(rng, shape), scales(rng, kind, shape), np.ones(260))
    ecf8 = enn.compress_layer(fp8)
    assert isinstance(ecf8, enn.Ecf8Linear) and ecf8.block_size == fp8.block_size
    x = rng.standard_normal((3, shape[1])).astype(np.float32)
    f = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(bits(f(ecf8, x)), bits(f(fp8, x)))


def test_bf16_compute_dtype_is_bit_identical_too():
    rng = np.random.default_rng(2)
    fp8 = enn.Fp8Linear(
        fp8_weight(rng, (64, 96)), scales(rng, "channel", (64, 96)), dtype=jnp.bfloat16
    )
    ecf8 = enn.compress_layer(fp8)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    f = jax.jit(lambda m, x: m(x))
    y = f(fp8, x)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(bits(f(ecf8, x)), bits(y))


def test_embed_lookup_and_tied_attend_are_bit_identical():
    rng = np.random.default_rng(3)
    fp8 = enn.Fp8Embed.from_float(rng.standard_normal((500, 64)))
    ecf8 = enn.compress_layer(fp8)
    ids = jnp.array([[0, 7, 499], [3, 3, 42]])
    f = nnx.jit(lambda m, ids: (m(ids), m.attend(m(ids))))
    for a, b in zip(f(fp8, ids), f(ecf8, ids)):
        np.testing.assert_array_equal(bits(a), bits(b))
    table = np.asarray(fp8.table[...]).astype(np.float32) * np.asarray(fp8.scale[...])
    np.testing.assert_array_equal(np.asarray(fp8(ids)), table[np.asarray(ids)])


class _Tiny(nnx.Module):
    def __init__(self, rng):
        self.embed = enn.Fp8Embed.from_float(rng.standard_normal((50, 32)))
        self.blocks = nnx.List(
            [enn.Fp8Linear.from_float(rng.standard_normal((32, 32))) for _ in range(2)]
        )
        self.norm_w = nnx.Param(jnp.ones(32))
        self.head = self.embed  # tied: one module at two paths

    def __call__(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = jax.nn.relu(b(h)) * self.norm_w[...]
        return self.head.attend(h)


def test_compress_model_converts_in_place_and_keeps_ties():
    rng = np.random.default_rng(4)
    model = _Tiny(rng)
    ids = jnp.arange(6).reshape(2, 3)
    f = nnx.jit(lambda m, ids: m(ids))
    before = f(model, ids)
    assert enn.compress_model(model) is model
    assert isinstance(model.blocks[0], enn.Ecf8Linear)
    assert isinstance(model.embed, enn.Ecf8Embed) and model.head is model.embed
    np.testing.assert_array_equal(bits(f(model, ids)), bits(before))


def test_compress_model_where_selects_layers():
    model = _Tiny(np.random.default_rng(5))
    enn.compress_model(model, where=lambda path, m: path.startswith("blocks.1"))
    assert isinstance(model.blocks[0], enn.Fp8Linear)
    assert isinstance(model.blocks[1], enn.Ecf8Linear)
    assert isinstance(model.embed, enn.Fp8Embed)


def test_compressed_weights_are_not_params():
    model = enn.compress_model(_Tiny(np.random.default_rng(6)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert [p.shape for p in params] == [(32,)]  # only the float norm weight
    ecf8 = nnx.state(model, enn.Ecf8Weight)
    tensors = jax.tree.leaves(ecf8, is_leaf=lambda x: isinstance(x, Ecf8Tensor))
    assert len(tensors) == 3 and all(isinstance(t, Ecf8Tensor) for t in tensors)
    assert not jax.tree.leaves(nnx.state(model, enn.Fp8Weight))


def test_jitted_forward_takes_compressed_arrays_and_decodes_inside():
    model = enn.compress_model(_Tiny(np.random.default_rng(7)))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    ids = jnp.zeros((1, 4), jnp.int32)
    args = jax.tree.leaves(state)
    assert not any(jnp.dtype(a.dtype).itemsize == 1 and "float8" in str(a.dtype) for a in args)
    assert {str(a.dtype) for a in args} >= {"uint32", "uint8", "float32"}
    fwd(state, ids)
    fwd(state, ids)
    assert fwd._cache_size() == 1  # second call does not retrace


def test_bad_block_scale_is_rejected():
    w = np.zeros((300, 200), FP8)
    with pytest.raises(ValueError, match="expected \\(3, 2\\)"):
        enn.Fp8Linear(w, np.ones((2, 2), np.float32))


def _multi_chunk_embed(vocab=500, dim=72):
    """A table of 9 chunks of 4096 weights whose rows straddle chunk boundaries (4096 % 72)."""
    rng = np.random.default_rng(5)
    fp8 = enn.Fp8Embed.from_float(rng.standard_normal((vocab, dim)))
    ecf8 = enn.compress_layer(fp8, chunk_steps=32)
    assert ecf8.table.get_value().signs.shape[0] == 9
    return fp8, ecf8


@pytest.mark.parametrize(
    "ids",
    [
        [[56, 0], [499, 113]],  # 4 rows x 2 chunks < 9 chunks: only those chunks decode
        [list(range(0, 500, 25)), [56, 57, 113, 455, 499] * 4],  # 40 rows: block by block
    ],
)
def test_compressed_lookup_decodes_rows_bit_identically_on_both_paths(ids, monkeypatch):
    monkeypatch.setattr(enn.layers, "EMBED_BLOCK_WEIGHTS", 72 * 64)  # 8 blocks, last overlaps
    fp8, ecf8 = _multi_chunk_embed()
    ids = jnp.array(ids)
    f = nnx.jit(lambda m, ids: m(ids))
    want = np.asarray(fp8.table[...]).view(np.uint8)[np.asarray(ids)]
    got = ecf8.lookup_rows(ids.reshape(-1)).reshape(want.shape)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint8), want)
    np.testing.assert_array_equal(bits(f(fp8, ids)), bits(f(ecf8, ids)))


def test_blocked_tied_head_is_bit_identical_and_matches_the_dense_product(monkeypatch):
    monkeypatch.setattr(enn.layers, "EMBED_BLOCK_WEIGHTS", 72 * 64)  # 64 rows: 8 blocks
    fp8, ecf8 = _multi_chunk_embed()
    assert fp8.rows_per_block() == 64
    x = np.random.default_rng(6).standard_normal((2, 3, 72)).astype(np.float32)
    f = nnx.jit(lambda m, x: m.attend(x))
    got = f(fp8, x)
    assert got.shape == (2, 3, 500)
    np.testing.assert_array_equal(bits(got), bits(f(ecf8, x)))
    table = np.asarray(fp8.table[...]).astype(np.float64) * np.asarray(fp8.scale[...])
    np.testing.assert_allclose(np.asarray(got), x @ table.T, rtol=1e-5, atol=1e-5)


def test_short_lookup_decodes_far_less_than_the_table():
    rng = np.random.default_rng(7)
    fp8 = enn.Fp8Embed.from_float(rng.standard_normal((8192, 256)))  # 2 Mi weights, 16 chunks
    ecf8 = enn.compress_layer(fp8)
    ids = jnp.array([[5, 8000]])

    def temp_bytes(m):
        graphdef, state = nnx.split(m)
        fn = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
        return fn.lower(state, ids).compile().memory_analysis().temp_size_in_bytes

    table_bytes = 8192 * 256
    assert temp_bytes(ecf8) < table_bytes // 2  # 4 chunks of 16 and their decoder state
    whole = jax.jit(lambda t: ecf8_jax.decode(t)).lower(ecf8.table.get_value()).compile()
    assert whole.memory_analysis().temp_size_in_bytes >= table_bytes  # what it used to cost


def test_compress_model_is_exported_at_the_top_level():
    assert ecf8_jax.compress_model is enn.compress_model
    with pytest.raises(AttributeError, match="no_such_thing"):
        ecf8_jax.no_such_thing  # noqa: B018


# ----------------------------------------------------------------------------- BF16 / FP16

BF16 = ml_dtypes.bfloat16
SIXTEEN = {"bfloat16": BF16, "float16": np.float16}


def bits16(x) -> np.ndarray:
    return np.asarray(x).view(np.uint16)


def wide_weight(rng, shape, dtype=BF16):
    """Normal weights with the awkward values mixed in: ±0 and subnormals of ``dtype``."""
    w = (rng.standard_normal(shape) * 0.05).astype(dtype)
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    flat = w.reshape(-1)
    flat[:4] = np.array([0.0, -0.0, tiny, -3 * tiny], np.float32).astype(dtype)
    return w


@pytest.mark.parametrize("dtype", sorted(SIXTEEN))
def test_bf16_linear_multiplies_16_bit_inputs_and_accumulates_in_float32(dtype):
    rng = np.random.default_rng(10)
    w = wide_weight(rng, (70, 130), SIXTEEN[dtype])
    bias = rng.standard_normal(70).astype(np.float32)
    x = rng.standard_normal((3, 130)).astype(np.float32)
    layer = enn.Bf16Linear(w, bias)
    assert layer.dtype == SIXTEEN[dtype] and layer.scale is None
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    assert y.dtype == jnp.float32
    want = jax.lax.dot_general(
        jnp.asarray(x).astype(SIXTEEN[dtype]), jnp.asarray(w), (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    ) + bias  # fmt: skip
    np.testing.assert_array_equal(bits(y), bits(want))
    exact = x.astype(SIXTEEN[dtype]).astype(np.float64) @ w.astype(np.float64).T + bias
    np.testing.assert_allclose(np.asarray(y), exact, rtol=1e-5, atol=1e-5)  # f32 accumulation


@pytest.mark.parametrize("dtype", sorted(SIXTEEN))
def test_ecf8_linear_on_16_bit_weights_is_bit_identical_to_bf16_linear(dtype):
    rng = np.random.default_rng(11)
    raw = enn.Bf16Linear(wide_weight(rng, (260, 130), SIXTEEN[dtype]), np.ones(260))
    ecf8 = enn.compress_layer(raw)
    assert isinstance(ecf8, enn.Ecf8Linear) and ecf8.scale is None
    assert ecf8.weight.get_value().dtype == dtype and ecf8.dtype == raw.dtype
    np.testing.assert_array_equal(bits16(ecf8.raw_weight()), bits16(raw.weight[...]))
    f = nnx.jit(lambda m, x: m(x))
    for m in (1, 3):  # one row (a decode step) and several
        x = rng.standard_normal((m, 130)).astype(np.float32)
        np.testing.assert_array_equal(bits(f(ecf8, x)), bits(f(raw, x)))


def test_every_bf16_bit_pattern_survives_a_compressed_table():
    """All 65,536 patterns (NaNs with payloads, ±inf, ±0, subnormals) as a [512, 128] table."""
    table = np.arange(1 << 16, dtype=np.uint16).view(BF16).reshape(512, 128)
    ecf8 = enn.compress_layer(enn.Bf16Embed(table), chunk_steps=32)
    np.testing.assert_array_equal(bits16(ecf8.raw_table()), bits16(table))
    ids = jnp.array([0, 255, 256, 511, 383])
    rows = ecf8.lookup_rows(ids)
    np.testing.assert_array_equal(bits16(rows), bits16(table[np.asarray(ids)]))


def _multi_chunk_bf16_embed(vocab=500, dim=72):
    rng = np.random.default_rng(12)
    raw = enn.Bf16Embed.from_float(rng.standard_normal((vocab, dim)).astype(np.float32))
    ecf8 = enn.compress_layer(raw, chunk_steps=32)
    assert ecf8.table.get_value().signs.shape[0] == 9
    return raw, ecf8


@pytest.mark.parametrize(
    "ids",
    [[[56, 0], [499, 113]], [list(range(0, 500, 25)), [56, 57, 113, 455, 499] * 4]],
)
def test_bf16_lookup_and_blocked_tied_head_are_bit_identical(ids, monkeypatch):
    monkeypatch.setattr(enn.layers, "EMBED_BLOCK_WEIGHTS", 72 * 64)
    raw, ecf8 = _multi_chunk_bf16_embed()
    ids = jnp.array(ids)
    f = nnx.jit(lambda m, ids: (m(ids), m.attend(m(ids))))
    (rows, logits), (rows2, logits2) = f(raw, ids), f(ecf8, ids)
    assert rows.dtype == jnp.float32 and logits.dtype == jnp.float32
    np.testing.assert_array_equal(bits(rows2), bits(rows))
    np.testing.assert_array_equal(bits(logits2), bits(logits))
    table = np.asarray(raw.table[...])
    np.testing.assert_array_equal(bits(rows), bits(table[np.asarray(ids)].astype(np.float32)))


class _TinyBf16(nnx.Module):
    def __init__(self, rng):
        self.embed = enn.Bf16Embed.from_float(rng.standard_normal((50, 32)))
        self.blocks = nnx.List(
            [enn.Bf16Linear.from_float(rng.standard_normal((32, 32)) * 0.2) for _ in range(2)]
        )
        self.norm_w = nnx.Param(jnp.ones(32))
        self.head = self.embed

    def __call__(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = jax.nn.relu(b(h)) * self.norm_w[...]
        return self.head.attend(h)


def test_compress_model_converts_bf16_layers_keeps_ties_and_nothing_becomes_trainable():
    model = _TinyBf16(np.random.default_rng(13))
    ids = jnp.arange(6).reshape(2, 3)
    f = nnx.jit(lambda m, ids: m(ids))
    before = f(model, ids)
    assert [p.shape for p in jax.tree.leaves(nnx.state(model, nnx.Param))] == [(32,)]
    enn.compress_model(model)
    assert isinstance(model.blocks[0], enn.Ecf8Linear)
    assert isinstance(model.embed, enn.Ecf8Embed) and model.head is model.embed
    assert [p.shape for p in jax.tree.leaves(nnx.state(model, nnx.Param))] == [(32,)]
    assert not jax.tree.leaves(nnx.state(model, enn.Bf16Weight))
    tensors = jax.tree.leaves(
        nnx.state(model, enn.Ecf8Weight), is_leaf=lambda x: isinstance(x, Ecf8Tensor)
    )
    assert [t.dtype for t in tensors] == ["bfloat16"] * 3
    np.testing.assert_array_equal(bits(f(model, ids)), bits(before))


def test_float_layers_are_not_compressed_and_scales_must_match_the_dtype():
    model = nnx.List([enn.Linear(jnp.ones((4, 4), jnp.bfloat16))])
    enn.compress_model(model)
    assert isinstance(model[0], enn.Linear)  # a trainable layer stays trainable
    with pytest.raises(ValueError, match="bfloat16/float16"):
        enn.Bf16Linear(np.zeros((4, 4), FP8))
    t = ecf8_jax.encode(np.zeros((4, 128), BF16))
    with pytest.raises(ValueError, match="takes no scale"):
        enn.Ecf8Linear(t, np.float32(1.0))
    with pytest.raises(ValueError, match="needs its scale"):
        enn.Ecf8Linear(ecf8_jax.encode(np.zeros((4, 128), FP8)), None)
