"""The model benchmark (bench/models.py) in smoke mode: rows, ratios, JSON output."""

from __future__ import annotations

import json

from bench import models


def test_smoke_rows_report_smaller_ecf8_weights_and_memory(tmp_path, capsys):
    out = tmp_path / "models.json"
    rows = models.main(
        ["--smoke", "--repeats", "1", "--batches", "1,2", "--seq", "8", "--json", str(out)]
    )
    assert [(r["format"], r["batch"]) for r in rows] == [
        ("fp8", 1), ("fp8", 2), ("ecf8", 1), ("ecf8", 2)
    ]  # fmt: skip
    fp8, ecf8 = rows[0], rows[2]
    assert ecf8["coded_bytes"] < fp8["coded_bytes"] and ecf8["coded_vs_fp8"] < 0.95
    assert ecf8["arg_bytes"] < fp8["arg_bytes"] and ecf8["arg_vs_fp8"] < 0.9
    # Layers under a scan: at most one decoded layer more temporaries than FP8.
    assert ecf8["temp_over_fp8"] <= ecf8["layer_bytes"], ecf8
    assert all(r["latency_ms"] > 0 for r in rows) and fp8["latency_vs_fp8"] == 1.0
    doc = json.loads(out.read_text())
    assert doc["meta"]["benchmark"] == "models" and len(doc["rows"]) == 4
    assert "tiny-llama" in capsys.readouterr().out


def test_smoke_bf16_rows_compare_with_the_raw_bf16_model():
    rows = models.main(["--smoke", "--repeats", "1", "--batches", "1", "--seq", "8",
                        "--dtypes", "bf16"])  # fmt: skip
    assert [r["format"] for r in rows] == ["bf16", "ecf8-bf16"]
    raw, coded = rows
    assert raw["coded_vs_fp8"] == 1.0 and raw["latency_vs_fp8"] == 1.0
    assert coded["coded_bytes"] < 0.9 * raw["coded_bytes"]  # random normal bf16: ~11 of 16 bits
    # No temp bound here: at this tiny size the decoder's fixed working arrays dominate (~8x a
    # 300 KB layer); at MiniLM / SmolLM2 sizes ~1.4 layers (BENCHMARKS.md, "BF16 models").
    assert coded["temp_bytes"] > 0
