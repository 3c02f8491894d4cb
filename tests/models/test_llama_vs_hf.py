"""The Llama-family decoder against Hugging Face transformers (PyTorch, float32) on tiny configs.

Both sides get the same weights: linear weights are quantized to FP8 per row, the JAX model loads
FP8 + scale and the PyTorch model the dequantized float32 weights (the same float32 products).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.torch

from ecf8_jax import nn as enn  # noqa: E402
from ecf8_jax.io import llama_from_tensors  # noqa: E402
from ecf8_jax.models import LlamaConfig, generate  # noqa: E402
from ecf8_jax.quantize import quantize_fp8  # noqa: E402
from tests.tiny_configs import TINY_LLAMA as TINY  # noqa: E402

CASES = {
    "llama-gqa-untied": ("llama", dict(TINY, rope_theta=500000.0)),
    "llama3-scaling-bias-tied": (
        "llama",
        dict(
            TINY,
            tie_word_embeddings=True,
            attention_bias=True,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8,
            ),
        ),
    ),
    "qwen3-qk-norm": ("qwen3", dict(TINY, head_dim=32, tie_word_embeddings=False)),
}


def hf_model_and_tensors(kind: str, cfg: dict, seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if kind == "qwen3":
        hf_cfg = transformers.Qwen3Config(**cfg)
        model = transformers.Qwen3ForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.LlamaConfig(**cfg)
        model = transformers.LlamaForCausalLM(hf_cfg)
    model = model.float().eval()
    tensors, state = {}, model.state_dict()
    with torch.no_grad():
        for name, p in state.items():
            if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                continue  # the same tensor as the embedding
            w = p.detach().numpy().astype(np.float32)
            if "norm" not in name:
                w = w + np.random.default_rng(seed).normal(0, 0.05, w.shape).astype(np.float32)
            if w.ndim == 2 and "embed_tokens" not in name:
                q, s = quantize_fp8(w, granularity="row")
                tensors[name], tensors[name + "_scale"] = q, s
                w = q.astype(np.float32) * s
            elif w.ndim == 2 or "bias" in name:
                tensors[name] = w
            else:  # norm weights: not all ones
                w = w + np.random.default_rng(seed + 1).normal(0, 0.1, w.shape).astype(np.float32)
                tensors[name] = w
            p.copy_(torch.from_numpy(w))
    return model, hf_cfg.to_dict(), tensors


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_float32(case):
    import torch

    kind, cfg = CASES[case]
    hf, hf_dict, tensors = hf_model_and_tensors(kind, cfg)
    config = LlamaConfig.from_hf(hf_dict)
    model = llama_from_tensors(config, tensors)
    assert isinstance(model.layers[0].mlp.up_proj, enn.Fp8Linear)
    tokens = np.random.default_rng(1).integers(0, 96, (2, 11))
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    ours, _ = model(tokens)
    ours = np.asarray(ours)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale)
    # The compressed model gives the very same logits.
    ecf8 = enn.compress_model(llama_from_tensors(config, tensors))
    np.testing.assert_array_equal(np.asarray(ecf8(tokens)[0]).view(np.uint32), ours.view(np.uint32))


def test_greedy_generation_matches_transformers():
    import torch

    kind, cfg = CASES["llama-gqa-untied"]
    hf, hf_dict, tensors = hf_model_and_tensors(kind, cfg, seed=3)
    model = enn.compress_model(llama_from_tensors(LlamaConfig.from_hf(hf_dict), tensors))
    prompt = np.array([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        ref = hf.generate(
            torch.from_numpy(prompt), max_new_tokens=6, do_sample=False, pad_token_id=0
        ).numpy()
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 6)), ref)
