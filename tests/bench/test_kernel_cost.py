"""bench.kernel_cost: its parsers on small listings, and one real compile of every kernel.

The real compile (pip triton for sm_90a, pip libtpu for v5e/v6e) is what makes a kernel change
that breaks the Mosaic compile, or starts spilling registers on sm_90a, fail CI. It runs the
CLI in a subprocess so libtpu starts with the dump flag, whatever this process did before.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest

from bench import sass, tpu_bundles

ctrl = lambda stall=1, wbar=7, rbar=7, wait=0: (  # noqa: E731
    (stall << 41) | (wbar << 46) | (rbar << 49) | (wait << 52)
)


def _sass_line(addr, text, control):
    return f"        /*{addr:04x}*/  {text} ;  /* 0x0000000000000000 */\n  /* 0x{control:016x} */\n"


def test_sass_loops_are_found_by_backward_branches_innermost_first():
    listing = "".join(
        [
            _sass_line(0x00, "MOV R1, RZ", ctrl()),
            _sass_line(0x10, "IADD3 R2, R2, 0x1, RZ", ctrl()),  # outer loop head
            _sass_line(0x20, "LDG.E R3, desc[UR4][R4.64]", ctrl(wbar=0)),  # inner loop head
            _sass_line(0x30, "ISETP.GE.AND P0, PT, R3, 0x10, PT", ctrl(wait=1)),
            _sass_line(0x40, "SEL R5, R3, RZ, P0", ctrl(stall=4)),
            _sass_line(0x50, "@P1 BRA 0x20", ctrl()),
            _sass_line(0x60, "@P2 BRA 0x10", ctrl()),
            _sass_line(0x70, "EXIT", ctrl()),
            _sass_line(0x80, "BRA 0x80", ctrl()),  # the trailing self-loop is a loop too
        ]
    )
    instrs = sass.parse_sass(listing)
    assert [i.family for i in instrs][:3] == ["MOV", "IADD3", "LDG"]
    loops = sass.find_loops(instrs)
    assert sass.Loop(0x20, 0x50) in loops and sass.Loop(0x10, 0x60) in loops
    chain = sass.loop_chain(loops, instrs)
    assert chain == [sass.Loop(0x20, 0x50), sass.Loop(0x10, 0x60)]
    body = [i for i in instrs if 0x20 <= i.address <= 0x50]
    # LDG (1) -> ISETP waits for its scoreboard (latency 100) -> 1 + 4 + 1 cycles after.
    assert sass.simulate_cycles(body, ldg_latency=100) == 100 + 1 + 4 + 1


def test_a_load_from_a_small_table_argument_is_charged_an_l1_hit():
    listing = "".join(
        [
            _sass_line(0x00, "ULDC.64 UR10, c[0x0][0x218]", ctrl()),  # argument 1: the stream
            _sass_line(0x10, "LDC.64 R6, c[0x0][0x238]", ctrl()),  # argument 5: a table
            _sass_line(0x20, "LEA R2, P2, R3, UR10, 0x2", ctrl()),
            _sass_line(0x30, "LDG.E R2, desc[UR8][R2.64]", ctrl(wbar=0)),
            _sass_line(0x40, "IMAD.WIDE R4, R2, 0x4, R6", ctrl(wait=1)),
            _sass_line(0x50, "LDG.E R4, desc[UR8][R4.64+0x4]", ctrl(wbar=1)),
            _sass_line(0x60, "SEL R5, R4, RZ, P0", ctrl(wait=2)),
        ]
    )
    instrs = sass.parse_sass(listing)
    loads = [i for i in instrs if i.family == "LDG"]
    assert [sass.load_parameter(instrs, i) for i in loads] == [1, 5]
    param_bytes = [516, 10_000_000, 2_000_000, 68, 68, 512, 16_000_000]
    l1 = sass.table_loads(instrs, param_bytes)
    assert l1 == {0x50}
    body = instrs[2:]
    # stream load (100) + IMAD (1) + table load at L1 latency + SEL (1)
    assert sass.simulate_cycles(body, 100, l1) == 2 + 100 + sass.L1_HIT_LATENCY - 1 + 1 + 1


def test_tpu_loop_levels_follow_the_lb_nesting_including_delay_slots():
    lines = ["   0x0   :  { %a = smov }", "   0x1 LB: > { %b }"]
    lines += ["   0x2   : > { %c }", "   0x3 LB: >> { %d }"]
    lines += [f"   0x{4 + i:x}   : >> {{ %e{i} }}" for i in range(5)]  # inner: 0x3 .. 0x8
    lines += ["   0x9   : > { %f = sbr.rel }", "   0xa   : >> { %delay }"]  # delay slot
    lines += ["   0xb   : > { %g }", "   0xc   :  { %h }"]
    bundles = tpu_bundles.parse_bundles("\n".join(lines))
    assert len(bundles) == 13
    assert tpu_bundles.loop_levels(bundles) == [8, 3]  # 0x3..0xa; 0x1..0xb minus inner


def test_vmem_use_adds_scoped_allocations_and_vmem_operands():
    text = (
        "#allocation2 [shape = 'u32[72,128]', space=vmem, size = 0x9000, scoped]\n"
        "#allocation3 [shape = 'u8[1024]', space=smem, size = 0x400, scoped]\n"
        "%s3 = inlined_call_operand.vmem [shape: u32[10,128], index: 3, kind: input]\n"
    )
    assert tpu_bundles.vmem_bytes(text) == 0x9000 + 10 * 128 * 4


def _tools_missing():
    # find_spec, not an import: importing libtpu here would start it in the test process.
    missing = [name for name in ("triton", "libtpu") if importlib.util.find_spec(name) is None]
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
    if (why := _tools_missing()) is not None:
        pytest.skip(f"the kernelcost extra is not installed here (missing: {why})")
    out = tmp_path_factory.mktemp("kc") / "cost.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kernel_cost", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["rows"], proc.stdout


def test_every_kernel_compiles_for_h200_v5e_and_v6e_without_spills(quick_rows):
    rows, stdout = quick_rows
    from bench import kernel_cost

    want = Counter((k.kind, "h200" if k.target == "gpu" else None) for k in kernel_cost.KERNELS)
    got = {(r["kernel"], r["target"]) for r in rows}
    for kind, target in want:
        targets = [target] if target else ["v5e", "v6e"]
        assert {(kind, t) for t in targets} <= got, (kind, targets, got)
    for r in rows:
        assert r["compiles"] is True, r["error"]
        assert r["gbps_estimate"] > 0 and r["ratio_vs_plain_estimate"] > 0
        for key in ("kernel", "target", "dtype", "weights", "m"):
            assert key in r
        if r["target"] == "h200":
            assert r["spill_bytes"] == 0, f"{r['name']} spills {r['spill_bytes']} B on sm_90a"
            assert r["sass_per_weight"] > 0 and r["registers"] > 0
        else:
            assert r["bundles_per_1024"] > 0 and r["vmem_mib"] > 0
    assert "Assumptions:" in stdout and "clock_hz" in stdout


def test_binding_estimate_is_the_lowest_bound(quick_rows):
    rows, _ = quick_rows
    for r in rows:
        bounds = ("issue_gbps", "pipe_gbps", "latency_gbps", "hbm_gbps", "cycles_gbps")
        lowest = min(r[b] for b in bounds if r.get(b) is not None)
        assert r["gbps_estimate"] <= lowest * (1 + 1e-9)
