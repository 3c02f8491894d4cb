"""BERT encoder: ECF8 outputs bit-identical to FP8, padding invariance, config parsing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecf8_jax import nn as enn
from ecf8_jax.models.bert import BertConfig, BertModel

TINY = BertConfig(
    vocab_size=200,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
)


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


def test_ecf8_bert_is_bit_identical_to_fp8_under_jit():
    fp8 = BertModel(TINY, nnx.Rngs(0))
    ecf8 = enn.compress_model(BertModel(TINY, nnx.Rngs(0)))
    assert isinstance(ecf8.word_embeddings, enn.Ecf8Embed)
    assert isinstance(ecf8.layers[1].intermediate, enn.Ecf8Linear)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 200, (3, 9)), jnp.int32)
    mask = jnp.ones((3, 9), jnp.int32).at[1, 5:].set(0)
    f = nnx.jit(lambda m, i, k: (m(i, k), m.embed(i, k)))
    for a, b in zip(f(ecf8, ids, mask), f(fp8, ids, mask)):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_compressed_bf16_bert_is_bit_identical_to_bf16_under_jit():
    bf16 = BertModel(TINY, nnx.Rngs(2), bf16=True)
    assert isinstance(bf16.layers[0].query, enn.Bf16Linear)
    ecf8 = enn.compress_model(BertModel(TINY, nnx.Rngs(2), bf16=True))
    assert isinstance(ecf8.word_embeddings, enn.Ecf8Embed)
    assert ecf8.layers[1].intermediate.weight.get_value().dtype == "bfloat16"
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 200, (3, 9)), jnp.int32)
    mask = jnp.ones((3, 9), jnp.int32).at[1, 5:].set(0)
    f = nnx.jit(lambda m, i, k: (m(i, k), m.embed(i, k)))
    for a, b in zip(f(ecf8, ids, mask), f(bf16, ids, mask)):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_right_padding_does_not_change_the_sentence_embedding():
    model = BertModel(TINY, nnx.Rngs(1))
    ids = jnp.array([[5, 6, 7]], jnp.int32)
    alone = model.embed(ids)
    padded = model.embed(jnp.array([[5, 6, 7, 0, 0]]), jnp.array([[1, 1, 1, 0, 0]]))
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=-1), 1.0, rtol=1e-6)


def test_config_from_hf_ignores_unknown_keys_and_rejects_other_activations():
    c = BertConfig.from_hf({"hidden_size": 384, "model_type": "bert", "hidden_act": "gelu"})
    assert c.hidden_size == 384
    with pytest.raises(ValueError, match="gelu"):
        BertConfig.from_hf({"hidden_act": "relu"})
