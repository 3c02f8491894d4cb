"""bench/gpu.py keeps working without a GPU: ``--smoke`` runs its kernels in interpret mode."""

from __future__ import annotations

import json

import pytest

from bench import gpu, gpu_plan


def test_gpu_bench_smoke_checks_every_kernel_bit_exactly(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    estimates = []

    def fake_estimate(kind, weights, **settings):
        estimates.append((kind, weights, settings))
        return 2.0  # GB/s

    rows = gpu.main(["--smoke", "--json", str(out)], estimate=fake_estimate)
    ops = [r["op"] for r in rows]
    assert ops.count("decode") == len(gpu.SMOKE_DECODE_SIZES)
    matmuls = len(gpu.SMOKE_MATMUL_SIZES) * len(gpu.SMOKE_BATCHES)
    assert ops.count("matmul") == ops.count("fp8 twin") == matmuls
    assert ops.count("gemv v2") == ops.count("gemv twin") == matmuls
    sweeps = sum(len(c) for c in gpu.SMOKE_SWEEP.values())
    assert ops.count("sweep") == sweeps
    assert {"copy", "fp8->bf16"} <= set(ops)
    checked = [r for r in rows if r["op"] in ("decode", "matmul", "sweep", "gemv v2")]
    assert all(r["exact"] == "True" for r in checked)
    assert all(0 < r["bpw"] < 8 for r in checked)
    # every Pallas row (the raw-FP8 twins too) carries its static estimate and measured / est
    assert len(estimates) == len(checked) + ops.count("fp8 twin") + ops.count("gemv twin")
    for r in checked:
        assert r["est"] == 2.0 and r["meas_over_est"] == pytest.approx(r["gbps"] / 2.0)
    sweep_settings = {
        (s["warps"], s["steps"]) for k, _, s in estimates if k == "decode" and "warps" in s
    }
    assert {tuple(c) for cfg in gpu.SMOKE_SWEEP.values() for c in cfg} <= sweep_settings
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


def test_timing_issues_many_calls_per_synchronisation(monkeypatch):
    calls, syncs = [], []
    monkeypatch.setattr(gpu, "CALLS", 7)
    monkeypatch.setattr(gpu.jax, "block_until_ready", lambda x: syncs.append(x))
    seconds = gpu._timed(lambda: calls.append(1) or len(calls), repeats=3)
    assert len(calls) == 7 * (3 + 1)  # warm-up burst + 3 timed bursts
    assert len(syncs) == 4 and syncs[0] == 7  # one sync per burst, on the burst's last result
    assert seconds >= 0


def test_a_measured_row_compares_with_its_static_estimate():
    row = gpu.measured_row("decode", "1 GiB", 0.01, 1 << 30, 50.0, exact=True, bpw=6.6)
    assert row["gbps"] == pytest.approx((1 << 30) / 1e9 / 0.01)
    assert row["meas_over_est"] == pytest.approx(row["gbps"] / 50.0)
    assert row["exact"] == "True"
    assert gpu.measured_row("sweep", "x", 1.0, 10, None)["meas_over_est"] is None


def test_arguments_are_checked():
    args = gpu.parse_args(["--calls", "50", "--no-estimate"])
    assert args.calls == 50 and args.no_estimate
    with pytest.raises(SystemExit, match="--calls"):
        gpu.main(["--calls", "0"])


def test_the_full_sweep_stays_inside_the_time_budget():
    # Host-side encodes dominate: at most two 1 GiB encodes (the decode row's default
    # chunk_steps and one other), so the 8-minute budget in the docstring holds.
    big = [s for s in gpu.SWEEP if s >= 1 << 30]
    assert all(len({steps for _, steps in gpu.SWEEP[s]}) <= 2 for s in big)
    assert sum(len(c) for c in gpu.SWEEP.values()) <= 20


def test_an_estimates_file_from_kernel_cost_covers_every_measured_row(tmp_path):
    # The rows bench.kernel_cost --gpu-bench writes, one per request, as its --json has them.
    requests = gpu_plan.estimate_requests(smoke=True)
    rows = [
        {
            "name": gpu_plan.ESTIMATE_KERNELS[r["kind"]],
            "kernel": "decode" if r["kind"] == "decode" else "matmul",
            "target": "h200",
            "weights": r["weights"],
            "num_warps": r.get("warps", 4),
            "chunk_steps": r["steps"],
            "m": r.get("m"),
            "gbps_estimate": 3.0 + i,
        }
        for i, r in enumerate(requests)
    ]
    path = tmp_path / "est.json"
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    measured = gpu.main(["--smoke", "--estimates", str(path)])
    checked = [
        r
        for r in measured
        if r["op"] in ("decode", "matmul", "sweep", "fp8 twin", "gemv v2", "gemv twin")
    ]
    assert len(checked) == len(requests) and all(r["est"] is not None for r in checked)
    assert len({r["est"] for r in checked}) == len(checked)  # each row found its own estimate
