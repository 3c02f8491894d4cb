"""Tests of the compression benchmark (bench/compression.py) and its shared helpers."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math

import jax
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from bench import common, compression
from ecf8_jax.quantize import quantize_fp8

HAS_ZIPNN = all(importlib.util.find_spec(m) is not None for m in ("torch", "zipnn"))

SIZE_KEYS = {"ecf8_bpw", "zstd_bpw", "zipnn_bpw"}
SPEED_KEYS = {
    f"{codec}_{direction}_mbps"
    for codec in ("ecf8", "zstd", "zipnn")
    for direction in ("encode", "decode")
}
ZIPNN_KEYS = {"zipnn_bpw", "zipnn_encode_mbps", "zipnn_decode_mbps", "zipnn_vs_zstd"}
EXPECTED_KEYS = (
    {"corpus", "dtype", "granularity", "n_tensors", "n_weights"}
    | SIZE_KEYS
    | SPEED_KEYS
    | {"ecf8_vs_zstd", "zipnn_vs_zstd", "ecf8_decode_vs_zstd"}
    | {"byte_entropy", "byte_entropy_pooled", "exponent_entropy", "exponent_entropy_pooled"}
    | {"raw_plus_exponent_entropy", "ecf8_breakdown_bpw"}
)


def _reject_nan(constant):
    raise ValueError(f"non-standard JSON constant {constant}")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``python -m bench.compression --smoke --json FILE``, run once: (rows, JSON, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "compression.json"
    out = io.StringIO()  # capsys is function-scoped; this fixture runs once per module
    with contextlib.redirect_stdout(out):
        rows = compression.main(["--smoke", "--json", str(path)])
    doc = json.loads(path.read_text(), parse_constant=_reject_nan)
    return rows, doc, out.getvalue()


def _fp8_rows(doc):
    return [r for r in doc["rows"] if r["dtype"] == "float8_e4m3fn"]


def _bf16_rows(doc):
    return [r for r in doc["rows"] if r["dtype"] == "bfloat16"]


def test_smoke_json_has_one_row_per_corpus_with_the_expected_keys(smoke_run):
    rows, doc, _ = smoke_run
    assert set(doc) == {"meta", "rows"}
    assert [r["corpus"] for r in doc["rows"]] == [r["corpus"] for r in rows]
    assert len(doc["rows"]) == len(_fp8_rows(doc)) + len(_bf16_rows(doc))
    names = [r["corpus"] for r in _fp8_rows(doc)]
    assert len(names) == 5
    assert names[0].startswith("MiniLM") and names[0].endswith("per-row")
    assert names[1].startswith("MiniLM") and names[1].endswith("per-tensor")
    assert [n.split()[0] for n in names[2:]] == ["Gaussian", "Student-t(3)", "alpha-stable(1.7)"]
    for row in _fp8_rows(doc):
        assert set(row) >= EXPECTED_KEYS, EXPECTED_KEYS - set(row)
    minilm = doc["rows"][0]
    assert minilm["n_tensors"] == compression.SMOKE_MINILM_TENSORS
    assert minilm["n_weights"] == 3 * 384 * 384  # query, key, value of layer 0
    assert all(r["n_weights"] == compression.SMOKE_SYNTHETIC_SIZE for r in _fp8_rows(doc)[2:])


def test_smoke_header_records_versions_date_and_command(smoke_run):
    meta = smoke_run[1]["meta"]
    assert meta["jax"] == jax.__version__
    assert meta["date"][:2] == "20"
    assert meta["argv"] == ["--smoke", "--json", meta["argv"][2]]
    assert meta["smoke"] is True and meta["repeats"] == 1 and meta["zstd_level"] == 3
    assert isinstance(meta["command"], str)


def test_smoke_bits_per_weight_are_within_entropy_bounds(smoke_run):
    for row in _fp8_rows(smoke_run[1]):
        name = row["corpus"]
        for key in ("ecf8_bpw", "zstd_bpw", "byte_entropy", "byte_entropy_pooled"):
            assert 0 < row[key] <= 8.5, (name, key, row[key])
        assert 0 < row["exponent_entropy"] <= 4
        assert row["raw_plus_exponent_entropy"] == pytest.approx(4 + row["exponent_entropy"])
        # ECF8 is an order-0 code of the byte per tensor (per chunk at best), plus overhead.
        assert row["ecf8_bpw"] > row["byte_entropy"] - 0.01, name
        assert row["byte_entropy"] <= row["byte_entropy_pooled"] + 1e-9, name
        assert row["ecf8_vs_zstd"] == pytest.approx(row["ecf8_bpw"] / row["zstd_bpw"])
        assert sum(row["ecf8_breakdown_bpw"].values()) == pytest.approx(row["ecf8_bpw"])
    for row in smoke_run[1]["rows"][:2]:
        assert row["ecf8_bpw"] < 8, "ECF8 must compress real MiniLM weights"
        assert row["ecf8_bpw"] < row["raw_plus_exponent_entropy"] + 0.3


BF16_KEYS = (
    {"corpus", "dtype", "n_tensors", "n_units", "n_weights", "ecf8_bpw", "dfloat11_bpw"}
    | {"zstd_bpw", "zipnn_bpw", "ecf8_vs_dfloat11", "saved_percent", "exponent_entropy"}
    | {"raw_plus_exponent_entropy", "byte_entropy", "value_entropy", "dfloat11_breakdown_bpw"}
    | SPEED_KEYS
)


def test_smoke_bf16_rows_beat_dfloat11_and_stay_within_their_bounds(smoke_run):
    rows = _bf16_rows(smoke_run[1])
    names = [r["corpus"].split()[0] for r in rows]
    assert names == ["MiniLM-L6", "SmolLM2-135M", "Gaussian", "Student-t(3)", "random"]
    for row in rows:
        name = row["corpus"]
        assert set(row) >= BF16_KEYS, BF16_KEYS - set(row)
        assert row["ecf8_bpw"] < row["dfloat11_bpw"], name
        assert sum(row["dfloat11_breakdown_bpw"].values()) == pytest.approx(row["dfloat11_bpw"])
        assert sum(row["ecf8_breakdown_bpw"].values()) == pytest.approx(row["ecf8_bpw"])
        # Order-0 coding of bits 14..7 with 8 raw bits: never below 8 + H(exp) per tensor.
        assert row["ecf8_bpw"] > row["raw_plus_exponent_entropy"] - 0.01, name
        assert row["value_entropy"] <= row["byte_entropy"] + 1e-9, name
    assert rows[-1]["ecf8_bpw"] <= 16.05  # random 16-bit patterns
    for row in rows[:4]:
        assert row["ecf8_bpw"] < 11.2, row["corpus"]
    minilm = rows[0]
    assert minilm["n_tensors"] == compression.SMOKE_MINILM_TENSORS and minilm["n_units"] == 1
    assert rows[1]["n_tensors"] == compression.SMOKE_SMOLLM2_TENSORS


def test_dfloat11_units_are_transformer_layers():
    names = ["encoder.layer.0.a.weight", "encoder.layer.0.b.weight", "encoder.layer.1.a.weight",
             "pooler.dense.weight", "token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight",
             "blk.1.attn_q.weight"]  # fmt: skip
    units = compression._units_by_prefix(names, compression._layer_prefix)
    assert units == [[0, 1], [2], [3], [4], [5, 6], [7]]


def test_formats_option_selects_the_tables():
    assert compression.parse_args([]).formats == ["fp8", "bf16"]
    assert compression.parse_args(["--formats", "bf16"]).formats == ["bf16"]
    with pytest.raises(SystemExit):
        compression.parse_args(["--formats", "fp4"])


def test_smoke_speeds_are_positive_numbers(smoke_run):
    for row in smoke_run[1]["rows"]:
        for key in SPEED_KEYS - ZIPNN_KEYS:
            assert isinstance(row[key], float) and row[key] > 0, (row["corpus"], key)


def test_zipnn_columns_are_numbers_when_installed_and_null_otherwise(smoke_run):
    _, doc, table = smoke_run
    for row in doc["rows"]:
        for key in ZIPNN_KEYS:
            if HAS_ZIPNN:
                assert isinstance(row[key], float) and row[key] > 0, (row["corpus"], key)
            else:
                assert row[key] is None, (row["corpus"], key)
    assert ("n/a" in table) == (not HAS_ZIPNN)


@pytest.mark.torch
def test_zipnn_loads_where_torch_and_zipnn_are_installed():
    assert compression.load_zipnn() is not None


def _tiny_corpus() -> compression.Corpus:
    q, _ = quantize_fp8(compression.synthetic_weights("Gaussian", 4096))
    return compression.Corpus("tiny", "row", [q])


def test_a_bit_flip_in_ecf8_decode_fails_loudly(monkeypatch):
    real_decode = ecf8_jax.decode

    def corrupt_decode(t):
        out = real_decode(t)
        bits = jax.lax.bitcast_convert_type(out, np.uint8)
        bits = bits.reshape(-1).at[5].set(bits.reshape(-1)[5] ^ 1).reshape(out.shape)
        return jax.lax.bitcast_convert_type(bits, out.dtype)

    monkeypatch.setattr(ecf8_jax, "decode", corrupt_decode)
    with pytest.raises(compression.RoundTripError, match="ECF8.*1 of 4096 bytes differ"):
        compression.bench_ecf8(_tiny_corpus(), repeats=1, chunk_steps=None)


def test_a_bit_flip_in_a_byte_codec_fails_loudly():
    corpus = _tiny_corpus()
    raws = [corpus.tensors[0].tobytes()]

    def corrupt(b: bytes) -> bytes:
        return bytes([b[0] ^ 0x80]) + b[1:]

    with pytest.raises(compression.RoundTripError, match="fake did not round-trip"):
        compression.bench_bytes_codec("fake", bytes, corrupt, corpus, raws, repeats=1)


def test_minilm_has_37_linear_tensors_of_10_76m_weights():
    weights = compression.minilm_linear_weights()
    assert len(weights) == 37
    assert sum(w.size for w in weights.values()) == 10_764_288
    assert all(w.ndim == 2 and w.dtype == np.float32 for w in weights.values())
    assert not any(name.startswith("embeddings.") for name in weights)


def test_synthetic_weights_are_seeded_and_shaped_as_4096_wide_rows():
    a = compression.synthetic_weights("Student-t(3)", 2 * 4096)
    b = compression.synthetic_weights("Student-t(3)", 2 * 4096)
    assert a.shape == (2, 4096) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    c = compression.synthetic_weights("Gaussian", 2 * 4096)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="multiple of 4096"):
        compression.synthetic_weights("Gaussian", 4096 + 1)


def test_alpha_stable_sampler_matches_gaussian_and_cauchy_special_cases():
    rng = np.random.default_rng(0)
    # alpha = 2: N(0, 2), variance 2.
    assert np.var(compression.sample_alpha_stable(rng, 2.0, 200_000)) == pytest.approx(2, rel=0.03)
    # alpha = 1: standard Cauchy, median |X| = 1.
    cauchy = compression.sample_alpha_stable(rng, 1.0, 200_000)
    assert np.median(np.abs(cauchy)) == pytest.approx(1, rel=0.02)
    # alpha = 1.7: symmetric, heavier tails than a Gaussian (P(|X| > 10) ~ C 10**-1.7).
    x = compression.sample_alpha_stable(rng, 1.7, 200_000)
    assert abs(np.median(x)) < 0.02
    assert 0.005 < np.mean(np.abs(x) > 10) < 0.05
    with pytest.raises(ValueError, match="alpha"):
        compression.sample_alpha_stable(rng, 2.5, 10)


def test_entropy_columns_of_a_hand_made_corpus():
    # Two tensors: one with bytes {0x38 (1.0), 0xB8 (-1.0)} equally often, one all 0x40 (2.0).
    # Per tensor: H(byte) = 1 and 0, exponent entropy 0 and 0; pooled over 4 + 4 weights:
    # bytes {0x38: 2, 0xB8: 2, 0x40: 4} -> 1.5 bits, exponents {7: 4, 8: 4} -> 1 bit.
    one = np.array([0x38, 0xB8, 0x38, 0xB8], np.uint8).view(ml_dtypes.float8_e4m3fn)
    two = np.full(4, 0x40, np.uint8).view(ml_dtypes.float8_e4m3fn)
    cols = compression.entropy_columns([one, two])
    assert cols["byte_entropy"] == pytest.approx(0.5)
    assert cols["byte_entropy_pooled"] == pytest.approx(1.5)
    assert cols["exponent_entropy"] == pytest.approx(0.0)
    assert cols["exponent_entropy_pooled"] == pytest.approx(1.0)
    assert cols["raw_plus_exponent_entropy"] == pytest.approx(4.0)


# ------------------------------------------------------------------------- bench/common.py


def test_median_time_calls_warmup_plus_repeats_times():
    calls = []
    t = common.median_time(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and t >= 0
    with pytest.raises(ValueError, match="repeats"):
        common.median_time(lambda: None, repeats=0)


def test_format_table_aligns_columns_and_prints_none_as_na():
    rows = [{"name": "a", "x": 1.23456, "n": 1000}, {"name": "longer", "x": None, "n": 7}]
    cols = [common.Column("name", "name"), common.Column("x", "x", ".2f"), common.Column("n", "n")]
    lines = common.format_table(rows, cols).splitlines()
    assert lines[0].split() == ["name", "x", "n"]
    assert lines[2] == "a       1.23  1000"
    assert lines[3] == "longer   n/a     7"
    assert len({len(line) for line in lines[1:3]}) == 1


def test_write_json_is_strict_json_with_numpy_values(tmp_path):
    path = tmp_path / "sub" / "out.json"
    rows = [{"a": np.float32(1.5), "b": np.int64(3), "c": math.nan, "d": {"e": np.inf}}]
    common.write_json(path, rows, meta={"k": "v"})
    doc = json.loads(path.read_text(), parse_constant=_reject_nan)
    assert doc == {"meta": {"k": "v"}, "rows": [{"a": 1.5, "b": 3, "c": None, "d": {"e": None}}]}


def test_add_json_arg_parses_a_path():
    parser = argparse.ArgumentParser()
    common.add_json_arg(parser)
    assert parser.parse_args([]).json is None
    assert str(parser.parse_args(["--json", "x.json"]).json) == "x.json"
