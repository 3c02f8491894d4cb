"""Ahead-of-time compilation of a model for accelerators from a CPU host, with memory analysis.

Run as::

    python -m bench.aot [--config fox-1-1.6b|tiny] [--seq 16] [--json FILE]

The FP8 model is built abstractly (``nnx.eval_shape``: no weight is allocated on the host), its
forward pass (prefill of ``--seq`` tokens, batch 1) is compiled for a TPU v5e with pip libtpu
(``get_topology_desc("v5e:1x1")``, the real XLA:TPU compiler) and lowered for an abstract H200;
the table prints the v5e memory analysis (arguments = weights, temporaries) and whether the
CUDA lowering succeeded. The ECF8 twin is built the same way: ``compress_model`` under
``eval_shape`` gives every layer the arrays of an encoding whose streams hold
``format.abstract.CODE_BITS_CAPACITY`` code bits per weight (real weights are padded to that
capacity with ``ecf8_jax.nn.pad_streams_like`` to run the compiled program).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import Column, add_json_arg, format_table, run_metadata, write_json  # noqa: E402
from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from ecf8_jax.nn import compress_model  # noqa: E402
from pallas_kernels import compat  # noqa: E402

CONFIGS = {
    # tensoropera/Fox-1-1.6B config.json: 1,665,271,872 parameters (tied embeddings).
    "fox-1-1.6b": dict(
        vocab_size=256000,
        hidden_size=2048,
        intermediate_size=4096,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),  # fmt: skip
    "tiny": dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),  # fmt: skip
}


def abstract_model(name: str, ecf8: bool = False):
    """``(graphdef, abstract state, parameter count)`` of the FP8 (or, with ``ecf8``, the
    compressed) model, nothing allocated; the count is of the arrays' elements."""
    config = LlamaConfig.from_hf(CONFIGS[name])

    def build():
        model = LlamaForCausalLM(config, nnx.Rngs(0))
        return compress_model(model) if ecf8 else model

    model = nnx.eval_shape(build)
    graphdef, state = nnx.split(model)
    return graphdef, state, sum(leaf.size for leaf in jax.tree.leaves(state))


def _forward(graphdef):
    def fn(state, tokens):
        logits, _ = nnx.merge(graphdef, state)(tokens)
        return logits

    return jax.jit(fn)


def compile_tpu(graphdef, state, seq: int, target: str = "v5e") -> dict[str, Any]:
    """Compiles the prefill for a TPU topology; its memory analysis in bytes."""
    from jax.experimental import topologies  # noqa: PLC0415

    topo = topologies.get_topology_desc({"v5e": "v5e:1x1", "v6e": "v6e:1x1"}[target], "tpu")
    sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])
    place = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
    args = (jax.tree.map(place, state), place(jax.ShapeDtypeStruct((1, seq), jnp.int32)))
    mesh = jax.sharding.AbstractMesh(
        (1,),
        ("x",),
        abstract_device=jax.sharding.AbstractDevice(topo.devices[0].device_kind, None, "tpu"),
    )
    with jax.sharding.use_abstract_mesh(mesh):
        compiled = _forward(graphdef).trace(*args).lower().compile()
    mem = compiled.memory_analysis()
    return {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
    }


def lower_cuda(graphdef, state, seq: int) -> int:
    """Lowers the prefill for an abstract H200; the StableHLO text's length."""
    tokens = jax.ShapeDtypeStruct((1, seq), jnp.int32)
    with compat.abstract_device("cuda"):
        lowered = _forward(graphdef).trace(state, tokens).lower(lowering_platforms=("cuda",))
    return len(lowered.as_text())


COLUMNS = [
    Column("config", "config"),
    Column("weights", "weights"),
    Column("params", "array elements", ","),
    Column("target", "target"),
    Column("argument_bytes", "weights+args B", ","),
    Column("temp_bytes", "temporaries B", ","),
    Column("cuda_lowered", "H200 lowered"),
    Column("seconds", "s", ".1f"),
]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="fox-1-1.6b")
    parser.add_argument("--seq", type=int, default=16, help="prefill length (batch 1)")
    parser.add_argument("--targets", nargs="+", default=["v5e"], choices=["v5e", "v6e"])
    parser.add_argument(
        "--weights", nargs="+", default=["fp8", "ecf8"], choices=["fp8", "ecf8"],
        help="the raw-FP8 model, its compressed twin, or both",
    )  # fmt: skip
    add_json_arg(parser)
    args = parser.parse_args(argv)
    rows = []
    for weights in args.weights:
        t0 = time.perf_counter()
        graphdef, state, params = abstract_model(args.config, ecf8=weights == "ecf8")
        cuda = lower_cuda(graphdef, state, args.seq) > 0
        for target in args.targets:
            row = {"config": args.config, "weights": weights, "params": params,
                   "target": target, "cuda_lowered": cuda}  # fmt: skip
            row.update(compile_tpu(graphdef, state, args.seq, target))
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    print(format_table(rows, COLUMNS))
    if args.json:
        write_json(args.json, rows, meta=run_metadata(config=args.config, seq=args.seq))
    return rows


if __name__ == "__main__":
    main()
