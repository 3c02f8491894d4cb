"""Compiled facts of a Pallas Triton kernel for sm_90a (H200), counted on a CPU host.

Why: decode speed on a GPU is bounded by how many instructions the steady-state loop issues
per weight and by how long one serial step takes; both can be read from the SASS that ptxas
emits, without a GPU. The Triton IR that Pallas builds is captured during lowering, compiled
with pip ``triton`` (its wheel ships ``ptxas``, ``cuobjdump``), and the loops are found in the
SASS by their backward branches.

Counts are within about ±20 % of what jaxlib's own bundled Triton would emit (a different
Triton version compiles the same IR).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

WARP = 32

# Variable-latency instructions: cycles from issue until their scoreboard clears (the fixed-
# latency ones carry their stall count in the control bits). Global loads are the uncertain
# term: ``LDG_LATENCY`` is the central estimate, the range is an L2 hit .. an HBM miss.
LDG_LATENCY = 500
LDG_LATENCY_RANGE = (300, 800)
VARIABLE_LATENCY = {
    "LDS": 30,
    "STS": 20,
    "LDSM": 30,
    "SHFL": 30,
    "REDUX": 40,
    "S2R": 25,
    "S2UR": 25,
    "LDC": 30,
    "BAR": 20,
    "MUFU": 20,
    "HMMA": 35,
    "HGMMA": 120,
    "I2F": 15,
    "F2I": 15,
    "F2F": 15,
    "POPC": 15,
    "FLO": 15,
    "BREV": 15,
}
GLOBAL_MEMORY = {"LDG", "LD", "ATOM", "ATOMG", "RED", "LDGSTS"}
# A global load from a kernel argument this small (a code table) stays in L1 after its first
# iteration, so it costs an L1 hit, not a memory round trip.
TABLE_BYTES = 64 * 1024
L1_HIT_LATENCY = 35
PARAM_BASE = 0x210  # sm_90 constant-bank offset of the first kernel parameter (8 bytes each)

# Per-SM lane throughput per cycle on sm_90 (CUDA C programming guide, arithmetic
# instructions table for compute capability 9.0): the issue limit is 4 schedulers x 32 lanes.
ISSUE_LANES_PER_CYCLE = 128
# fmt: off
PIPES = {
    "int": (64, {
        "IADD3", "IADD", "ISETP", "SEL", "LOP3", "LOP", "SHF", "SHL", "SHR", "IMNMX", "IABS",
        "LEA", "IMAD", "IMUL", "PRMT", "P2R", "R2P", "PLOP3", "FSEL", "VIADD", "BMSK", "SGXT",
        "ICMP", "VIMNMX", "VIADDMNMX", "IDP", "BFE", "BFI", "ISCADD", "FSETP", "FMNMX", "MOV",
        "CS2R",
    }),  # not counted in any pipe: uniform-datapath (U*) ops, BRA, BAR, REDUX, HMMA
    "fp32": (128, {"FFMA", "FADD", "FMUL", "HFMA2", "HADD2", "HMUL2"}),
    "lsu": (32, {"LDG", "STG", "LDS", "STS", "LD", "ST", "ATOM", "ATOMS", "RED", "LDSM", "SHFL"}),
    "xu": (16, {"MUFU", "I2F", "F2I", "F2F", "I2I", "POPC", "FLO", "BREV", "F2FP"}),
}
# fmt: on


def tool(name: str) -> Path:
    """Path of a CUDA tool (``cuobjdump``, ``nvdisasm``, ``ptxas``) shipped in pip triton."""
    import triton  # noqa: PLC0415 - optional dependency

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


@contextlib.contextmanager
def capture_triton_ir() -> Iterator[list[tuple[str, tuple[int, ...], list[int]]]]:
    """Records ``(Triton IR text, grid, bytes of each kernel argument)`` of every Pallas Triton
    kernel lowered in the block (arguments in order: inputs, then outputs).

    Wraps ``jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module``, the function
    Pallas calls to build the module it then serialises into the custom call.
    """
    from jax._src.pallas.triton import pallas_call_registration as reg  # noqa: PLC0415

    captured: list[tuple[str, tuple[int, ...], list[int]]] = []
    original = reg.lowering.lower_jaxpr_to_triton_module

    def spy(jaxpr, grid_mapping, *args, **kwargs):
        result = original(jaxpr, grid_mapping, *args, **kwargs)
        param_bytes = [
            int(bm.array_aval.size) * bm.array_aval.dtype.itemsize
            for bm in grid_mapping.block_mappings
        ]
        captured.append((result.module.operation.get_asm(), tuple(result.grid), param_bytes))
        return result

    reg.lowering.lower_jaxpr_to_triton_module = spy
    try:
        yield captured
    finally:
        reg.lowering.lower_jaxpr_to_triton_module = original


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One SASS instruction.

    Attributes:
      address: byte offset in the function.
      opcode: the full opcode with modifiers (``ISETP.GE.AND``).
      text: the whole instruction text (predicate and operands).
      control: the high 64-bit word (stall count, scoreboards) or 0 if unknown.
    """

    address: int
    opcode: str
    text: str
    control: int = 0

    @property
    def family(self) -> str:
        """The opcode without modifiers (``ISETP``)."""
        return self.opcode.split(".")[0]

    @property
    def branch_target(self) -> int | None:
        """The absolute target of a ``BRA``, or None."""
        if self.family != "BRA":
            return None
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|)\s*(0x[0-9a-f]+)", self.text)
        return int(m.group(1), 16) if m else None

    @property
    def operands(self) -> list[str]:
        """Operand tokens after the opcode (``R2``, ``UR10``, ``c[0x0][0x218]``, ``[R2.64]``)."""
        body = re.sub(r"^@!?U?P\w+\s+", "", self.text)
        rest = body[len(self.opcode) :].strip()
        return [o.strip() for o in rest.split(",") if o.strip()]

    @property
    def stall(self) -> int:
        return (self.control >> 41) & 0xF

    @property
    def write_barrier(self) -> int:
        return (self.control >> 46) & 0x7

    @property
    def read_barrier(self) -> int:
        return (self.control >> 49) & 0x7

    @property
    def wait_mask(self) -> int:
        return (self.control >> 52) & 0x3F


