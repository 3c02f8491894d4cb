"""A Llama-family decoder in Flax NNX on FP8 / BF16 / ECF8 weights (Llama 2/3, SmolLM2, Fox-1, Qwen3).

Architecture (as Hugging Face ``LlamaForCausalLM`` / ``Qwen3ForCausalLM``): token embedding;
``num_hidden_layers`` pre-norm blocks of RMSNorm → attention (rotary position embedding of the
half-split ("rotate_half") kind, grouped KV heads, optional per-head RMSNorm of q and k for Qwen3,
optional q/k/v bias) → residual → RMSNorm → SwiGLU MLP → residual; final RMSNorm; output head
tied to the embedding or separate. Activations are float32; every projection goes through
:func:`ecf8_jax.nn.fp8_linear`, so a model whose layers were converted with
:func:`ecf8_jax.nn.compress_model` gives bit-identical logits.

Layers: the blocks are a :class:`~ecf8_jax.nn.Stacked` (variables with a leading layer axis) and
run under ``lax.scan``: the block is compiled once and, in an ECF8 model, one block's weights are
decoded per scan step, so a forward pass holds one decoded block at a time.

KV cache: :func:`init_cache` allocates fixed-size buffers stacked over layers;
``model(tokens, cache=c)`` writes the new keys/values at ``c.index`` and returns the updated
cache, so a jitted step has static shapes. Padding is given by ``attention_mask`` (left padding for batched prompts); rotary
positions count only the valid tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecf8_jax.models.common import RMSNorm, attention, make_embed, make_linear
from ecf8_jax.nn.stack import Stacked, scan_layers


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder; :meth:`from_hf` reads a ``config.json`` dict.

    ``rope_scaling`` is stored as a tuple of ``(key, value)`` pairs so the config stays hashable.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    @classmethod
    def from_hf(cls, cfg: dict) -> LlamaConfig:
        """From a Hugging Face ``config.json`` of model type llama, qwen2, qwen3 or mistral.

        Raises:
          ValueError: an unsupported ``model_type`` or ``hidden_act``, or sliding-window attention.
        """
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "qwen3", "mistral"):
            raise ValueError(f"unsupported model_type {model_type!r}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r}: only silu (SwiGLU) is supported")
        if cfg.get("use_sliding_window") or (model_type == "mistral" and cfg.get("sliding_window")):
            raise ValueError("sliding-window attention is not supported")
        heads = cfg["num_attention_heads"]
        scaling = cfg.get("rope_scaling")
        rope_params = cfg.get("rope_parameters") or {}  # transformers >= 5 puts theta here
        theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        if scaling is None and rope_params.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if scaling is not None:
            scaling = dict(scaling)
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ValueError(f"rope scaling {kind!r} is not supported")
            scaling = None if kind == "default" else tuple(sorted(scaling.items()))
        eos = cfg.get("eos_token_id")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            mlp_bias=cfg.get("mlp_bias", False),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies ``[head_dim // 2]`` (float32), with linear or llama3 scaling."""
    dim = config.head_dim
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (1.0 / (np.float32(config.rope_theta) ** exps)).astype(np.float32)
    if config.rope_scaling is None:
        return inv
    s = dict(config.rope_scaling)
    kind = s.get("rope_type", s.get("type"))
    factor = float(s["factor"])
    if kind == "linear":
        return (inv / np.float32(factor)).astype(np.float32)
    # llama3 (Llama 3.1): keep high frequencies, divide low ones by `factor`, blend in between.
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, out).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates ``x`` ``[batch, seq, heads, head_dim]`` by ``positions`` ``[batch, seq]`` (rotate_half)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, head_dim // 2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class KVCache(NamedTuple):
    """Fixed-size key/value buffers of every layer.

    Attributes:
      k, v: float32 ``[layers, batch, max_len, kv_heads, head_dim]``.
      valid: bool ``[batch, max_len]``, True at slots that hold a real (not padding) token.
      index: int32 scalar, the next slot to write.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array


def init_cache(config: LlamaConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache for ``batch`` sequences of up to ``max_len`` tokens."""
    c = config
    shape = (c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim)
    zeros = jnp.zeros(shape, jnp.float32)
    return KVCache(zeros, zeros, jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Grouped-query attention with rotary embeddings and optional q/k RMSNorm (Qwen3)."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        c = config
        d, h, kvh = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
        kw = dict(bias=c.attention_bias, fp8=fp8, bf16=bf16)
        self.q_proj = make_linear(d, h * c.head_dim, rngs, **kw)
        self.k_proj = make_linear(d, kvh * c.head_dim, rngs, **kw)
        self.v_proj = make_linear(d, kvh * c.head_dim, rngs, **kw)
        self.o_proj = make_linear(h * c.head_dim, d, rngs, bias=False, fp8=fp8, bf16=bf16)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.heads, self.kv_heads, self.head_dim = h, kvh, c.head_dim

    def __call__(self, x, positions, inv_freq, mask, kv=None, index=None):
        """``x`` ``[batch, seq, hidden]``; ``kv`` the layer's cached ``(k, v)`` or None.

        Returns:
          ``(out [batch, seq, hidden], (k, v))``: the new cache buffers (or this call's keys and
          values when there is no cache).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if kv is not None:
            zero = jnp.zeros((), jnp.int32)
            k = jax.lax.dynamic_update_slice(kv[0], k, (zero, index, zero, zero))
            v = jax.lax.dynamic_update_slice(kv[1], v, (zero, index, zero, zero))
        out = attention(q, k, v, mask, self.head_dim**-0.5)
        return self.o_proj(out.reshape(b, t, -1)), (k, v)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        d, f = config.hidden_size, config.intermediate_size
        kw = dict(bias=config.mlp_bias, fp8=fp8, bf16=bf16)
        self.gate_proj = make_linear(d, f, rngs, **kw)
        self.up_proj = make_linear(d, f, rngs, **kw)
        self.down_proj = make_linear(f, d, rngs, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, rngs, fp8=fp8, bf16=bf16)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, rngs, fp8=fp8, bf16=bf16)

    def __call__(self, x, positions, inv_freq, mask, kv=None, index=None):
        h, kv = self.self_attn(self.input_layernorm(x), positions, inv_freq, mask, kv, index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaForCausalLM(nnx.Module):
    """The decoder with its output head; call it on token ids, optionally with a :class:`KVCache`.

    Args:
      config: the hyper-parameters.
      rngs: random initialisation (loaders replace every weight).
      fp8: build :class:`~ecf8_jax.nn.Fp8Linear` / ``Fp8Embed`` layers (per-row scales) instead of
        float ones; convert them to ECF8 with :func:`ecf8_jax.nn.compress_model`.
      bf16: build frozen :class:`~ecf8_jax.nn.Bf16Linear` / ``Bf16Embed`` layers instead (no
        scales; bf16 × bf16 → float32 matmuls), also converted by ``compress_model``.
    """

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        c = config
        self.config = c
        kw = dict(fp8=fp8, bf16=bf16)
        self.embed_tokens = make_embed(c.vocab_size, c.hidden_size, rngs, **kw)
        self.layers = Stacked([DecoderLayer(c, rngs, **kw) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = make_linear(c.hidden_size, c.vocab_size, rngs, **kw)
        self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(c)))

    def __call__(
        self,
        tokens: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits for ``tokens`` ``[batch, seq]``.

        Args:
          tokens: int token ids.
          attention_mask: ``[batch, seq]``, 1 for real tokens and 0 for padding (default: all 1).
          cache: a :class:`KVCache` with room for ``seq`` more tokens, or None (no cache).

        Returns:
          ``(logits float32 [batch, seq, vocab], cache)``, the cache updated (or None).
        """
        b, t = tokens.shape
        new = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if cache is None:
            valid, index, offset = new, jnp.zeros((), jnp.int32), 0
        else:
            index = cache.index
            valid = jax.lax.dynamic_update_slice(
                cache.valid, new, (jnp.zeros((), jnp.int32), index)
            )
            offset = index
        slots = jnp.arange(valid.shape[1])
        qslots = offset + jnp.arange(t)  # [seq]
        # Rotary positions count real tokens only: left padding does not shift them.
        counts = jnp.cumsum(valid, axis=1) - 1  # [batch, kv_len]
        positions = jnp.maximum(jnp.take(counts, qslots, axis=1), 0)  # [batch, seq]
        causal = slots[None, :] <= qslots[:, None]  # [seq, kv_len]
        mask = causal[None] & valid[:, None, :]  # [batch, seq, kv_len]
        inv_freq = self.inv_freq[...]
        x = self.embed_tokens(tokens)

        def block(layer, x, kv):
            x, kv = layer(x, positions, inv_freq, mask, kv, index)
            return x, None if cache is None else kv

        kvs = None if cache is None else (cache.k, cache.v)
        x, kvs = scan_layers(self.layers, block, x, kvs)
        x = self.norm(x)
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        if cache is None:
            return logits, None
        return logits, KVCache(kvs[0], kvs[1], valid, index + t)


def sample_token(logits: jax.Array, key: jax.Array | None, temperature: float, top_p: float | None):
    """Next token from ``logits`` ``[batch, vocab]``: argmax when ``key`` is None, else top-p.

    Top-p (nucleus) sampling keeps the smallest set of most likely tokens whose probability
    reaches ``top_p`` (the top token always stays) and samples from it at ``temperature``.
    """
    if key is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # mass before this token < top_p
        sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
        choice = jax.random.categorical(key, sorted_logits, axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(
    model: LlamaForCausalLM,
    tokens,
    max_new_tokens: int,
    *,
    attention_mask=None,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    max_len: int | None = None,
) -> jax.Array:
    """Continues ``tokens`` ``[batch, seq]`` (left-padded, see ``attention_mask``).

    Greedy when ``key`` is None, else temperature / top-p sampling with
    ``jax.random.fold_in(key, step)``. The prefill and the one-token decode step are each jitted
    once (a model with ECF8 layers decodes its weights inside both).

    Returns:
      int32 ``[batch, seq + max_new_tokens]``: the prompt followed by the new tokens. Sequences
      that reach an end token keep generating; cut them at ``config.eos_token_id``.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    cache = init_cache(model.config, b, max_len or t + max_new_tokens)
    graphdef, state = nnx.split(model)

    @jax.jit
    def prefill(state, tokens, mask, cache):
        logits, cache = nnx.merge(graphdef, state)(tokens, attention_mask=mask, cache=cache)
        return logits[:, -1], cache

    @jax.jit
    def step(state, token, cache):
        logits, cache = nnx.merge(graphdef, state)(token[:, None], cache=cache)
        return logits[:, -1], cache

    logits, cache = prefill(state, tokens, mask, cache)
    out = [tokens]
    for i in range(max_new_tokens):
        sub = None if key is None else jax.random.fold_in(key, i)
        nxt = sample_token(logits, sub, temperature, top_p)
        out.append(nxt[:, None])
        if i + 1 < max_new_tokens:
            logits, cache = step(state, nxt, cache)
    return jnp.concatenate(out, axis=1)
