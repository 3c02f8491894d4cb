"""Tests of the checkpoint benchmark (bench/checkpoint.py)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from bench import checkpoint as bench


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "checkpoint.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = bench.main(["--smoke", "--json", str(path)])
    return rows, json.loads(path.read_text()), out.getvalue()


def test_smoke_rows_compare_raw_fp8_and_ecf8_checkpoints(smoke_run):
    rows, doc, table = smoke_run
    assert [r["form"] for r in doc["rows"]] == ["raw FP8", "ECF8"]
    assert doc["meta"]["benchmark"] == "checkpoint" and doc["meta"]["smoke"] is True
    raw, ecf8 = doc["rows"]
    assert raw["n_tensors"] == ecf8["n_tensors"] == bench.SMOKE_TENSORS
    assert raw["n_weights"] == 3 * 384 * 384 == raw["in_memory_bytes"]
    # ECF8 is incompressible: on disk it is its in-memory size plus Orbax's few files. Orbax
    # zstd-compresses raw FP8 chunks, so that one is smaller on disk than in memory.
    assert ecf8["in_memory_bytes"] < ecf8["on_disk_bytes"] < 1.05 * ecf8["in_memory_bytes"]
    assert raw["on_disk_bytes"] < raw["in_memory_bytes"]
    assert ecf8["disk_bpw"] < 7
    for row in doc["rows"]:
        assert row["save_s"] > 0 and row["restore_s"] > 0
    assert "disk/raw FP8" in table


def test_a_restore_that_differs_fails_loudly():
    saved = {"w": np.arange(4, dtype=np.uint8)}
    with pytest.raises(bench.RoundTripError, match="x: restored bytes differ"):
        bench._check_equal(saved, {"w": np.arange(1, 5, dtype=np.uint8)}, "x")
