"""Tests of the model-side ToM tools on the tiny Llama: hidden states, sampling, RoPE analyses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_cache
from tests.tiny_configs import TINY_LLAMA
from training.tom import lm, rope

HEAD_DIM = TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"]


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(**TINY_LLAMA, head_dim=HEAD_DIM, tie_word_embeddings=True)
    return LlamaForCausalLM(config, nnx.Rngs(0), fp8=False)


def test_forward_head_matches_the_model_logits(model):
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 96, (2, 9)), jnp.int32)
    h, _ = lm.forward(model, tokens)
    want, _ = model(tokens)
    np.testing.assert_allclose(lm.head(model, h), want, rtol=1e-5, atol=1e-5)
    last = jnp.asarray([3, 8])
    np.testing.assert_allclose(
        lm.last_token_logits(model, tokens, last), want[jnp.arange(2), last], rtol=1e-5, atol=1e-5
    )


def test_sampled_hidden_states_match_a_full_forward_of_prompt_and_sample(model):
    prompt = [5, 17, 3, 44, 9]
    toks, hidden = lm.sample(model, prompt, 3, 6, jax.random.key(0), init_cache=init_cache)
    assert toks.shape == (3, 6) and hidden.shape == (3, 6, TINY_LLAMA["hidden_size"])
    full = jnp.asarray(np.concatenate([np.tile(prompt, (3, 1)), toks], 1), jnp.int32)
    h, _ = lm.forward(model, full)
    np.testing.assert_allclose(hidden, h[:, len(prompt) :], rtol=1e-4, atol=1e-4)
    again, _ = lm.sample(model, prompt, 3, 6, jax.random.key(0), init_cache=init_cache)
    np.testing.assert_array_equal(toks, again)  # seeded


def plant_pair(model, layer: int, head: int, pair: int, factor: float):
    """Scales the q and k projection rows of one rotary pair of one head (and its KV head)."""
    att = model.layers.layer.self_attn
    kv_head = head // (att.heads // att.kv_heads)
    for proj, h in ((att.q_proj, head), (att.k_proj, kv_head)):
        w = np.array(proj.weight[...])
        for row in (h * HEAD_DIM + pair, h * HEAD_DIM + pair + HEAD_DIM // 2):
            w[layer, row] *= factor
        proj.weight[...] = jnp.asarray(w)


def test_planted_massive_qk_pair_is_the_dominant_pair(model):
    tokens = jnp.asarray(np.random.default_rng(1).integers(1, 96, (2, 12)), jnp.int32)
    before = rope.analyse(model, tokens)
    planted = nnx.clone(model)
    plant_pair(planted, layer=1, head=2, pair=3, factor=200.0)
    after = rope.analyse(planted, tokens)
    assert after["q_dominant_pair"][1, 2] == 3 and after["k_dominant_pair"][1, 2] == 3
    assert before["q_dominant_pair"][1, 2] != 3 or before["q_pair_norm"][1, 2, 3] < 1
    share = after["q_pair_norm"][1, 2, 3] / after["q_pair_norm"][1, 2].sum()
    assert share > 0.9
    np.testing.assert_array_equal(after["q_dominant_pair"][0], before["q_dominant_pair"][0])


def test_rope_statistics_shapes_and_ranges(model):
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, 96, (2, 10)), jnp.int32)
    s = rope.analyse(model, tokens)
    layers, heads = TINY_LLAMA["num_hidden_layers"], TINY_LLAMA["num_attention_heads"]
    assert s["q_pair_norm"].shape == (layers, heads, HEAD_DIM // 2)
    assert s["first_token_mass"].shape == (layers, heads)
    assert ((s["first_token_mass"] > 0) & (s["first_token_mass"] < 1)).all()
    assert (np.abs(s["qk_cos"]) <= 1).all()
    summary = rope.summary(s)
    assert 0 < summary["q_dominant_share"] <= 1


def test_queries_match_the_attention_layer_computation(model):
    # rotated query-key scores of layer 0 reproduce the layer's attention output
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, 96, (1, 7)), jnp.int32)
    q, k = rope.queries_and_keys(model, tokens)
    layer0 = model.layers[0]
    x = model.embed_tokens(tokens)
    h = layer0.input_layernorm(x)
    want_q = layer0.self_attn.q_proj(h).reshape(q.shape[1:])
    np.testing.assert_allclose(q[0], want_q, rtol=1e-5, atol=1e-6)
    pos = jnp.arange(7)[None]
    from ecf8_jax.models.llama import apply_rope

    np.testing.assert_allclose(
        rope.rotate(q[0], pos, model.inv_freq[...]),
        apply_rope(q[0], pos, model.inv_freq[...]),
        rtol=1e-6,
        atol=1e-6,
    )
