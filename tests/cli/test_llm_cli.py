"""``ecf8 generate`` and ``ecf8 demo``: Llama-family models from ECF8 weights, end to end."""

from __future__ import annotations

import contextlib
import io

import jax
import numpy as np
import pytest
from flax import nnx

from ecf8_cli import cli
from ecf8_jax.io import gguf as gguf_io
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
    # Format version 2 (the default) saves 13.9 % on this Q4_1-derived FP8 model; version 1
    # saved 16.8 % (its 7-bit magnitude code captures the mantissa structure of dequantized Q4).
    assert 13.0 < saved < 20.0


@pytest.mark.slow
def test_demo_bf16_saves_at_least_30_percent_and_generates_identical_text():
    rc, out, err = main("demo", "--dtype", "bf16", "--max-new-tokens", "3")
    assert rc == 0, err
    assert "decode bit-identically" in out and "identical (3 tokens)" in out
    assert "Paris" in next(line for line in out.splitlines() if "BF16 model :" in line)
    saved = float(out.split("% saved")[0].split()[-1])
    assert saved >= 30.0  # 32.6 % measured (10.784 bits/weight), issue 11's target


def test_generate_from_ecf8_matches_the_raw_fp8_model(tiny_llama):
    rc, ecf8_out, err = main("generate", tiny_llama, "--prompt", "hi there", "--max-new-tokens", 6)
    assert rc == 0, err
    rc, fp8_out, err = main(
        "generate", tiny_llama, "--prompt", "hi there", "--max-new-tokens", 6, "--raw-fp8"
    )
    assert rc == 0, err
    assert ecf8_out.startswith("hi there")
    assert ecf8_out == fp8_out


def test_generate_bf16_from_ecf8_matches_the_raw_bf16_model(tiny_llama):
    from ecf8_cli.llm import check_lossless, load_causal_lm
    from ecf8_jax import nn as enn

    args = ("generate", tiny_llama, "--prompt", "hi there", "--max-new-tokens", 6)
    rc, ecf8_out, err = main(*args, "--dtype", "bf16")
    assert rc == 0, err
    rc, raw_out, err = main(*args, "--dtype", "bf16", "--raw")
    assert rc == 0, err
    assert ecf8_out.startswith("hi there") and ecf8_out == raw_out
    raw = load_causal_lm(str(tiny_llama), "bf16")[0]  # the folder's BF16 weights, unmodified
    assert isinstance(raw.layers.layer.mlp.up_proj, enn.Bf16Linear)
    ecf8 = enn.compress_model(load_causal_lm(str(tiny_llama), "bf16")[0])
    assert check_lossless(raw, ecf8) == sum(
        x.size for x in jax.tree.leaves(nnx.state(raw, enn.Bf16Weight))
    )


@pytest.mark.parametrize("bad", ["missing.gguf", "not-a-model"])
def test_generate_refuses_a_path_that_is_not_a_model(tmp_path, bad):
    path = tmp_path / bad
    if bad == "not-a-model":
        path.mkdir()
    rc, out, err = main("generate", path, "--prompt", "x")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err


