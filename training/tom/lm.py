"""Model-side helpers for the ToM tools on a Llama-family NNX decoder: hidden states, sampling.

They call the model's public pieces (``embed_tokens``, ``layers`` with their ``scan``,
``norm``, ``lm_head`` / ``embed_tokens.attend``, ``inv_freq``, ``config``) the way
``LlamaForCausalLM.__call__`` does, without the output head where only hidden states are
needed, so the same code runs on float, FP8 and ECF8 models (weights are decoded inside the
layers; nothing here knows how they are stored).

- :func:`forward`: final (normed) hidden states and, with a cache, the updated cache.
- :func:`last_token_logits`: logits at one position per row (the supervised answer token).
- :func:`sample`: N continuations of one prompt: the prompt is prefilled once and its KV cache
  copied N times; temperature / top-p sampling; also returns the hidden state of every token
  fed, which the process belief model scores.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def scan_layers(layers, fn, carry):
    """``layers.scan(fn, carry)`` for stacked layers, else a Python loop over a list."""
    if hasattr(layers, "scan"):
        return layers.scan(fn, carry)
    ys = []
    for layer in layers:
        carry, y = fn(layer, carry, None)
        ys.append(y)
    if all(y is None for y in ys):
        return carry, None
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def head(model, h: jax.Array) -> jax.Array:
    """The output projection of final hidden states ``h`` ``[..., hidden]`` -> float32 logits."""
    return model.embed_tokens.attend(h) if model.lm_head is None else model.lm_head(h)


def forward(
    model, tokens: jax.Array, cache: Any = None, attention_mask: jax.Array | None = None
) -> tuple[jax.Array, Any]:
    """Final normed hidden states of ``tokens`` ``[batch, seq]``.

    Args:
      model: a ``LlamaForCausalLM``-like module.
      tokens: int token ids; without a cache they start at position 0.
      cache: a ``KVCache`` (``k``, ``v``, ``valid``, ``index``) with room for ``seq`` more tokens,
        or None.
      attention_mask: ``[batch, seq]``, 0 at padding (never attended to, no rotary position);
        default all 1.

    Returns:
      ``(hidden float32 [batch, seq, hidden], cache)`` (the cache updated, or None).
    """
    b, t = tokens.shape
    new = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
        valid, index = new, jnp.zeros((), jnp.int32)
    else:
        index = cache.index
        valid = jax.lax.dynamic_update_slice(cache.valid, new, (jnp.zeros((), jnp.int32), index))
    qslots = index + jnp.arange(t)
    counts = jnp.cumsum(valid, axis=1) - 1
    positions = jnp.maximum(jnp.take(counts, qslots, axis=1), 0)
    causal = jnp.arange(valid.shape[1])[None, :] <= qslots[:, None]
    mask = causal[None] & valid[:, None, :]
    inv_freq = model.inv_freq[...]
    x = model.embed_tokens(tokens)
    if cache is None:

        def block(layer, x, _):
            return layer(x, positions, inv_freq, mask, None, index)[0], None

        x, _ = scan_layers(model.layers, block, x)
        return model.norm(x), None

    def cached_block(layer, carry, kv):
        x, kv = layer(carry, positions, inv_freq, mask, kv, index)
        return x, kv

    if hasattr(model.layers, "scan"):
        x, kvs = model.layers.scan(cached_block, x, (cache.k, cache.v))
    else:
        outs = []
        for i, layer in enumerate(model.layers):
            x, kv = cached_block(layer, x, (cache.k[i], cache.v[i]))
            outs.append(kv)
        kvs = (jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))
    return model.norm(x), type(cache)(kvs[0], kvs[1], valid, index + t)


def last_token_logits(model, tokens: jax.Array, last: jax.Array) -> jax.Array:
    """float32 logits ``[batch, vocab]`` at position ``last[b]`` of each right-padded row."""
    h, _ = forward(model, tokens)
    return head(model, h[jnp.arange(tokens.shape[0]), last]).astype(jnp.float32)


def _top_p_sample(logits, key, temperature: float, top_p: float):
    logits = logits / temperature
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the top token always stays
    choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def sample(
    model,
    prompt: list[int],
    n: int,
    max_new_tokens: int,
    key: jax.Array,
    *,
    init_cache,
    temperature: float = 0.6,
    top_p: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sampled continuations of one prompt, with the hidden state of every fed token.

    Args:
      model: a ``LlamaForCausalLM``-like module.
      prompt: the prompt's token ids.
      n: continuations, sampled as one batch.
      max_new_tokens: tokens per continuation (cut them at a stop string afterwards).
      key: sampling key; step ``i`` uses ``fold_in(key, i)``.
      init_cache: ``init_cache(config, batch, max_len)`` of the model family.
      temperature, top_p: nucleus sampling (DEL-ToM's settings by default).

    Returns:
      ``(tokens int32 [n, max_new_tokens], hidden float32 [n, max_new_tokens, hidden_size])``:
      ``hidden[:, j]`` is the final hidden state after reading ``tokens[:, j]`` (the state that
      predicts token ``j + 1``).
    """
    graphdef, state = nnx.split(model)
    width = -(-len(prompt) // 64) * 64  # prompts padded to a multiple of 64: few compilations
    cache1 = init_cache(model.config, 1, width + max_new_tokens + 1)
    prefill, step = _sampling_fns(graphdef)
    padded = np.zeros((1, width), np.int32)
    padded[0, : len(prompt)] = prompt
    mask = jnp.asarray(np.arange(width)[None] < len(prompt))
    logits, cache1 = prefill(state, jnp.asarray(padded), mask, len(prompt) - 1, cache1)
    cache = jax.tree.map(
        lambda x: jnp.repeat(x, n, axis=1 if x.ndim == 5 else 0) if x.ndim else x, cache1
    )
    logits = jnp.repeat(logits, n, axis=0)
    tokens, hidden = [], []
    for i in range(max_new_tokens):
        nxt = _top_p_sample(logits, jax.random.fold_in(key, i), temperature, top_p)
        logits, h, cache = step(state, nxt, cache)
        tokens.append(nxt)
        hidden.append(h)
    return np.asarray(jnp.stack(tokens, 1)), np.asarray(jnp.stack(hidden, 1))


_FNS: dict[Any, tuple] = {}


def _sampling_fns(graphdef):
    if graphdef not in _FNS:

        @jax.jit
        def prefill(state, tokens, mask, last, cache):
            h, cache = forward(nnx.merge(graphdef, state), tokens, cache, mask)
            return head(nnx.merge(graphdef, state), h[:, last]).astype(jnp.float32), cache

        @jax.jit
        def step(state, token, cache):
            model = nnx.merge(graphdef, state)
            h, cache = forward(model, token[:, None], cache)
            return head(model, h[:, -1]).astype(jnp.float32), h[:, -1], cache

        _FNS[graphdef] = (prefill, step)
    return _FNS[graphdef]
