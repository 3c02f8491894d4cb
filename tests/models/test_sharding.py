"""A compressed model (FP8 or BF16) sharded over 8 (simulated CPU) devices gives bit-identical
logits.

The pytest process has already initialised jax with one CPU device, so the body runs in a
subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]  # set by tests/conftest.py

PRELUDE = textwrap.dedent(
    """
    import os
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from ecf8_jax import nn as enn
    from ecf8_jax.format import Ecf8Tensor
    from ecf8_jax.models import LlamaConfig, LlamaForCausalLM, init_cache

    assert jax.device_count() == 8, jax.devices()
    cfg = LlamaConfig.from_hf(dict(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 6)), jnp.int32)

    def run(model, shard=None):
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda s, t, c: nnx.merge(graphdef, s)(t, cache=c))
        cache = init_cache(cfg, 2, 8)
        if shard is not None:
            cache = cache._replace(
                k=jax.device_put(cache.k, shard), v=jax.device_put(cache.v, shard))
        prefill, cache = fwd(state, tokens[:, :5], cache)
        step, _ = fwd(state, tokens[:, 5:], cache)
        return [np.asarray(prefill).view(np.uint32), np.asarray(step).view(np.uint32)]

    mesh = Mesh(np.array(jax.devices()), ("layers",))
    """
)

BODY = PRELUDE + textwrap.dedent(
    """
    fp8 = run(LlamaForCausalLM(cfg, nnx.Rngs(0)))
    one = run(enn.compress_model(LlamaForCausalLM(cfg, nnx.Rngs(0))))

    model = enn.shard_model(
        enn.compress_model(LlamaForCausalLM(cfg, nnx.Rngs(0))), mesh, "layers")
    (w,) = jax.tree.leaves(nnx.state(model.layers.layer.mlp.down_proj, enn.Ecf8Weight),
                           is_leaf=lambda x: isinstance(x, Ecf8Tensor))
    for leaf in jax.tree.leaves(w):  # every device holds one whole compressed layer
        assert leaf.sharding.spec == PartitionSpec("layers"), leaf.sharding
        assert leaf.addressable_shards[0].data.shape[0] == 1
    table = model.embed_tokens.table.get_value().stream
    assert table.sharding.is_fully_replicated
    sharded = run(model, NamedSharding(mesh, PartitionSpec("layers")))

    for a, b, c in zip(sharded, one, fp8):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)

    # Memory: a device receives one compressed layer per step, never the whole stack.
    big = LlamaConfig.from_hf(dict(
        vocab_size=96, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))

    def temp_bytes(model):
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)[0])
        return fwd.lower(state, tokens).compile().memory_analysis().temp_size_in_bytes

    model = enn.compress_model(LlamaForCausalLM(big, nnx.Rngs(0)))
    stack = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.layers)))
    alone = temp_bytes(model)
    enn.shard_model(model, mesh, "layers")
    placed = temp_bytes(model)
    model.layers.placement = None  # what plain SPMD does: gather the stack before the loop
    gathered = temp_bytes(model)
    assert placed < alone + stack // 8, (placed, alone, stack)
    assert gathered > alone + stack // 2, (gathered, alone, stack)
    print("OK")
    """
)


BF16_BODY = PRELUDE + textwrap.dedent(
    """
    bf16 = run(LlamaForCausalLM(cfg, nnx.Rngs(0), bf16=True))
    model = enn.shard_model(
        enn.compress_model(LlamaForCausalLM(cfg, nnx.Rngs(0), bf16=True)), mesh, "layers")
    (w,) = jax.tree.leaves(nnx.state(model.layers.layer.mlp.down_proj, enn.Ecf8Weight),
                           is_leaf=lambda x: isinstance(x, Ecf8Tensor))
    assert w.dtype == "bfloat16"
    for leaf in jax.tree.leaves(w):  # every device holds one whole compressed BF16 layer
        assert leaf.sharding.spec == PartitionSpec("layers"), leaf.sharding
        assert leaf.addressable_shards[0].data.shape[0] == 1
    for a, b in zip(run(model, NamedSharding(mesh, PartitionSpec("layers"))), bf16):
        np.testing.assert_array_equal(a, b)
    print("OK")
    """
)


def _run_on_8_devices(body: str) -> None:
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [sys.executable, "-c", body],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_layer_sharded_ecf8_model_on_8_devices_is_bit_identical_to_one_device():
    _run_on_8_devices(BODY)


def test_layer_sharded_bf16_ecf8_model_is_bit_identical_to_the_bf16_model():
    _run_on_8_devices(BF16_BODY)