_INSTR = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?P<body>(?:@!?U?P\w+\s+)?(?P<op>[A-Z][A-Z0-9_.]*)[^;]*);"
    r"\s*/\*\s*0x[0-9a-f]+\s*\*/"
)
_CONTROL = re.compile(r"^\s*/\*\s*(0x[0-9a-f]{16})\s*\*/\s*$")


def parse_sass(text: str) -> list[Instruction]:
    """Instructions of a ``cuobjdump -sass`` listing of one function, in address order."""
    out: list[Instruction] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _INSTR.search(line)
        if not m:
            continue
        control = 0
        if i + 1 < len(lines) and (c := _CONTROL.match(lines[i + 1])):
            control = int(c.group(1), 16)
        out.append(Instruction(int(m.group(1), 16), m.group("op"), m.group("body"), control))
    return out


@dataclasses.dataclass(frozen=True)
class Loop:
    """A loop found by its backward branch: instructions ``[start, end]`` (addresses)."""

    start: int
    end: int

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and self != other


def find_loops(instrs: Sequence[Instruction]) -> list[Loop]:
    """Every backward branch ``BRA target`` with target <= its own address is a loop."""
    loops = set()
    for ins in instrs:
        target = ins.branch_target
        if target is not None and target < ins.address:
            loops.add(Loop(target, ins.address))
    return sorted(loops, key=lambda lp: (lp.start, -lp.end))


