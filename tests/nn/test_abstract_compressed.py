"""A compressed model built without data (``nnx.eval_shape``), compiled ahead of time, then run
on real weights padded to its stream capacity: logits bit-identical to the compressed model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ecf8_jax
from ecf8_jax import nn as enn
from ecf8_jax.format.abstract import CODE_BITS_CAPACITY, abstract_encoding, stream_capacity
from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tests.tiny_configs import TINY_LLAMA


def _tensors(state):
    is_t = lambda x: isinstance(x, ecf8_jax.Ecf8Tensor)  # noqa: E731
    return [t for t in jax.tree.leaves(state, is_leaf=is_t) if is_t(t)]


def test_abstract_encoding_has_the_shapes_of_a_real_one():
    w = (np.random.default_rng(0).standard_normal((96, 200)) * 0.1).astype(jnp.float8_e4m3fn)
    real = ecf8_jax.encode(w)
    fake = abstract_encoding(w.shape, "float8_e4m3fn")
    assert fake.metadata() == real.metadata()
    for name in ("chunk_offsets", "signs", "code_lengths", "checksums"):
        assert getattr(fake, name).shape == getattr(real, name).shape, name
    assert fake.stream.shape[0] >= real.stream.shape[0]  # the capacity holds the real stream
    wide = abstract_encoding((300, 64), "bfloat16")
    assert wide.code_lengths.shape[1] == 256 and wide.signs.shape[1] == wide.chunk_steps // 4
    assert stream_capacity(10**6, 4, 2048, CODE_BITS_CAPACITY) == 10**6 * 35 // 320 + 1024


def test_compressed_model_compiles_without_data_and_runs_padded_real_weights():
    config = LlamaConfig.from_hf(TINY_LLAMA)
    build = lambda: enn.compress_model(LlamaForCausalLM(config, nnx.Rngs(0)))  # noqa: E731
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    tensors = _tensors(abstract_state)
    assert tensors and all(isinstance(t.stream, jax.ShapeDtypeStruct) for t in tensors)

    tokens = jnp.asarray([[3, 14, 15, 92, 65, 35, 8]], jnp.int32)

    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens)[0]

    compiled = jax.jit(forward).trace(abstract_state, tokens).lower().compile()

    model = build()  # the same random weights, encoded for real
    want = np.asarray(model(tokens)[0])
    _, state = nnx.split(model)
    padded = enn.pad_streams_like(state, abstract_state)
    got = np.asarray(compiled(padded, tokens))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_stream_over_capacity_is_refused():
    w = np.random.default_rng(1).integers(0, 256, (256, 1024), np.uint8).view(jnp.float8_e4m3fn)
    real = ecf8_jax.encode(w)  # random bytes: 4 code bits a weight, over the 3.5 capacity
    fake = abstract_encoding(w.shape, "float8_e4m3fn")
    with pytest.raises(ecf8_jax.FormatError, match="pad_stream"):
        enn.pad_streams_like({"w": real}, {"w": fake})
