"""Adapters over a frozen ECF8 base: only they train; the base stays bit-identical."""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

import ecf8_jax
import training
from ecf8_jax import nn as enn
from ecf8_jax.models import LlamaConfig, LlamaForCausalLM
from ecf8_jax.nn import Ecf8Linear, Ecf8Weight
from ecf8_jax.nn.adapters import LoRA, SparseDelta, merge_delta, merge_lora
from ecf8_jax.quantize import quantize_fp8
from tests.tiny_configs import TINY_LLAMA as TINY

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


def test_merge_lora_requantizes_the_updated_weight_per_row():
    rng = np.random.default_rng(6)
    layer = LoRA(_base(), rank=4, alpha=2.0, rngs=nnx.Rngs(0))
    layer.b[...] = jnp.asarray(rng.standard_normal((4, OUT)) * 0.05, jnp.float32)
    merged = merge_lora(layer)
    assert isinstance(merged, Ecf8Linear)
    base = layer.base
    want = np.asarray(base.raw_weight(), np.float32) * np.asarray(base.scale[...])
    want += (np.asarray(layer.a[...]) @ np.asarray(layer.b[...])).T * 0.5
    scale = np.asarray(merged.scale[...])
    np.testing.assert_allclose(scale[:, 0], np.abs(want).max(axis=1) / 448, rtol=1e-6)
    got = np.asarray(merged.raw_weight(), np.float32) * scale
    # Round to nearest in E4M3: half an ulp (2**-4 relative), or half a subnormal step.
    assert np.all(np.abs(got - want) <= 2.0**-4 * np.abs(want) + 2.0**-10 * scale)
    x = jnp.asarray(rng.standard_normal((8, IN)), jnp.float32)
    np.testing.assert_allclose(np.asarray(merged(x)), np.asarray(layer(x)), rtol=0.1, atol=0.05)


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


# ------------------------------------------------------------------ whole models (tiny Llama)

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 7)), jnp.int32)
QV = lambda p, m: p.endswith(("q_proj", "v_proj"))  # noqa: E731
MLP = lambda p, m: ".mlp." in p  # noqa: E731
logits_of = nnx.jit(lambda m, t: m(t)[0])


def _tiny(seed=0) -> LlamaForCausalLM:
    return enn.compress_model(LlamaForCausalLM(LlamaConfig.from_hf(TINY), nnx.Rngs(seed)))


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _frozen(model) -> dict[str, np.ndarray]:
    """Every leaf of the FP8/ECF8 base (weights, ECF8 streams and tables, scales) by path, the
    adapters' ``base`` hop dropped from the path so a wrapped layer keys like the bare one."""
    state = nnx.state(model, nnx.Any(Ecf8Weight, enn.Fp8Weight, enn.Fp8Scale))
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        keys = [jax.tree_util.keystr((k,)) for k in path]
        out["".join(k for k in keys if k not in ("['base']", ".base"))] = np.asarray(leaf).copy()
    return out


def _modules(model, cls) -> set[str]:
    return {".".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, cls)}


def test_add_lora_wraps_exactly_the_selected_layers_in_the_stack_and_outside_it():
    model = _tiny()
    before = _frozen(model)
    where = lambda p, m: QV(p, m) or p == "lm_head"  # noqa: E731
    assert enn.add_lora(model, where=where, rank=4, alpha=8.0, rngs=nnx.Rngs(1)) is model
    assert _modules(model, LoRA) == {
        "layers.layer.self_attn.q_proj",
        "layers.layer.self_attn.v_proj",
        "lm_head",
    }
    # Everything else is still a bare ECF8 layer, and nothing was re-encoded.
    assert _modules(model, Ecf8Linear) == {
        "layers.layer.self_attn.q_proj.base",
        "layers.layer.self_attn.v_proj.base",
        "lm_head.base",
        *(f"layers.layer.self_attn.{n}" for n in ("k_proj", "o_proj")),
        *(f"layers.layer.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")),
    }
    after = _frozen(model)
    assert after.keys() == before.keys() and len(before) > 7 * 3 + 2  # streams, tables, scales
    for k in before:
        assert _same_bits(after[k], before[k]), k
    # Adapter parameters carry the stack's layer axis, one random draw per layer.
    lora = model.layers.layer.self_attn.v_proj
    assert lora.a.shape == (2, 64, 4) and lora.b.shape == (2, 4, 32)
    assert lora.scaling == 2.0
    assert not np.array_equal(np.asarray(lora.a[0]), np.asarray(lora.a[1]))
    assert not np.asarray(lora.b[...]).any()
    assert model.lm_head.a.shape == (64, 4)
    assert model.layers.fp8_leaves == ()  # ECF8 stacks hold no FP8 arrays


