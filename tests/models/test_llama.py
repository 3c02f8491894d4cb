"""Llama-family decoder: ECF8 logits bit-identical to FP8, cache consistency, generation, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecf8_jax import nn as enn
from ecf8_jax.models import LlamaConfig, LlamaForCausalLM, generate, init_cache
from ecf8_jax.models.llama import rope_inv_freq
from tests.tiny_configs import TINY_LLAMA as TINY

VARIANTS = {
    "llama3-untied": dict(
        TINY,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen3-tied": dict(TINY, model_type="qwen3", head_dim=32, tie_word_embeddings=True),
}


def bits(x) -> np.ndarray:
    return np.asarray(x).view(np.uint32)


def tiny_model(name: str, seed: int = 0) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig.from_hf(VARIANTS[name]), nnx.Rngs(seed))


def run_cached(model, tokens, splits):
    """Prefill ``tokens[:, :splits[0]]``, then one jitted cached call per further split."""
    step = nnx.jit(lambda m, t, c: m(t, cache=c))
    cache = init_cache(model.config, tokens.shape[0], tokens.shape[1])
    outs, start = [], 0
    for end in splits:
        logits, cache = step(model, tokens[:, start:end], cache)
        outs.append(logits)
        start = end
    return outs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_ecf8_logits_are_bit_identical_to_fp8_in_prefill_and_cached_decode(name):
    fp8 = tiny_model(name)
    ecf8 = enn.compress_model(tiny_model(name))
    assert not jax.tree.leaves(nnx.state(ecf8, enn.Fp8Weight))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 7)), jnp.int32)
    full = nnx.jit(lambda m, t: m(t)[0])
    np.testing.assert_array_equal(bits(full(ecf8, tokens)), bits(full(fp8, tokens)))
    splits = [4, 5, 6, 7]  # prefill 4 tokens, then three single-token decode steps
    for a, b in zip(run_cached(ecf8, tokens, splits), run_cached(fp8, tokens, splits)):
        np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_compressed_bf16_logits_are_bit_identical_in_prefill_and_cached_decode(name):
    config = LlamaConfig.from_hf(VARIANTS[name])
    bf16 = LlamaForCausalLM(config, nnx.Rngs(4), bf16=True)
    assert isinstance(bf16.layers.layer.mlp.up_proj, enn.Bf16Linear)
    assert isinstance(bf16.embed_tokens, enn.Bf16Embed)
    ecf8 = enn.compress_model(LlamaForCausalLM(config, nnx.Rngs(4), bf16=True))
    assert not jax.tree.leaves(nnx.state(ecf8, enn.Bf16Weight))
    tensors = jax.tree.leaves(
        nnx.state(ecf8, enn.Ecf8Weight), is_leaf=lambda x: hasattr(x, "chunk_steps")
    )
    assert {t.dtype for t in tensors} == {"bfloat16"}
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 96, (2, 7)), jnp.int32)
    full = nnx.jit(lambda m, t: m(t)[0])
    want = full(bf16, tokens)
    assert want.dtype == jnp.float32
    np.testing.assert_array_equal(bits(full(ecf8, tokens)), bits(want))
    splits = [4, 5, 6, 7]
    for a, b in zip(run_cached(ecf8, tokens, splits), run_cached(bf16, tokens, splits)):
        np.testing.assert_array_equal(bits(a), bits(b))
    prompt = tokens[:, :3]
    np.testing.assert_array_equal(generate(ecf8, prompt, 4), generate(bf16, prompt, 4))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_decoding_matches_the_full_forward(name):
    model = tiny_model(name, seed=1)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 96, (2, 6)), jnp.int32)
    full, _ = model(tokens)
    cached = jnp.concatenate(run_cached(model, tokens, [3, 4, 5, 6]), axis=1)
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)


def test_left_padding_does_not_change_a_sequence():
    model = tiny_model("llama3-untied", seed=2)
    seq = jnp.array([[5, 9, 17, 33]], jnp.int32)
    alone, _ = model(seq)
    padded = jnp.array([[0, 0, 5, 9, 17, 33]], jnp.int32)
    mask = jnp.array([[0, 0, 1, 1, 1, 1]], jnp.int32)
    logits, _ = model(padded, attention_mask=mask)
    np.testing.assert_allclose(logits[:, 2:], alone, rtol=1e-5, atol=1e-5)
    gen_alone = generate(model, seq, 3)
    gen_padded = generate(model, padded, 3, attention_mask=mask)
    np.testing.assert_array_equal(gen_padded[:, 2:], gen_alone)


def test_generate_greedy_is_identical_for_ecf8_and_fp8_and_top_p_sampling_works():
    fp8 = tiny_model("qwen3-tied", seed=3)
    ecf8 = enn.compress_model(tiny_model("qwen3-tied", seed=3))
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    greedy = generate(fp8, prompt, 5)
    assert greedy.shape == (2, 8) and greedy.dtype == jnp.int32
    np.testing.assert_array_equal(generate(ecf8, prompt, 5), greedy)
    # top_p so small that only the most likely token survives: sampling reduces to greedy.
    np.testing.assert_array_equal(
        generate(fp8, prompt, 5, key=jax.random.key(0), top_p=1e-6), greedy
    )
    sampled = generate(ecf8, prompt, 5, key=jax.random.key(1), top_p=0.9, temperature=2.0)
    assert sampled.shape == (2, 8) and int(sampled.max()) < 96


CONFIGS = {
    # Shapes from the published config.json files (abridged to what the decoder reads).
    "SmolLM2-135M": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
        rope_theta=100000, tie_word_embeddings=True, max_position_embeddings=8192,
        hidden_act="silu",
    ),
    "Fox-1-1.6B": dict(
        model_type="llama", vocab_size=256000, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=4, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=8192,
        hidden_act="silu",
    ),
    "Llama-3.1-8B": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072, hidden_act="silu",
        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192, rope_type="llama3"),
        eos_token_id=[128001, 128008, 128009],
    ),
    "Qwen3-8B": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1000000, tie_word_embeddings=False, hidden_act="silu",
        attention_bias=False, max_position_embeddings=40960, use_sliding_window=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_published_configs_parse(name):
    c = LlamaConfig.from_hf(CONFIGS[name])
    assert c.head_dim * c.num_attention_heads >= c.hidden_size
    assert c.num_attention_heads % c.num_key_value_heads == 0
    assert c.qk_norm == (name == "Qwen3-8B")
    assert rope_inv_freq(c).shape == (c.head_dim // 2,)
    hash(c)  # usable as a static jit argument
    shapes = nnx.eval_shape(lambda: LlamaForCausalLM(c, nnx.Rngs(0), fp8=False))
    assert shapes.layers[0].self_attn.k_proj.weight.shape == (
        c.num_key_value_heads * c.head_dim,
        c.hidden_size,
    )


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    c = LlamaConfig.from_hf(CONFIGS["Llama-3.1-8B"])
    plain = rope_inv_freq(LlamaConfig.from_hf({**CONFIGS["Llama-3.1-8B"], "rope_scaling": None}))
    scaled = rope_inv_freq(c)
    assert scaled[0] == plain[0]  # shortest wavelength: unchanged
    np.testing.assert_allclose(scaled[-1], plain[-1] / 8, rtol=1e-6)  # longest: divided by factor


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaConfig.from_hf(dict(TINY, hidden_act="gelu"))
    with pytest.raises(ValueError, match="rope scaling"):
        LlamaConfig.from_hf(dict(TINY, rope_scaling=dict(rope_type="yarn", factor=4.0)))


def _forward_memory(model, tokens):
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)[0])
    return fwd.lower(state, tokens).compile().memory_analysis()


def test_ecf8_forward_holds_at_most_one_decoded_layer_more_than_fp8():
    cfg = LlamaConfig.from_hf(
        dict(TINY, hidden_size=256, intermediate_size=512, num_hidden_layers=4, vocab_size=256)
    )
    model = LlamaForCausalLM(cfg, nnx.Rngs(0))
    tokens = jnp.zeros((1, 8), jnp.int32)
    fp8 = _forward_memory(model, tokens)
    layer = sum(x.size for x in jax.tree.leaves(nnx.state(model.layers, enn.Fp8Weight)))
    layer //= cfg.num_hidden_layers  # FP8 bytes of one decoded block
    ecf8 = _forward_memory(enn.compress_model(model), tokens)
    msg = (
        f"temp bytes: fp8 {fp8.temp_size_in_bytes:,}, ecf8 {ecf8.temp_size_in_bytes:,}, one "
        f"decoded layer {layer:,}; argument bytes fp8 {fp8.argument_size_in_bytes:,}, "
        f"ecf8 {ecf8.argument_size_in_bytes:,}"
    )
    assert ecf8.temp_size_in_bytes <= fp8.temp_size_in_bytes + layer, msg
    # Layer by layer, not all at once: less than two blocks dequantized to float32.
    assert fp8.temp_size_in_bytes < 2 * 4 * layer, msg
    assert ecf8.argument_size_in_bytes < 0.9 * fp8.argument_size_in_bytes, msg
