"""``ecf8 generate`` and ``ecf8 demo``: Llama-family models from ECF8 weights, end to end."""

from __future__ import annotations

import contextlib
import io
import json

import ml_dtypes
import numpy as np
import pytest

from ecf8_jax import cli
from ecf8_jax.io import gguf as gguf_io
from ecf8_jax.io import safetensors_raw as sr
from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer


def main(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_gguf_tokenizer_matches_smollm2_token_ids():
    tok = gguf_tokenizer(gguf_io.smollm2_gguf_path())
    ids = tok.encode("The capital of France is").ids
    assert ids == [504, 3575, 282, 4649, 314]  # the GGUF vocabulary's own pieces
    assert tok.decode(ids) == "The capital of France is"
    text = "Ünïcode, digits 2024 and  two spaces"
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.slow
def test_demo_generates_identical_coherent_text_from_fp8_and_ecf8():
    rc, out, err = main("demo", "--max-new-tokens", "3")
    assert rc == 0, err
    assert "decode bit-identically" in out and "identical (3 tokens)" in out
    fp8_line = next(line for line in out.splitlines() if "FP8 model :" in line)
    assert "Paris" in fp8_line  # recorded continuation: ' Paris.\n\n'
    saved = float(out.split("% saved")[0].split()[-1])
    assert 14.0 < saved < 20.0


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer Llama as a Hugging Face folder, with a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {s: i for i, s in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 128,
        "eos_token_id": 0,
        "bos_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    h, f, v, kv = 64, 128, len(vocab), 2 * 16
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    tensors = {
        k: (np.ones(s) if len(s) == 1 else rng.standard_normal(s) * 0.2).astype(ml_dtypes.bfloat16)
        for k, s in shapes.items()
    }
    sr.write(folder / "model.safetensors", tensors)
    return folder


def test_generate_from_ecf8_matches_the_raw_fp8_model(tiny_llama):
    rc, ecf8_out, err = main("generate", tiny_llama, "--prompt", "hi there", "--max-new-tokens", 6)
    assert rc == 0, err
    rc, fp8_out, err = main(
        "generate", tiny_llama, "--prompt", "hi there", "--max-new-tokens", 6, "--raw-fp8"
    )
    assert rc == 0, err
    assert ecf8_out.startswith("hi there")
    assert ecf8_out == fp8_out


@pytest.mark.parametrize("bad", ["missing.gguf", "not-a-model"])
def test_generate_refuses_a_path_that_is_not_a_model(tmp_path, bad):
    path = tmp_path / bad
    if bad == "not-a-model":
        path.mkdir()
    rc, out, err = main("generate", path, "--prompt", "x")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err