def test_untrained_adapters_leave_the_logits_bit_identical_under_jit():
    model = _tiny()
    want = np.asarray(logits_of(model, TOKENS))
    enn.add_lora(model, where=QV, rank=4, rngs=nnx.Rngs(0))
    # A global magnitude ranking gives every layer a different count: the stacked deltas are
    # padded to the largest with inert entries.
    masks = training.magnitude_mask(enn.linear_weights(model, MLP), 0.02)
    counts = {k: int(np.sum(v)) for k, v in masks.items()}
    assert len(set(counts.values())) > 1
    enn.add_sparse_delta(model, masks)
    down = model.layers.layer.mlp.down_proj
    assert isinstance(down, SparseDelta)
    size = max(counts["layers.0.mlp.down_proj"], counts["layers.1.mlp.down_proj"])
    assert down.values.shape == down.rows.shape == (2, size)
    for i in range(2):
        np.testing.assert_array_equal(
            model.layers[i].mlp.down_proj.mask(), np.asarray(masks[f"layers.{i}.mlp.down_proj"])
        )
    got = np.asarray(logits_of(model, TOKENS))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _set_adapters(model, seed, std=0.05):
    """Random non-zero values for every adapter parameter (a stand-in for training)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, enn.AdapterParam)
    state = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape) * std, jnp.float32), state
    )
    nnx.update(model, state)


def test_padding_entries_of_a_stacked_delta_are_inert():
    model = _tiny()
    masks = training.random_mask(jax.random.key(0), enn.linear_weights(model, MLP), 0.05)
    enn.add_sparse_delta(model, masks)
    _set_adapters(model, 1)
    for i in range(2):
        layer = model.layers[i].mlp.gate_proj
        dense = np.zeros((96, 64), np.float32)
        live = np.asarray(layer.rows[...]) < 96
        assert int(live.sum()) == int(np.sum(masks[f"layers.{i}.mlp.gate_proj"]))
        rows, cols = np.asarray(layer.rows[...])[live], np.asarray(layer.cols[...])[live]
        dense[rows, cols] = np.asarray(layer.values[...])[live]
        np.testing.assert_array_equal(np.asarray(layer.delta()), dense)


def test_mezo_trains_the_adapters_while_the_ecf8_base_stays_bit_identical():
    model = _tiny()
    enn.add_lora(model, where=QV, rank=2, rngs=nnx.Rngs(0))
    enn.add_sparse_delta(model, 0.01, where=MLP)
    assert model.layers.layer.mlp.up_proj.values.shape == (2, round(0.01 * 96 * 64))
    frozen = _frozen(model)
    rows = np.asarray(model.layers.layer.mlp.up_proj.rows[...]).copy()
    adapters = jax.tree.map(np.array, nnx.state(model, enn.AdapterParam))

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 96, (4, 9)), jnp.int32)

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p, rest)(batch[:, :-1])[0]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))

    tx = optax.sgd(1e-2)
    step = training.mezo_step(loss_fn, tx, eps=1e-3)
    opt_state = tx.init(params)
    for t in range(3):
        params, opt_state, loss = step(
            params, opt_state, tokens, training.step_key(jax.random.key(1), t)
        )
        assert np.isfinite(float(loss))
    nnx.update(model, params)

    trained = nnx.state(model, enn.AdapterParam)
    for (path, old), new in zip(
        jax.tree_util.tree_leaves_with_path(adapters), jax.tree.leaves(trained), strict=True
    ):
        assert not np.array_equal(old, np.asarray(new)), path
    after = _frozen(model)
    assert after.keys() == frozen.keys()
    for k in frozen:
        assert _same_bits(after[k], frozen[k]), k
    np.testing.assert_array_equal(np.asarray(model.layers.layer.mlp.up_proj.rows[...]), rows)


LINEARS = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
    f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
]


def _decoded(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``path -> (FP8 weight, scale)`` of every linear layer, stacked layers unstacked."""
    layers = {"lm_head": model.lm_head}
    for i in range(TINY["num_hidden_layers"]):
        block = model.layers[i]
        layers.update({f"{i}.{n}": operator.attrgetter(n)(block) for n in LINEARS})
    assert all(isinstance(m, Ecf8Linear | enn.Fp8Linear) for m in layers.values())
    return {k: (np.asarray(m.raw_weight()), np.asarray(m.scale[...])) for k, m in layers.items()}


def _copy(model):
    return nnx.merge(*nnx.split(model))


