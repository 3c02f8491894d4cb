"""Safetensors reading and the Hugging Face Llama loader: FP8 scales as stored, casts, shards."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from ecf8_jax import nn as enn
from ecf8_jax.io import load_llama, read_safetensors, write_safetensors
from ecf8_jax.io.hf import linear_from_tensors

FP8 = ml_dtypes.float8_e4m3fn
CONFIG = dict(
    model_type="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)


def test_safetensors_round_trip_is_bit_exact_for_bf16_and_fp8(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
        "b": rng.standard_normal((4, 4)).astype(FP8),
        "c": rng.standard_normal(7).astype(np.float32),
        "d": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = read_safetensors(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k].view(np.uint8), v.view(np.uint8))


def llama_tensors(rng, *, fp8: str | None):
    """Hugging Face names for CONFIG; linear weights FP8 with 'channel' or 'block' scales."""
    c = CONFIG
    d, f, kv = c["hidden_size"], c["intermediate_size"], 2 * 8
    shapes = {
        "self_attn.q_proj": (d, d),
        "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, d),
        "mlp.gate_proj": (f, d),
        "mlp.up_proj": (f, d),
        "mlp.down_proj": (d, f),
    }
    t = {
        "model.embed_tokens.weight": rng.standard_normal((64, d)).astype(ml_dtypes.bfloat16),
        "model.norm.weight": np.ones(d, ml_dtypes.bfloat16),
        "model.layers.0.input_layernorm.weight": np.ones(d, np.float32),
        "model.layers.0.post_attention_layernorm.weight": np.ones(d, np.float32),
        "lm_head.weight": rng.standard_normal((64, d)).astype(ml_dtypes.bfloat16),
    }
    for name, shape in shapes.items():
        key = f"model.layers.0.{name}"
        w = rng.standard_normal(shape).astype(np.float32)
        if fp8 is None:
            t[key + ".weight"] = w.astype(ml_dtypes.bfloat16)
        elif fp8 == "channel":
            t[key + ".weight"] = (w * 30).astype(FP8)
            t[key + ".weight_scale"] = rng.uniform(0.01, 0.1, (shape[0], 1)).astype(np.float32)
        else:
            t[key + ".weight"] = (w * 30).astype(FP8)
            grid = (-(-shape[0] // 16), -(-shape[1] // 16))
            t[key + ".weight_scale_inv"] = rng.uniform(0.01, 0.1, grid).astype(np.float32)
    return t


def write_model(folder, tensors, config, shards=1):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors)
        return
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, {k: tensors[k] for k in part})
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_fp8_block_scales_load_as_stored_from_a_sharded_folder(tmp_path):
    rng = np.random.default_rng(1)
    tensors = llama_tensors(rng, fp8="block")
    config = dict(CONFIG, quantization_config={"weight_block_size": [16, 16]})
    write_model(tmp_path / "m", tensors, config, shards=3)
    model = load_llama(tmp_path / "m")
    up = model.layers[0].mlp.up_proj
    assert isinstance(up, enn.Fp8Linear) and up.block_size == (16, 16)
    np.testing.assert_array_equal(
        np.asarray(up.weight[...]).view(np.uint8),
        tensors["model.layers.0.mlp.up_proj.weight"].view(np.uint8),
    )
    assert isinstance(model.lm_head, enn.Linear)  # BF16 head kept as it is (cast=None)
    logits, _ = model(np.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 64) and np.isfinite(np.asarray(logits)).all()
    ecf8 = enn.compress_model(load_llama(tmp_path / "m"))
    np.testing.assert_array_equal(
        np.asarray(ecf8(np.array([[1, 2, 3]]))[0]).view(np.uint32),
        np.asarray(logits).view(np.uint32),
    )


def test_fp8_channel_scales_and_cast_of_bf16_weights(tmp_path):
    rng = np.random.default_rng(2)
    write_model(tmp_path / "c", llama_tensors(rng, fp8="channel"), CONFIG)
    model = load_llama(tmp_path / "c", cast="fp8-row")
    q = model.layers[0].self_attn.q_proj
    assert isinstance(q, enn.Fp8Linear) and q.block_size is None and q.scale.shape == (32, 1)
    assert isinstance(model.lm_head, enn.Fp8Linear)  # BF16 head cast to FP8 (lossy)
    assert isinstance(model.embed_tokens, enn.Fp8Embed)
    write_model(tmp_path / "f", llama_tensors(rng, fp8=None), CONFIG)
    kept = load_llama(tmp_path / "f")
    assert isinstance(kept.layers[0].mlp.down_proj, enn.Linear)
    assert isinstance(kept.embed_tokens, enn.Embed)


def test_fp8_weight_without_scale_is_an_error():
    with pytest.raises(KeyError, match="weight_scale"):
        linear_from_tensors({"x.weight": np.zeros((4, 4), FP8)}, "x")


@pytest.mark.parametrize("shards", [1, 3])  # one file; three shards with the index
def test_a_bf16_folder_loads_unmodified_and_compresses_bit_identically(tmp_path, shards):
    rng = np.random.default_rng(3)
    tensors = llama_tensors(rng, fp8=None)
    write_model(tmp_path / "b", tensors, CONFIG, shards=shards)
    assert (tmp_path / "b" / "model.safetensors.index.json").exists() == (shards > 1)
    model = load_llama(tmp_path / "b", cast="bf16")
    for layer, name in [
        (model.layers[0].mlp.down_proj, "model.layers.0.mlp.down_proj.weight"),
        (model.lm_head, "lm_head.weight"),
    ]:
        assert isinstance(layer, enn.Bf16Linear) and layer.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(
            np.asarray(layer.weight[...]).view(np.uint16), tensors[name].view(np.uint16)
        )
    assert isinstance(model.embed_tokens, enn.Bf16Embed)
    assert model.norm.weight[...].dtype == np.float32  # norms stay float32 (trainable)
    assert model.layers[0].input_layernorm.weight[...].dtype == np.float32
    np.testing.assert_array_equal(
        np.asarray(model.embed_tokens.table[...]).view(np.uint16),
        tensors["model.embed_tokens.weight"].view(np.uint16),
    )
    ids = np.array([[1, 2, 3, 60]])
    logits = np.asarray(model(ids)[0])
    ecf8 = enn.compress_model(load_llama(tmp_path / "b", cast="bf16"))
    assert isinstance(ecf8.lm_head, enn.Ecf8Linear)
    np.testing.assert_array_equal(np.asarray(ecf8(ids)[0]).view(np.uint32), logits.view(np.uint32))


def test_cast_bf16_rounds_float32_weights_once_and_rejects_unknown_casts():
    w = np.array([[1.0, 1.00390625, 1.01171875, -3.0e-41]], np.float32)  # ties, a subnormal
    layer = linear_from_tensors({"x.weight": w}, "x", cast="bf16")
    np.testing.assert_array_equal(
        np.asarray(layer.weight[...]).view(np.uint16), w.astype(ml_dtypes.bfloat16).view(np.uint16)
    )
    with pytest.raises(ValueError, match="cast must be None or one of"):
        linear_from_tensors({"x.weight": w}, "x", cast="fp16")
