"""A BERT encoder in Flax NNX on FP8 / BF16 / ECF8 weights, with mean pooling (all-MiniLM-L6-v2).

Architecture (Hugging Face ``BertModel``, post-norm): word + position + token-type embeddings →
LayerNorm; ``num_hidden_layers`` blocks of self-attention → dense → residual → LayerNorm →
GELU (erf) MLP → residual → LayerNorm. :meth:`BertModel.embed` adds sentence-transformers' mean
pooling over the attention mask and L2 normalisation (the all-MiniLM-L6-v2 pipeline). All linear
layers (and the word embedding, when FP8) go through :mod:`ecf8_jax.nn`, so an ECF8 model's
outputs are bit-identical to the raw-FP8 one's. The blocks are a :class:`~ecf8_jax.nn.Stacked` run
under ``lax.scan`` (one block decoded at a time).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ecf8_jax.models.common import LayerNorm, attention, make_embed, make_linear
from ecf8_jax.nn.layers import Embed
from ecf8_jax.nn.stack import Stacked, scan_layers


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; :meth:`from_hf` reads a ``config.json`` dict."""

    vocab_size: int = 30522
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict) -> BertConfig:
        """From a ``config.json`` of model type bert (absolute positions, GELU).

        Raises:
          ValueError: another activation or position embedding type.
        """
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r}: only gelu is supported")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


class BertLayer(nnx.Module):
    """Post-norm encoder block (names follow Hugging Face, flattened)."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        d, f, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        kw = dict(bias=True, fp8=fp8, bf16=bf16)
        self.query = make_linear(d, d, rngs, **kw)
        self.key = make_linear(d, d, rngs, **kw)
        self.value = make_linear(d, d, rngs, **kw)
        self.attention_output = make_linear(d, d, rngs, **kw)
        self.attention_norm = LayerNorm(d, eps)
        self.intermediate = make_linear(d, f, rngs, **kw)
        self.output = make_linear(f, d, rngs, **kw)
        self.output_norm = LayerNorm(d, eps)
        self.heads = config.num_attention_heads
        self.head_dim = d // config.num_attention_heads

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q = self.query(x).reshape(shape)
        k = self.key(x).reshape(shape)
        v = self.value(x).reshape(shape)
        a = attention(q, k, v, mask, self.head_dim**-0.5).reshape(b, t, -1)
        x = self.attention_norm(x + self.attention_output(a))
        h = jax.nn.gelu(self.intermediate(x), approximate=False)
        return self.output_norm(x + self.output(h))


class BertModel(nnx.Module):
    """BERT encoder; ``model(ids, mask)`` gives hidden states, ``model.embed`` sentence vectors.

    Args:
      config: the hyper-parameters.
      rngs: random initialisation (loaders replace every weight).
      fp8: FP8 linear layers and word embedding (per-row scales) instead of float ones.
      bf16: frozen BF16 linear layers and word embedding instead (no scales); position and
        token-type embeddings, LayerNorms and biases stay float32 either way.
    """

    def __init__(self, config: BertConfig, rngs: nnx.Rngs, *, fp8: bool = True, bf16=False):
        c = config
        self.config = c
        self.word_embeddings = make_embed(c.vocab_size, c.hidden_size, rngs, fp8=fp8, bf16=bf16)
        self.position_embeddings = Embed.init(c.max_position_embeddings, c.hidden_size, rngs)
        self.token_type_embeddings = Embed.init(c.type_vocab_size, c.hidden_size, rngs)
        self.embeddings_norm = LayerNorm(c.hidden_size, c.layer_norm_eps)
        self.layers = Stacked(
            [BertLayer(c, rngs, fp8=fp8, bf16=bf16) for _ in range(c.num_hidden_layers)]
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Last hidden states, float32 ``[batch, seq, hidden]``.

        Args:
          input_ids: int ``[batch, seq]``.
          attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for (right) padding.
          token_type_ids: ``[batch, seq]`` segment ids (default 0).
        """
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, t), jnp.int32)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(jnp.arange(t)[None, :])
            + self.token_type_embeddings(token_type_ids)
        )
        x = self.embeddings_norm(x)
        mask = jnp.broadcast_to(attention_mask.astype(bool)[:, None, :], (b, t, t))
        x, _ = scan_layers(self.layers, lambda layer, x, _: (layer(x, mask), None), x)
        return x

    def embed(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, normalize=True
    ) -> jax.Array:
        """Sentence embeddings: mean of the hidden states over real tokens, L2-normalised.

        Returns:
          float32 ``[batch, hidden]``.
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        h = self(input_ids, attention_mask)
        m = attention_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
        if not normalize:
            return pooled
        return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