def test_merging_untrained_adapters_gives_back_the_same_fp8_bytes():
    model = _tiny()
    want = _decoded(model)
    logits = np.asarray(logits_of(model, TOKENS))
    enn.add_lora(model, where=QV, rank=4, rngs=nnx.Rngs(0))
    enn.add_sparse_delta(model, 0.02, where=MLP, by="random")
    enn.merge_adapters(model)
    assert not _modules(model, LoRA) and not _modules(model, SparseDelta)
    assert not jax.tree.leaves(nnx.state(model, enn.AdapterParam))
    got = _decoded(model)
    assert got.keys() == want.keys()
    # Per-row requantization of a per-row FP8 weight is idempotent: same bytes, same scales.
    for k, (w, s) in want.items():
        assert _same_bits(got[k][0].view(np.uint8), w.view(np.uint8)), k
        assert _same_bits(got[k][1], s), k
    np.testing.assert_array_equal(
        np.asarray(logits_of(model, TOKENS)).view(np.uint32), logits.view(np.uint32)
    )


def test_merge_adapters_folds_trained_adapters_into_re_encoded_fp8_layers():
    model = _tiny()
    base = np.asarray(logits_of(model, TOKENS))
    enn.add_lora(model, where=QV, rank=4, alpha=4.0, rngs=nnx.Rngs(0))
    enn.add_lora(model, where=lambda p, m: p == "lm_head", rank=2, rngs=nnx.Rngs(1))
    enn.add_sparse_delta(model, 0.05, where=MLP)
    _set_adapters(model, 2)
    want = np.asarray(logits_of(model, TOKENS))
    raw = enn.merge_adapters(_copy(model), encode=False)
    enn.merge_adapters(model)

    assert not _modules(model, LoRA) and not _modules(model, SparseDelta)
    assert isinstance(model.lm_head, Ecf8Linear)
    assert isinstance(model.layers.layer.self_attn.q_proj, Ecf8Linear)
    for i in range(2):
        ecf8_jax.verify_checksums(model.layers[i].mlp.up_proj.weight.get_value())
    got = np.asarray(logits_of(model, TOKENS))
    # The merge keeps what the adapters changed, up to per-row FP8 rounding of the weights.
    change, err = np.abs(want - base).max(), np.abs(got - want).max()
    assert err < 0.2 * change, (err, change)
    # encode=False: raw FP8 layers (stored as uint8 in the stack), same bytes, same logits.
    assert isinstance(raw.layers.layer.self_attn.q_proj, enn.Fp8Linear)
    assert raw.layers.fp8_leaves and all(n == "float8_e4m3fn" for _, n in raw.layers.fp8_leaves)
    for k, (w, s) in _decoded(model).items():
        rw, rs = _decoded(raw)[k]
        assert _same_bits(rw.view(np.uint8), w.view(np.uint8)) and _same_bits(rs, s), k
    np.testing.assert_array_equal(
        np.asarray(logits_of(raw, TOKENS)).view(np.uint32), got.view(np.uint32)
    )


class _Seq(nnx.Module):
    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        return enn.scan_layers(self.layers, lambda layer, h, _: (layer(h), None), x)[0]


