"""Compiled facts of a Pallas Mosaic kernel for a real TPU (v5e, v6e), counted on a CPU host.

Why: pip ``libtpu`` holds the real XLA:TPU and Mosaic compilers, and
``jax.experimental.topologies.get_topology_desc`` gives a device to compile for without one.
With ``LIBTPU_INIT_ARGS=--xla_jf_dump_to=DIR`` the compiler writes every kernel's final VLIW
bundles (``*-<name>*-final_bundles.txt``): one line is one bundle, about one cycle; loop bodies
start at a line marked ``LB:``, their nesting shows as ``>``, ``>>``, ``>>>``. A VMEM overflow
fails the compile exactly as on a TPU, so "does it compile" is a fact too.

``LIBTPU_INIT_ARGS`` is read once, when libtpu initialises, so :func:`prepare` must run before
the first ``get_topology_desc`` of the process.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

TOPOLOGIES = {"v5e": "v5e:1x1", "v6e": "v6e:1x1"}
_DUMP_DIR: Path | None = None


def prepare() -> Path:
    """Points libtpu's dumps at a fresh folder of this process (idempotent); returns it.

    Also lets libtpu load while another process of the machine holds its lock file (only
    ``jax``'s own CPU-host probe takes it; compiling for a topology needs no device).
    """
    global _DUMP_DIR
    if _DUMP_DIR is None:
        _DUMP_DIR = Path(tempfile.mkdtemp(prefix="kernel-cost-tpu-"))
        atexit.register(shutil.rmtree, _DUMP_DIR, ignore_errors=True)  # ~30 MB per compile
        flag = f"--xla_jf_dump_to={_DUMP_DIR}"
        os.environ["LIBTPU_INIT_ARGS"] = f"{os.environ.get('LIBTPU_INIT_ARGS', '')} {flag}".strip()
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return _DUMP_DIR


def available() -> str | None:
    """None if libtpu can compile for a TPU topology here, else why not."""
    if importlib.util.find_spec("libtpu") is None:
        return "pip libtpu is not installed (pip install -e .[kernelcost])"
    return None


@dataclasses.dataclass
class TpuFacts:
    """What the compiled kernel is, or why it did not compile.

    Attributes:
      error: None, or the compiler's message (e.g. a VMEM allocation that does not fit).
      levels: per loop level, innermost first: bundles exclusive to that level.
      vmem_bytes: VMEM the kernel uses: its scoped allocations plus operands XLA placed in
        VMEM.
      loop_count: ``LB:`` markers in the kernel's bundles.
    """

    error: str | None = None
    levels: list[int] = dataclasses.field(default_factory=list)
    vmem_bytes: int | None = None
    loop_count: int = 0


_LINE = re.compile(r"^\s*(0x[0-9a-f]+|\d+)\s+(LB:|LH:|LE:|PB:|PF:|CT:)?\s*:?\s*(>*)\s*\{")


def parse_bundles(text: str) -> list[tuple[int, bool, int]]:
    """``(address, starts a loop body, nesting depth)`` per bundle line of a final-bundles dump."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m.group(1), 0), m.group(2) == "LB:", len(m.group(3))))
    return out


def loop_levels(bundles: Sequence[tuple[int, bool, int]]) -> list[int]:
    """Bundles exclusive to each loop level, innermost first.

    A loop body at depth d spans from its ``LB:`` line to the last bundle at depth >= d before
    the next bundle of depth < d - 1 or the end (branch delay slots included). The chain
    follows the deepest ``LB:``, then each enclosing one.
    """
    heads = [(i, d) for i, (_, lb, d) in enumerate(bundles) if lb]
    if not heads:
        return []

    def span(i, d):
        last = i
        for j in range(i + 1, len(bundles)):
            depth = bundles[j][2]
            if depth < d - 1 or (depth < d and bundles[j][1]):
                break
            if depth >= d:
                last = j
        return last - i + 1

    deepest = max(heads, key=lambda h: h[1])
    chain = [deepest]
    while True:
        i, d = chain[-1]
        outer = [h for h in heads if h[1] == d - 1 and h[0] < i]
        if not outer:
            break
        chain.append(max(outer, key=lambda h: h[0]))
    spans = [span(i, d) for i, d in chain]
    return [spans[0]] + [spans[k] - spans[k - 1] for k in range(1, len(spans))]


_ALLOC = re.compile(r"space=vmem, size = (0x[0-9a-f]+)")
_OPERAND = re.compile(r"inlined_call_operand\.vmem \[shape: (\w+?)(\d+)\[([\d,]*)\]")


def vmem_bytes(text: str) -> int:
    """Scoped VMEM allocations plus VMEM operands of one kernel's LLO dump."""
    total = sum(int(s, 16) for s in set(_ALLOC.findall(text)))
    for _, bits, dims in _OPERAND.findall(text):
        total += int(np.prod([int(d) for d in dims.split(",") if d] or [1])) * int(bits) // 8
    return total


def tpu_facts(target: str, compile_fn: Callable[[object], object], kernel_name: str) -> TpuFacts:
    """Compiles for ``target`` ("v5e" / "v6e") and reads the kernel's bundles.

    Args:
      target: a key of ``TOPOLOGIES``.
      compile_fn: ``device -> compiled``; lowers and compiles the program with its inputs
        placed on ``device`` (a device of the topology) inside the abstract TPU mesh.
      kernel_name: the ``pallas_call`` name (the dump file names start with it).
    """
    dump = prepare()
    from jax.experimental import topologies  # noqa: PLC0415

    topo = topologies.get_topology_desc(TOPOLOGIES[target], "tpu")
    shutil.rmtree(dump, ignore_errors=True)
    dump.mkdir(parents=True, exist_ok=True)
    try:
        compile_fn(topo.devices[0])
    except Exception as e:  # noqa: BLE001 - a compile error is a fact to report
        msg = str(e).strip().splitlines()
        first = msg[0].split(" :: ")[0] if msg else ""  # drop the allocation dump
        return TpuFacts(error=f"{type(e).__name__}: {first}"[:200])
    files = sorted(dump.glob(f"*-{kernel_name}*-final_bundles.txt"))
    files = [f for f in files if "schedule-analysis" not in f.name]
    if not files:
        return TpuFacts(error=f"no final-bundles dump for {kernel_name!r} (caching hit?)")
    bundles = parse_bundles(files[-1].read_text())
    prefix = files[-1].name.split("-final_bundles")[0].rsplit("-", 1)[0]
    originals = sorted(dump.glob(f"{prefix}-*-original.txt"))
    vmem = vmem_bytes(originals[0].read_text()) if originals else None
    return TpuFacts(
        levels=loop_levels(bundles),
        vmem_bytes=vmem,
        loop_count=sum(lb for _, lb, _ in bundles),
    )