def test_finetune_runs_mezo_over_the_frozen_base_and_writes_checkpoint_and_plot(
    tiny_llama, tmp_path
):
    from flax import nnx

    from ecf8_cli.llm import load_causal_lm
    from ecf8_jax import checkpoint
    from ecf8_jax.nn import compress_model

    out, png = tmp_path / "tuned", tmp_path / "curve.png"
    rc, stdout, err = main(
        "finetune", out, "--model", tiny_llama, "--steps", 4, "--eval-every", 2,
        "--eval-words", 8, "--batch-size", 4, "--plot", png, "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert "zero-shot dev accuracy" in stdout and "after 4 MeZO steps" in stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    history = checkpoint.read_metadata(out)["user"]["history"]
    assert history["step"] == [0, 2, 4] and len(history["loss"]) == 4
    # The checkpoint restores into a fresh compressed model of the same structure.
    model = compress_model(load_causal_lm(str(tiny_llama))[0])
    checkpoint.restore_model(out, model)
    trained = nnx.state(model, nnx.Param)
    untouched = nnx.state(compress_model(load_causal_lm(str(tiny_llama))[0]), nnx.Param)
    import jax

    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(untouched), strict=True)
    ]
    assert any(changed)  # MeZO moved the float parameters (norm scales)
    # The saved projected gradients and the seed rebuild the trained parameters bit for bit.
    import optax

    import training

    g = history["projected_grads"]
    assert len(g) == 4
    replayed, _ = training.replay(
        untouched, list(enumerate(g)), optax.sgd(1e-4), root_key=jax.random.key(0)
    )
    for a, b in zip(jax.tree.leaves(replayed), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.parametrize("adapter", ["lora", "sparse"])
def test_finetune_trains_only_the_adapters_and_saves_them_merged(tiny_llama, tmp_path, adapter):
    import jax
    from flax import nnx

    from ecf8_cli.llm import load_causal_lm
    from ecf8_jax import Ecf8Tensor, checkpoint, decode
    from ecf8_jax.nn import compress_model

    out = tmp_path / adapter
    rc, stdout, err = main(
        "finetune", out, "--model", tiny_llama, "--steps", 3, "--eval-every", 3,
        "--eval-words", 8, "--batch-size", 4, "--learning-rate", 0.05, "--quiet",
        "--adapter", adapter, "--sparse-density", 0.01,
    )  # fmt: skip
    assert rc == 0, err
    assert f"merged the {adapter} adapters into re-encoded ECF8 layers" in stdout
    meta = checkpoint.read_metadata(out)["user"]
    assert meta["adapter"] == adapter and 0 <= meta["history"]["merged_dev_accuracy"] <= 1

    def flat(tree):
        leaves = jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: isinstance(x, Ecf8Tensor)
        )
        return {".".join(str(getattr(k, "key", k)) for k in p): v for p, v in leaves}

    saved = flat(checkpoint.restore(out))
    base = flat(nnx.to_pure_dict(nnx.state(compress_model(load_causal_lm(str(tiny_llama))[0]))))
    # Merged: the checkpoint holds the base model's items, no adapter.
    assert saved.keys() == base.keys()
    targets = [k for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert len(targets) == 2
    for k, v in base.items():
        if k in targets:  # trained, merged and re-encoded
            assert isinstance(saved[k], Ecf8Tensor)
            got, want = (np.asarray(jax.vmap(decode)(t)) for t in (saved[k], v))  # [layers, ...]
            assert got.shape == want.shape and (got.view(np.uint8) != want.view(np.uint8)).any()
        elif k.endswith("scale") and any(k.startswith(t[: -len("weight")]) for t in targets):
            continue  # the merged layers' new per-row scales
        else:  # everything else, norms included, is bit-identical
            a, b = ([np.asarray(x) for x in jax.tree.leaves(t)] for t in (saved[k], v))
            assert [(x.dtype, x.shape, x.tobytes()) for x in a] == [
                (y.dtype, y.shape, y.tobytes()) for y in b
            ], k


def test_finetune_bf16_lora_keeps_the_bf16_base_and_merges_to_bf16(tiny_llama, tmp_path):
    from ecf8_cli.llm import load_causal_lm
    from ecf8_jax import Ecf8Tensor, checkpoint, decode
    from ecf8_jax.nn import compress_model

    out = tmp_path / "bf16-lora"
    rc, stdout, err = main(
        "finetune", out, "--model", tiny_llama, "--dtype", "bf16", "--steps", 2,
        "--eval-every", 2, "--eval-words", 8, "--batch-size", 4, "--learning-rate", 0.05,
        "--quiet", "--adapter", "lora",
    )  # fmt: skip
    assert rc == 0, err
    assert "re-encoded ECF8 layers (rounded to BF16, lossy)" in stdout
    leaves = jax.tree_util.tree_leaves_with_path(
        checkpoint.restore(out), is_leaf=lambda x: isinstance(x, Ecf8Tensor)
    )
    saved = {".".join(str(getattr(k, "key", k)) for k in p): v for p, v in leaves}
    base_model = compress_model(load_causal_lm(str(tiny_llama), "bf16")[0])
    base = {
        ".".join(str(getattr(k, "key", k)) for k in p): v
        for p, v in jax.tree_util.tree_leaves_with_path(
            nnx.to_pure_dict(nnx.state(base_model)), is_leaf=lambda x: isinstance(x, Ecf8Tensor)
        )
    }
    assert saved.keys() == base.keys()  # merged: no adapter, no scale
    for k, v in base.items():
        if isinstance(v, Ecf8Tensor):
            assert saved[k].dtype == "bfloat16", k
        if k.endswith(("q_proj.weight", "v_proj.weight")):
            got, want = (np.asarray(jax.vmap(decode)(t)) for t in (saved[k], v))
            assert (got.view(np.uint16) != want.view(np.uint16)).any(), k  # trained, merged
        elif k.endswith(("k_proj.weight", "o_proj.weight", "up_proj.weight")):
            a, b = (np.asarray(jax.vmap(decode)(t)) for t in (saved[k], v))
            np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))  # untouched
