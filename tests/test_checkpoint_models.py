"""Whole NNX models through Orbax: a compressed model restores bit-exactly, or is refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ecf8_jax
from ecf8_jax import checkpoint as ck
from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM
from ecf8_jax.nn import Ecf8Weight, compress_model
from tests.tiny_configs import TINY_LLAMA

CONFIG = dict(TINY_LLAMA, tie_word_embeddings=False)


def _model(seed: int, cast: str = "fp8-row", **overrides) -> LlamaForCausalLM:
    from ecf8_jax.io.hf import llama_from_tensors

    config = LlamaConfig.from_hf({"model_type": "llama", **CONFIG, **overrides})
    rng = np.random.default_rng(seed)
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((v, h)).astype(np.float32)}
    tensors["lm_head.weight"] = rng.standard_normal((v, h)).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(h, np.float32)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for name, shape in [
            ("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)), ("self_attn.o_proj", (h, h)),
            ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)), ("mlp.down_proj", (h, f)),
        ]:  # fmt: skip
            tensors[p + name + ".weight"] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    return compress_model(llama_from_tensors(config, tensors, cast=cast))


def _logits(model) -> np.ndarray:
    tokens = jnp.arange(10, dtype=jnp.int32)[None] % CONFIG["vocab_size"]
    return np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, tokens))


def test_a_compressed_model_restores_bit_exactly_into_another_instance(tmp_path):
    saved = _model(0)
    assert jax.tree_util.tree_leaves(nnx.state(saved, Ecf8Weight))
    ck.save_model(tmp_path / "ckpt", saved)
    other = _model(1)  # same structure, other weights
    assert not np.array_equal(_logits(other), _logits(saved))
    ck.restore_model(tmp_path / "ckpt", other)
    np.testing.assert_array_equal(_logits(other).view(np.uint32), _logits(saved).view(np.uint32))


def test_a_compressed_bf16_model_restores_bit_exactly_and_refuses_an_fp8_one(tmp_path):
    saved = _model(0, cast="bf16")
    tensors = jax.tree_util.tree_leaves(
        nnx.state(saved, Ecf8Weight), is_leaf=lambda x: isinstance(x, ecf8_jax.Ecf8Tensor)
    )
    assert tensors and {t.dtype for t in tensors} == {"bfloat16"}
    ck.save_model(tmp_path / "ckpt", saved)
    meta = ck.read_metadata(tmp_path / "ckpt")
    assert {i["ecf8"]["dtype"] for i in meta["items"] if i["kind"] == "ecf8"} == {"bfloat16"}
    other = _model(1, cast="bf16")
    ck.restore_model(tmp_path / "ckpt", other)
    np.testing.assert_array_equal(_logits(other).view(np.uint32), _logits(saved).view(np.uint32))
    for a, b in zip(
        jax.tree_util.tree_leaves(nnx.state(other, Ecf8Weight)),
        jax.tree_util.tree_leaves(nnx.state(saved, Ecf8Weight)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ecf8_jax.FormatError):
        ck.restore_model(tmp_path / "ckpt", _model(2))  # an FP8 model: another dtype


def test_a_checkpoint_of_another_structure_is_refused_naming_the_item(tmp_path):
    ck.save_model(tmp_path / "ckpt", _model(0))
    wider = _model(1, intermediate_size=2 * CONFIG["intermediate_size"])
    before = _logits(wider)
    with pytest.raises(ecf8_jax.FormatError, match="mlp"):
        ck.restore_model(tmp_path / "ckpt", wider)
    np.testing.assert_array_equal(_logits(wider), before)  # nothing was changed


def test_a_corrupted_ecf8_weight_is_refused(tmp_path):
    model = _model(0)
    state = nnx.state(model).to_pure_dict()
    leaves, treedef = jax.tree_util.tree_flatten(
        state, is_leaf=lambda x: isinstance(x, ecf8_jax.Ecf8Tensor)
    )
    i = next(i for i, x in enumerate(leaves) if isinstance(x, ecf8_jax.Ecf8Tensor))
    stream = np.array(leaves[i].stream)
    stream[0] ^= 1
    leaves[i] = dataclasses.replace(leaves[i], stream=stream)
    ck.save(tmp_path / "ckpt", jax.tree_util.tree_unflatten(treedef, leaves))
    with pytest.raises(ecf8_jax.FormatError, match="checksum"):
        ck.restore_model(tmp_path / "ckpt", _model(1))


def test_training_state_round_trips_as_the_same_pytree(tmp_path):
    import optax

    model = _model(0)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    tree = {"model": nnx.state(model).to_pure_dict(), "opt_state": opt_state, "step": np.int32(7)}
    ck.save(tmp_path / "train", tree)
    back = ck.restore(tmp_path / "train", target=tree)
    assert jax.tree.structure(back["opt_state"]) == jax.tree.structure(opt_state)
    is_t = lambda x: isinstance(x, ecf8_jax.Ecf8Tensor)  # noqa: E731
    for a, b in zip(jax.tree.leaves(back, is_leaf=is_t), jax.tree.leaves(tree, is_leaf=is_t)):
        if is_t(a):
            a, b = np.asarray(a.stream), np.asarray(b.stream)
        a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
