"""CPU decode speed of the native decoder against the jnp reference and zstd, on a shared host.

Run as::

    taskset -c 0 python -m bench.cpu_decode [--repeats N] [--synthetic-size N] [--smollm2]

``bench.compression`` times each codec in turn by wall clock; on a loaded machine (the 2-core
VM with several jobs) the other jobs take most of the core, so wall-clock MB/s says more about
the load than the codec. Here the codecs run interleaved, and each is also timed in CPU seconds
of this process (``time.process_time``): under ``taskset -c 0`` that is the one-core rate
while this process had the core (still depressed when the sibling hyperthread is busy).

Rows: ``ecf8 native`` (``jax.jit(ecf8_jax.decode)``: the C++ FFI decoder on CPU, whole tensor
to FP8 array), ``ecf8 native ffi`` (the FFI call alone on precomputed tables, output words),
``ecf8 jnp`` (``implementation="xla"``), ``zstd-3`` (``zstandard`` decompress). Corpora: the
MiniLM per-row linear weights and a Gaussian per-row matrix, as in ``bench.compression``.
``--smollm2`` also times the SmolLM2-135M forward at batch 1 (seq 32), FP8 and ECF8
interleaved (``bench.models`` runs them one after the other).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
import zstandard

import ecf8_jax
from bench.compression import build_corpora
from ecf8_jax.format import grouped
from pallas_kernels.grouped_decode import native_cpu


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple]:
    """Median (CPU seconds, wall seconds) of each function, timed in turn ``repeats`` times."""
    for f in fns.values():
        f()  # compile and warm up
    times = {k: ([], []) for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            times[k][0].append(time.process_time() - c0)
            times[k][1].append(time.perf_counter() - w0)
    return {k: (statistics.median(c), statistics.median(w)) for k, (c, w) in times.items()}


def decode_rows(repeats: int, synthetic_size: int) -> None:
    corpora = build_corpora(minilm_limit=None, synthetic_size=synthetic_size)
    for make in (corpora[0], corpora[2]):  # MiniLM per-row, Gaussian per-row
        corpus_rows(make(), repeats)


def corpus_rows(corpus, repeats: int) -> None:
    """Prints the decode rates of one ``bench.compression`` corpus."""
    n = sum(q.size for q in corpus.tensors)
    cpu = jax.devices("cpu")[0]
    encoded = [ecf8_jax.encode(q) for q in corpus.tensors]
    on_cpu = jax.device_put(encoded, cpu)
    tables = [
        jax.device_put(
            grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np),
            cpu,
        )
        for t in encoded
    ]
    native = jax.jit(ecf8_jax.decode)
    ffi = jax.jit(native_cpu.grouped_decode_native)
    reference = jax.jit(lambda t: ecf8_jax.decode(t, implementation="xla"))
    frames = [zstandard.ZstdCompressor(level=3).compress(q.tobytes()) for q in corpus.tensors]
    dctx = zstandard.ZstdDecompressor()
    for q, out in zip(corpus.tensors, [native(t) for t in on_cpu], strict=True):
        np.testing.assert_array_equal(np.asarray(out).view(np.uint8), q.view(np.uint8))
    result = interleaved(
        {
            "ecf8 native": lambda: jax.block_until_ready([native(t) for t in on_cpu]),
            "ecf8 native ffi": lambda: jax.block_until_ready([ffi(*a) for a in tables]),
            "ecf8 jnp": lambda: jax.block_until_ready([reference(t) for t in on_cpu]),
            "zstd-3": lambda: [dctx.decompress(f) for f in frames],
        },
        repeats,
    )
    print(f"{corpus.name}, {n:,} weights, load {os.getloadavg()[0]:.1f}")
    for k, (c, w) in result.items():
        print(f"  {k:16s} {n / c / 1e6:7.0f} MB/s CPU time  {n / w / 1e6:7.0f} MB/s wall")


def smollm2_rows(repeats: int) -> None:
    from flax import nnx

    from bench.models import smollm2_case
    from ecf8_jax import nn as enn

    _, build, forward, inputs = smollm2_case(32)
    model = build()
    args = inputs(1)

    def compiled(m):
        graphdef, state = nnx.split(m)
        f = jax.jit(lambda s, *a: forward(nnx.merge(graphdef, s), *a))
        exe = f.lower(state, *args).compile()
        return lambda: jax.block_until_ready(exe(state, *args))

    result = interleaved(
        {"fp8": compiled(model), "ecf8": compiled(enn.compress_model(model))}, repeats
    )
    (c8, w8), (ce, we) = result["fp8"], result["ecf8"]
    print(f"SmolLM2-135M forward, batch 1, seq 32, load {os.getloadavg()[0]:.1f}")
    print(f"  fp8   {1e3 * w8:7.0f} ms wall  {1e3 * c8:7.0f} ms CPU time")
    print(f"  ecf8  {1e3 * we:7.0f} ms wall  {1e3 * ce:7.0f} ms CPU time")
    print(f"  ecf8/fp8: {we / w8:.2f} wall, {ce / c8:.2f} CPU time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--synthetic-size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--smollm2", action="store_true", help="also the SmolLM2 forward")
    args = parser.parse_args(argv)
    decode_rows(args.repeats, args.synthetic_size)
    if args.smollm2:
        smollm2_rows(args.repeats)


if __name__ == "__main__":
    main()
