"""bench/gpu.py keeps working without a GPU: ``--smoke`` runs its kernels in interpret mode."""

from __future__ import annotations

import json

from bench import gpu


def test_gpu_bench_smoke_checks_every_kernel_bit_exactly(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    rows = gpu.main(["--smoke", "--json", str(out)])
    ops = [r["op"] for r in rows]
    assert ops.count("decode") == len(gpu.SMOKE_DECODE_SIZES)
    assert ops.count("matmul") == len(gpu.SMOKE_MATMUL_SIZES) * len(gpu.SMOKE_BATCHES)
    assert {"copy", "fp8->bf16"} <= set(ops)
    checked = [r for r in rows if r["op"] in ("decode", "matmul")]
    assert all(r["exact"] == "True" for r in checked)
    assert all(0 < r["bpw"] < 8 for r in checked)
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] is True and len(doc["rows"]) == len(rows)
    assert "bit-exact" in capsys.readouterr().out


def test_a_failing_section_becomes_an_error_row_and_the_run_fails(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("Triton rejected the kernel")

    monkeypatch.setattr(gpu, "bench_matmul", broken)
    try:
        gpu.main(["--smoke"])
    except SystemExit as e:
        assert "section failed" in str(e)
    else:
        raise AssertionError("expected a non-zero exit")
    out = capsys.readouterr()
    assert "ERROR RuntimeError" in out.out and "Triton rejected" in out.err
    assert "decode" in out.out  # the other sections still ran and were printed