def loop_chain(loops: Sequence[Loop], instrs: Sequence[Instruction]) -> list[Loop]:
    """The steady-state nest, innermost first: the innermost loop with the most enclosing loops
    (ties: the longest body), then each loop enclosing it."""
    if not loops:
        return []

    def depth(lp):
        return sum(o.contains(lp) for o in loops)

    def size(lp):
        return sum(lp.start <= i.address <= lp.end for i in instrs)

    innermost = [lp for lp in loops if not any(lp.contains(o) for o in loops)]
    inner = max(innermost, key=lambda lp: (depth(lp), size(lp)))
    chain = [inner]
    while True:
        outer = [o for o in loops if o.contains(chain[-1])]
        if not outer:
            return chain
        chain.append(min(outer, key=size))


_REG = re.compile(r"\b(U?R\d+)\b")
_PARAM = re.compile(r"c\[0x0\]\[(0x[0-9a-f]+)\]")


def load_parameter(instrs: Sequence[Instruction], load: Instruction, depth: int = 5) -> int | None:
    """Index of the kernel argument a global load reads from, by following its address
    register back through its definitions to a ``c[0x0][param]`` read; None if not found."""
    ops = load.operands
    addr = next((o for o in ops if o.startswith("[") or "][" in o), None)
    brackets = re.findall(r"\[([^\]]*)\]", addr or "")
    m = _REG.search(brackets[-1]) if brackets else None
    if not m:
        return None
    frontier = [(m.group(1), load.address)]
    for _ in range(depth):
        nxt = []
        for reg, before in frontier:
            definition = None
            for ins in instrs:
                if ins.address >= before:
                    break
                if (
                    ins.operands
                    and _REG.fullmatch(ins.operands[0].split(".")[0] or "")
                    and (ins.operands[0].split(".")[0] == reg)
                ):
                    definition = ins
            if definition is None:
                continue
            for op in definition.operands[1:]:
                if p := _PARAM.search(op):
                    offset = int(p.group(1), 16)
                    if offset >= PARAM_BASE:
                        return (offset - PARAM_BASE) // 8
                for r in _REG.findall(op):
                    nxt.append((r, definition.address))
        frontier = nxt
    return None


def table_loads(instrs: Sequence[Instruction], param_bytes: Sequence[int]) -> set[int]:
    """Addresses of global loads whose argument is at most ``TABLE_BYTES`` (L1-resident)."""
    out = set()
    for ins in instrs:
        if ins.family in GLOBAL_MEMORY:
            i = load_parameter(instrs, ins)
            if i is not None and i < len(param_bytes) and param_bytes[i] <= TABLE_BYTES:
                out.add(ins.address)
    return out


def simulate_cycles(
    body: Sequence[Instruction], ldg_latency: int = LDG_LATENCY, l1_loads: set[int] = frozenset()
) -> float:
    """Cycles one warp takes per iteration of ``body`` when it runs alone on its scheduler.

    In-order issue: each instruction waits for the scoreboards in its wait mask, issues, then
    stalls for its control-bit stall count; a variable-latency instruction releases its write
    scoreboard ``VARIABLE_LATENCY`` (``ldg_latency`` for global loads, ``L1_HIT_LATENCY`` for
    those in ``l1_loads``) cycles after issue. Two
    passes, the second measured, so loop-carried waits are counted.
    """
    ready = [0.0] * 6
    t = 0.0
    start = 0.0
    for rep in range(2):
        if rep == 1:
            start = t
        for ins in body:
            wait = ins.wait_mask
            for b in range(6):
                if wait >> b & 1:
                    t = max(t, ready[b])
            if ins.address in l1_loads:
                latency = L1_HIT_LATENCY
            elif ins.family in GLOBAL_MEMORY:
                latency = ldg_latency
            else:
                latency = VARIABLE_LATENCY.get(ins.family, 10)
            if ins.write_barrier < 6:
                ready[ins.write_barrier] = t + latency
            if ins.read_barrier < 6:
                ready[ins.read_barrier] = t + 10
            t += max(ins.stall, 1)
    return t - start


