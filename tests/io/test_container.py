"""``ecf8_jax.io.container``: pack, verify, unpack and inspect from Python, without the CLI."""

from __future__ import annotations

import contextlib
import io
import json

import ml_dtypes
import numpy as np
import pytest

from ecf8_jax.io import container, read_safetensors
from ecf8_jax.io import safetensors_raw as sr

E4M3, BF16 = ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16


def _fp8(rng, shape):
    return rng.standard_normal(shape).astype(np.float32).astype(E4M3)


def _sharded_folder(folder, rng):
    folder.mkdir()
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.layers.0.mlp.down_proj.weight": _fp8(rng, (128, 256)),
            "model.layers.0.input_layernorm.weight": rng.standard_normal(256).astype(BF16),
        },
        "model-00002-of-00002.safetensors": {
            "lm_head.weight": _fp8(rng, (64, 256)),
            "lm_head.weight_scale": rng.random((64, 1), dtype=np.float32),
        },
    }
    weight_map = {}
    for name, tensors in shards.items():
        sr.write(folder / name, tensors, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / container.INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_a_model_folder_packs_verifies_and_unpacks_byte_for_byte_from_python(tmp_path):
    src = _sharded_folder(tmp_path / "model", np.random.default_rng(0))
    report = container.pack(src, tmp_path / "ck")
    assert report.summary["tensors"] == 4 and report.summary["fp8_tensors"] == 2
    assert report.summary["ecf8_bytes"] < report.summary["original_bytes"]
    assert container.verify(tmp_path / "ck", src)[1] == 4
    _, written = container.unpack(tmp_path / "ck", tmp_path / "copy")
    assert sorted(p.name for p in written) == sorted(p.name for p in src.iterdir())
    for p in src.iterdir():
        assert (tmp_path / "copy" / p.name).read_bytes() == p.read_bytes(), p.name
    summary, rows = container.inspect(tmp_path / "ck")
    assert summary["ecf8_bytes"] == report.summary["ecf8_bytes"]
    assert [r["tensor"] for r in rows] == [r["tensor"] for r in report.rows]


def _bf16_folder(folder, rng, *, index: bool):
    """A BF16 Hugging Face style folder in two shards (with or without the index), the
    awkward bit patterns included."""
    folder.mkdir()
    w = (rng.standard_normal((96, 128)) * 0.02).astype(BF16)
    w.reshape(-1)[:8] = np.array([0, 0x8000, 1, 0x8001, 0x7F80, 0xFF80, 0x7FC1, 0xFFFF],
                                 np.uint16).view(BF16)  # fmt: skip
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.layers.0.mlp.down_proj.weight": w,
            "model.layers.0.input_layernorm.weight": np.ones(128, BF16),
        },
        "model-00002-of-00002.safetensors": {
            "model.embed_tokens.weight": (rng.standard_normal((50, 128)) * 0.02).astype(BF16),
            "model.layers.0.mlp.up_proj.weight": (rng.standard_normal((64, 128))).astype(
                np.float16
            ),
            "rope.inv_freq": np.arange(8, dtype=np.float32),
        },
    }
    weight_map = {}
    for name, tensors in shards.items():
        sr.write(folder / name, tensors, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    if index:
        (folder / container.INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("index", [True, False])
def test_a_bf16_folder_is_coded_and_unpacks_byte_for_byte(tmp_path, index):
    src = _bf16_folder(tmp_path / "model", np.random.default_rng(7), index=index)
    report = container.pack(src, tmp_path / "ck")
    s = report.summary
    assert s["tensors"] == 5 and s["coded_tensors"] == 4 and s["fp8_tensors"] == 0
    assert not report.nothing_to_compress and s["saved_percent"] > 10
    rows = {r["tensor"]: r for r in report.rows}
    assert rows["model.layers.0.mlp.down_proj.weight"]["bits_per_weight"] < 16
    assert "bits_per_weight" not in rows["rope.inv_freq"]  # F32 stays as it is
    assert container.verify(tmp_path / "ck", src)[1] == 5
    _, written = container.unpack(tmp_path / "ck", tmp_path / "copy")
    assert sorted(p.name for p in written) == sorted(p.name for p in src.iterdir())
    for p in src.iterdir():
        assert (tmp_path / "copy" / p.name).read_bytes() == p.read_bytes(), p.name
    summary, inspected = container.inspect(tmp_path / "ck")
    assert summary["ecf8_bytes"] == s["ecf8_bytes"]
    hist = {r["tensor"]: r for r in inspected}["model.embed_tokens.weight"]["exponent_histogram"]
    assert len(hist) == 256  # the bfloat16 exponent field


def test_verify_names_the_tensor_that_differs(tmp_path):
    rng = np.random.default_rng(1)
    w = _fp8(rng, (8, 8))
    sr.write(tmp_path / "a.safetensors", {"w": w})
    container.pack(tmp_path / "a.safetensors", tmp_path / "ck")
    flipped = w.view(np.uint8).copy()
    flipped[3, 3] ^= 1
    sr.write(tmp_path / "a.safetensors", {"w": flipped.view(E4M3)})
    with pytest.raises(container.ContainerError, match=r"tensor 'w' differs .*\(1 of 64 bytes\)"):
        container.verify(tmp_path / "ck", tmp_path / "a.safetensors")


def test_a_float32_model_reports_that_there_is_nothing_to_compress(tmp_path):
    from ecf8_cli import cli

    rng = np.random.default_rng(2)
    sr.write(tmp_path / "f32.safetensors", {"w": rng.standard_normal((8, 8)).astype(np.float32)})
    report = container.pack(tmp_path / "f32.safetensors", tmp_path / "ck")
    assert report.nothing_to_compress and report.summary["dtypes"] == {"F32": 1}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["compress", str(tmp_path / "f32.safetensors"), str(tmp_path / "ck2")])
    assert rc == 0
    note = out.getvalue().strip().splitlines()[-1]
    assert "nothing to compress" in note and "1 F32" in note and "--cast fp8-row" in note


def test_read_safetensors_and_pack_resolve_a_folder_alike(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "m"
    folder.mkdir()
    sr.write(folder / "b.safetensors", {"x": _fp8(rng, (4,))})
    sr.write(folder / "a.safetensors", {"y": _fp8(rng, (4,))})
    source = container.resolve_source(folder)
    assert [name for name, _ in source.files] == ["a.safetensors", "b.safetensors"]
    assert sorted(read_safetensors(folder)) == ["x", "y"]
    with pytest.raises(container.ContainerError, match="no such file"):
        container.resolve_source(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.self_attn.q_proj.weight", (3, "self_attn.q_proj.weight")),
        ("blk.12.attn_q.weight", (12, "attn_q.weight")),
        ("encoder.layer.5.attention.self.query.weight", (5, "attention.self.query.weight")),
        ("model.embed_tokens.weight", (None, "model.embed_tokens.weight")),
    ],
)
def test_split_name_finds_the_layer_and_the_kind(name, expected):
    assert container.split_name(name) == expected


def _many_rows(layers=40, kinds=7):
    rows = []
    for i in range(layers):
        for k in range(kinds):
            rows.append(
                {
                    "tensor": f"model.layers.{i}.block.kind{k}.weight",
                    "shape": [16, 16 * (k + 1)],
                    "bits_per_weight": 4.0 + k,
                    "exponent_entropy": 2.0 + 0.01 * i,
                    "exponent_histogram": [1] * 16,
                }
            )
    rows.append({"tensor": "model.norm.weight", "shape": [16], "ecf8_bytes": 32})
    return rows


def test_group_rows_weights_bits_by_weight_count():
    rows = _many_rows()
    by_layer = container.group_rows(rows, "layer")
    assert [g["group"] for g in by_layer] == list(range(40))  # the uncoded norm is not counted
    n = [256 * (k + 1) for k in range(7)]
    want = sum((4.0 + k) * n[k] for k in range(7)) / sum(n)
    assert by_layer[0]["bits_per_weight"] == pytest.approx(want)
    by_kind = container.group_rows(rows, "kind")
    assert [g["group"] for g in by_kind] == [f"block.kind{k}.weight" for k in range(7)]
    assert [g["tensors"] for g in by_kind] == [40] * 7
    assert by_kind[2]["bits_per_weight"] == pytest.approx(6.0)


def test_the_inspect_plot_of_hundreds_of_tensors_has_few_labels():
    pytest.importorskip("matplotlib")
    from ecf8_cli.common import pyplot
    from ecf8_cli.files import checkpoint_figure

    fig = checkpoint_figure(_many_rows())  # 280 coded tensors
    try:
        _, layer_ax, kind_ax = fig.axes
        assert len(kind_ax.get_yticklabels()) == 7
        assert len(layer_ax.get_xticklabels()) <= 20
        assert "bits/weight" in [t.get_text() for t in layer_ax.get_legend().get_texts()]
    finally:
        pyplot().close(fig)
