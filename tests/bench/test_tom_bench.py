"""Tests of the theory-of-mind benchmark (bench/tom.py) on its --tiny random model."""

from __future__ import annotations

import contextlib
import io
import json

from bench import tom


def test_tiny_sensitivity_run_prints_its_table_and_writes_its_rows(tmp_path):
    # (the DEL-ToM half samples with a compiled decode loop per prompt width: too slow for the
    # suite; its parts are tested in tests/training/tom)
    out = io.StringIO()
    argv = ["--tiny", "--only", "sensitivity", "--json", str(tmp_path / "t.json"),
            "--eval-tasks", "4", "--fisher-tasks", "2", "--generic", "2"]  # fmt: skip
    with contextlib.redirect_stdout(out):
        rows = tom.main(argv)
    assert "ToM-sensitive weights" in out.getvalue() and "delt" not in rows
    sens = rows["sensitivity"]
    assert [r["mask"] for r in sens] == ["none", "Fisher", "random"]
    assert sens[1]["masked"] == sens[2]["masked"] > 0  # the control has the same size
    assert sens[0]["masked"] == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    assert len(doc["rows"]) == len(sens)


def test_mean_replacement_on_an_ecf8_model_matches_the_float_rule_up_to_fp8_rounding():
    import numpy as np
    from flax import nnx

    from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM
    from ecf8_jax.nn import Ecf8Linear, compress_model, linear_weights
    from tests.tiny_configs import TINY_LLAMA
    from training.tom import fisher

    config = LlamaConfig(**TINY_LLAMA, head_dim=16, tie_word_embeddings=True)
    model = compress_model(LlamaForCausalLM(config, nnx.Rngs(0)))
    before = linear_weights(model)
    rng = np.random.default_rng(0)
    masks = {k: rng.random(v.shape) < 0.02 for k, v in before.items()}
    want = fisher.mean_replace(before, masks)
    tom.mean_replace_compressed(model, masks)
    assert isinstance(model.layers.layer.self_attn.q_proj, Ecf8Linear)  # re-encoded
    after = linear_weights(model)
    for k, m in masks.items():
        w = before[k]
        rowmax = np.abs(w).max(1, keepdims=True)
        # masked entries: the unmasked mean, to within FP8 E4M3 rounding on the row's scale
        err = np.abs(after[k] - want[k])[m]
        assert (err <= (rowmax * 2.0**-3).repeat(w.shape[1], 1)[m]).all(), k
        # rows whose largest weight is not masked keep their scale: unmasked FP8 values unchanged
        keep = ~m[np.arange(len(w)), np.abs(w).argmax(1)]
        np.testing.assert_array_equal(after[k][keep][~m[keep]], w[keep][~m[keep]])


def test_any_llama_folder_the_loaders_read_can_be_given_by_path(tmp_path):
    import argparse

    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tests.io.test_hf_loader import CONFIG, llama_tensors, write_model

    folder = tmp_path / "llama"
    write_model(folder, llama_tensors(np.random.default_rng(0), fp8=None), CONFIG)
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 64)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    model, encode, piece, name = tom.load(argparse.Namespace(tiny=False, model=str(folder)))
    ids = encode("w3 w5 w7")
    assert ids == [3, 5, 7] and piece(5) == "w5" and "llama" in name
    logits, _ = model(np.asarray([ids], np.int32))
    assert logits.shape == (1, 3, 64) and np.isfinite(np.asarray(logits)).all()