@dataclasses.dataclass
class SassFacts:
    """What the compiled kernel is, for one launch configuration.

    Attributes:
      num_warps: warps per program.
      registers: registers per thread (``cuobjdump -res-usage``).
      spill_bytes: spill stores + spill loads reported by ``ptxas -v``.
      stack_bytes: local stack frame per thread.
      shared_bytes: static + Triton-managed shared memory per program.
      levels: per loop level, innermost first: (exclusive instructions, exclusive simulated
        single-warp cycles, Counter of opcode families).
      level_cycles_range: per level, the simulated cycles with global loads at the ends of
        ``LDG_LATENCY_RANGE``.
      loop_count: backward branches found.
      table_loads: global loads charged as L1 hits (from arguments <= ``TABLE_BYTES``).
      sass: the ``cuobjdump -sass`` listing.
    """

    num_warps: int
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int
    levels: list[tuple[int, float, Counter]]
    level_cycles_range: list[tuple[float, float]]
    loop_count: int
    table_loads: int = 0
    sass: str = ""

    @property
    def threads(self) -> int:
        return WARP * self.num_warps


def compile_ttir(
    ttir: str, num_warps: int, num_stages: int, workdir: Path, param_bytes: Sequence[int] = ()
) -> SassFacts:
    """Compiles Triton IR for sm_90a with pip triton and reads its SASS and resources."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415

    src = workdir / "kernel.ttir"
    src.write_text(ttir)
    kernel = triton.compile(
        str(src),
        target=GPUTarget("cuda", 90, WARP),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    cubin = workdir / "kernel.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    ptx = workdir / "kernel.ptx"
    ptx.write_text(kernel.asm["ptx"])
    sass = _run([tool("cuobjdump"), "-sass", cubin])
    usage = _run([tool("cuobjdump"), "-res-usage", cubin])
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    shared = max(int(re.search(r"SHARED:(\d+)", usage).group(1)), int(kernel.metadata.shared))
    # ptxas -v with the flags triton uses (compiler.py make_cubin) for the spill counts.
    from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415

    log = subprocess.run(
        [get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a",
         str(ptx), "-o", str(workdir / "verbose.cubin")],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    instrs = parse_sass(sass)
    l1 = table_loads(instrs, param_bytes)
    loops = find_loops(instrs)
    chain = loop_chain(loops, instrs)
    levels, ranges = [], []
    inner_span: Loop | None = None
    for lp in chain:

        def own(i, lp=lp, inner_span=inner_span):
            inside = lp.start <= i.address <= lp.end
            return inside and not (inner_span and inner_span.start <= i.address <= inner_span.end)

        body = [i for i in instrs if own(i)]
        cycles = simulate_cycles(body, l1_loads=l1)
        levels.append((len(body), cycles, Counter(i.family for i in body)))
        ranges.append(tuple(simulate_cycles(body, lat, l1) for lat in LDG_LATENCY_RANGE))
        inner_span = lp
    return SassFacts(
        num_warps=num_warps,
        registers=regs,
        spill_bytes=spills,
        stack_bytes=stack,
        shared_bytes=shared,
        levels=levels,
        level_cycles_range=ranges,
        loop_count=len(loops),
        table_loads=len(l1),
        sass=sass,
    )


def gpu_facts(lower: Callable[[], object], num_warps: int, num_stages: int) -> SassFacts:
    """Lowers a jitted Pallas Triton program (``lower()`` must lower it for CUDA) and compiles
    its single kernel for sm_90a.

    Raises:
      ValueError: the program holds no Pallas Triton kernel, or more than one.
    """
    import jax  # noqa: PLC0415

    jax.clear_caches()  # a cached lowering would not run the Triton lowering again
    with capture_triton_ir() as captured:
        lower()
    if len(captured) != 1:
        raise ValueError(f"expected one Pallas Triton kernel, lowered {len(captured)}")
    with tempfile.TemporaryDirectory(prefix="kernel-cost-") as tmp:
        ttir, _, param_bytes = captured[0]
        return compile_ttir(ttir, num_warps, num_stages, Path(tmp), param_bytes)


def _run(cmd) -> str:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True).stdout