def test_sparse_deltas_on_a_list_and_on_a_stack_of_raw_fp8_layers_agree():
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((32, 32)).astype(np.float32) * 0.2 for _ in range(3)]
    listed = _Seq(nnx.List([enn.Fp8Linear.from_float(w) for w in ws]))
    stacked = _Seq(enn.Stacked([enn.Fp8Linear.from_float(w) for w in ws]))
    fp8 = [np.asarray(layer.weight[...]) for layer in listed.layers]
    masks = [rng.random((32, 32)) < d for d in (0.05, 0.1, 0.02)]  # different counts
    by_path = lambda p, layer: masks[int(p.split(".")[-1])]  # noqa: E731
    for m in (listed, stacked):
        enn.add_sparse_delta(m, by_path)
    stack = stacked.layers
    nnz = [int(k.sum()) for k in masks]
    assert stack.layer.values.shape == (3, max(nnz))
    # The raw FP8 bases are stored as uint8 in the stack and come back as the same FP8 bytes.
    assert [n for _, n in stack.fp8_leaves] == ["float8_e4m3fn"]
    for i in range(3):
        assert _same_bits(
            np.asarray(stack[i].base.weight[...]).view(np.uint8), fp8[i].view(np.uint8)
        )
    # Same trained values in both; the stack's padding entries get garbage, which must not count.
    values = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in nnz]
    padded = rng.standard_normal((3, max(nnz))).astype(np.float32) * 100
    for i, v in enumerate(values):
        listed.layers[i].values[...] = jnp.asarray(v)
        padded[i, : nnz[i]] = v
    stack.layer.values[...] = jnp.asarray(padded)
    x = jnp.asarray(rng.standard_normal((5, 32)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(nnx.jit(lambda m, x: m(x))(stacked, x)),
        np.asarray(listed(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    for m in (listed, stacked):
        enn.merge_adapters(m, encode=False)
    assert [n for _, n in stacked.layers.fp8_leaves] == ["float8_e4m3fn"]
    for i in range(3):
        a, b = listed.layers[i], stacked.layers[i]
        assert isinstance(a, enn.Fp8Linear) and isinstance(b, enn.Fp8Linear)
        assert _same_bits(
            np.asarray(a.weight[...]).view(np.uint8), np.asarray(b.weight[...]).view(np.uint8)
        )
        assert _same_bits(a.scale[...], b.scale[...])


def test_a_where_that_selects_nothing_or_unevenly_in_a_stack_is_an_error():
    model = _tiny()
    with pytest.raises(
        ValueError,
        match=r"selected no FP8/BF16/ECF8 linear layer.*15 candidates are: layers.0.mlp.down_proj",
    ):
        enn.add_lora(model, where=lambda p, m: "nope" in p, rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="selected no"):
        enn.add_sparse_delta(model, 0.1, where=lambda p, m: p == "embed_tokens")  # not a linear
    enn.add_lora(model, where=QV, rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="selected no"):  # already adapted: not a candidate
        enn.add_lora(model, where=QV, rank=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stack 'layers' differ"):
        enn.add_lora(
            model, where=lambda p, m: p == "layers.0.self_attn.k_proj", rank=2, rngs=nnx.Rngs(0)
        )
    assert _modules(model, LoRA) == {
        "layers.layer.self_attn.q_proj",
        "layers.layer.self_attn.v_proj",
    }
    with pytest.raises(KeyError, match="lm_head"):
        enn.add_sparse_delta(model, {}, where=lambda p, m: p == "lm_head")
    with pytest.raises(ValueError, match="density"):
        enn.add_sparse_delta(model, 0.0, where=MLP)


# ------------------------------------------------------------------ a BF16 base


def _tiny_bf16(seed=0) -> LlamaForCausalLM:
    config = LlamaConfig.from_hf(TINY)
    return enn.compress_model(LlamaForCausalLM(config, nnx.Rngs(seed), bf16=True))


def test_mezo_trains_adapters_over_a_bf16_base_that_stays_bit_identical_and_merges_to_bf16():
    model = _tiny_bf16()
    assert model.layers.layer.self_attn.q_proj.weight.get_value().dtype == "bfloat16"
    base_logits = np.asarray(logits_of(model, TOKENS))
    enn.add_lora(model, where=QV, rank=2, rngs=nnx.Rngs(0))
    enn.add_sparse_delta(model, 0.01, where=MLP)
    untrained = np.asarray(logits_of(model, TOKENS))
    np.testing.assert_array_equal(untrained.view(np.uint32), base_logits.view(np.uint32))
    frozen = _frozen(model)
    assert len(frozen) > 7 * 5  # every ECF8 leaf of every linear layer and the table

    graphdef, params, rest = nnx.split(model, enn.AdapterParam, ...)

    def loss_fn(p, batch):
        logits = nnx.merge(graphdef, p, rest)(batch[:, :-1])[0]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1))

    tx = optax.sgd(1e-2)
    step = training.mezo_step(loss_fn, tx, eps=1e-3)
    opt_state = tx.init(params)
    for t in range(3):
        params, opt_state, _ = step(
            params, opt_state, TOKENS, training.step_key(jax.random.key(1), t)
        )
    nnx.update(model, params)
    after = _frozen(model)
    assert after.keys() == frozen.keys()
    for k in frozen:
        assert _same_bits(after[k], frozen[k]), k

    q = model.layers[0].self_attn.q_proj
    want = (np.asarray(q.base.raw_weight(), np.float32) + np.asarray(q.delta())).astype(
        ml_dtypes.bfloat16
    )
    enn.merge_adapters(model)
    merged = model.layers[0].self_attn.q_proj
    assert isinstance(merged, Ecf8Linear) and merged.scale is None
    assert merged.weight.get_value().dtype == "bfloat16"
    # A BF16 base merges by rounding base + delta to bf16 once (no per-row FP8 scales).
    assert _same_bits(np.asarray(merged.raw_weight()).view(np.uint16), want.view(np.uint16))


def test_merging_untrained_adapters_gives_back_the_same_bf16_bytes():
    model = _tiny_bf16(seed=1)
    q = model.layers[1].self_attn.q_proj.raw_weight()
    logits = np.asarray(logits_of(model, TOKENS))
    enn.add_lora(model, where=QV, rank=4, rngs=nnx.Rngs(0))
    enn.merge_adapters(model, encode=False)
    raw = model.layers[1].self_attn.q_proj
    assert isinstance(raw, enn.Bf16Linear)
    assert _same_bits(np.asarray(raw.weight[...]).view(np.uint16), np.asarray(q).view(np.uint16))
    np.testing.assert_array_equal(
        np.asarray(logits_of(model, TOKENS)).view(np.uint32), logits.view(np.uint32)
    )
