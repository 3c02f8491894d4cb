"""RoPE analyses of queries and keys (arXiv 2504.04238, sec. 5), per layer and head.

Queries and keys are recomputed outside the model's forward from each layer's own projections
(``input_layernorm``, ``self_attn.q_proj`` / ``k_proj``, optional ``q_norm`` / ``k_norm``), so the
model is not modified. Rotary embedding is the half-split ("rotate_half") kind: rotary pair ``j``
of a head is dimensions ``(j, j + head_dim / 2)``, rotated at frequency ``inv_freq[j]``.

Statistics (each ``[layers, heads, ...]`` float numpy):

- ``q_pair_norm``, ``k_pair_norm`` ``[L, H, head_dim/2]``: the mean over tokens of each rotary
  pair's norm ``sqrt(x_j² + x_{j+d/2}²)`` (rotation does not change it); the *dominant pair* is
  its argmax per head (massive values sit in low-frequency pairs);
- ``first_token_mass`` ``[L, H]``: the mean attention probability on position 0 (the attention
  sink) over query positions ``1..T-1``;
- ``qk_cos`` ``[L, H]``: the mean cosine of the angle between a rotated query and the rotated
  keys it may attend to (positions ``s <= t``).

Key statistics are reported per *query* head (grouped KV heads repeated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from training.tom.lm import scan_layers


def rotate(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding of ``x`` ``[batch, seq, heads, head_dim]`` (rotate_half)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * jnp.cos(emb) + jnp.concatenate([-x2, x1], axis=-1) * jnp.sin(emb)


def queries_and_keys(model, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every layer's queries and keys before rotation, for ``tokens`` ``[batch, seq]``.

    Returns:
      ``(q [L, batch, seq, heads, head_dim], k [L, batch, seq, kv_heads, head_dim])`` float32.
    """
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    inv_freq = model.inv_freq[...]
    index = jnp.zeros((), jnp.int32)

    def block(layer, x, _):
        att = layer.self_attn
        h = layer.input_layernorm(x)
        q = att.q_proj(h).reshape(b, t, att.heads, att.head_dim)
        k = att.k_proj(h).reshape(b, t, att.kv_heads, att.head_dim)
        if att.q_norm is not None:
            q, k = att.q_norm(q), att.k_norm(k)
        x, _ = layer(x, positions, inv_freq, mask, None, index)
        return x, (q.astype(jnp.float32), k.astype(jnp.float32))

    _, (q, k) = scan_layers(model.layers, block, model.embed_tokens(tokens))
    return q, k


def statistics(q: jax.Array, k: jax.Array, inv_freq: jax.Array) -> dict[str, np.ndarray]:
    """The module's statistics from :func:`queries_and_keys` output (no padding in the batch)."""
    n_layers, b, t, h, d = q.shape
    kvh = k.shape[3]
    k = jnp.repeat(k, h // kvh, axis=3)
    half = d // 2

    def pair_norm(x):  # [L, B, T, H, d] -> [L, H, d/2]
        return jnp.sqrt(jnp.square(x[..., :half]) + jnp.square(x[..., half:])).mean(axis=(1, 2))

    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    rot = jax.vmap(lambda x: rotate(x, positions, inv_freq))
    qr, kr = rot(q), rot(k)
    scores = jnp.einsum("lbthd,lbshd->lbhts", qr, kr) * d**-0.5
    causal = jnp.tril(jnp.ones((t, t), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    first = probs[..., 1:, 0].mean(axis=(1, 3))  # [L, H], queries 1..T-1
    qn = qr / jnp.linalg.norm(qr, axis=-1, keepdims=True).clip(1e-12)
    kn = kr / jnp.linalg.norm(kr, axis=-1, keepdims=True).clip(1e-12)
    cos = jnp.einsum("lbthd,lbshd->lbhts", qn, kn)
    qk_cos = jnp.where(causal, cos, 0).sum(axis=(-1, -2)) / causal.sum()
    qn_pairs, kn_pairs = pair_norm(q), pair_norm(k)
    return {
        "q_pair_norm": np.asarray(qn_pairs),
        "k_pair_norm": np.asarray(kn_pairs),
        "q_dominant_pair": np.asarray(qn_pairs.argmax(-1)),
        "k_dominant_pair": np.asarray(kn_pairs.argmax(-1)),
        "first_token_mass": np.asarray(first),
        "qk_cos": np.asarray(qk_cos.mean(axis=1)),
    }


def analyse(model, tokens) -> dict[str, np.ndarray]:
    """:func:`statistics` of ``model`` on ``tokens`` ``[batch, seq]`` (jitted once per shape)."""
    return statistics(*queries_and_keys(model, jnp.asarray(tokens)), model.inv_freq[...])


def summary(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Model-wide scalars: mean first-token mass, mean q·k cosine, the most common dominant pair
    and the mean share of the q norm held by each head's dominant pair."""
    qn = stats["q_pair_norm"]
    share = (qn.max(-1) / qn.sum(-1)).mean()
    pairs = np.bincount(stats["q_dominant_pair"].ravel())
    return {
        "first_token_mass": float(stats["first_token_mass"].mean()),
        "qk_cos": float(stats["qk_cos"].mean()),
        "q_dominant_pair_mode": int(pairs.argmax()),
        "q_dominant_share": float(share),
    }
