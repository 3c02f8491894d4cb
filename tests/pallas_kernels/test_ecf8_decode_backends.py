"""Every ECF8 decode backend, bit for bit, on the foundation suite's hard cases.

On a CPU host the Pallas kernels run in interpret mode (Triton's and TPU's), and they must
also lower for their real targets (CUDA through Triton, TPU through Mosaic) from this host.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format.codebook import canonical_tables
from pallas_kernels import compat
from pallas_kernels.ecf8_decode import api
from pallas_kernels.ecf8_decode.config import BlockSizes
from pallas_kernels.ecf8_decode.pallas_gpu import ecf8_decode_gpu
from pallas_kernels.ecf8_decode.pallas_tpu import ecf8_decode_tpu
from pallas_kernels.ecf8_decode.reference import ecf8_decode_reference


def encode_v1(x, **kw):
    """This module tests the version-1 kernels; version 2 is test_grouped_decode.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
ON_CPU = jax.default_backend() == "cpu"
IMPLEMENTATIONS = ["xla", "pallas_gpu", "pallas_tpu"]


def _raw(t):
    limits, deltas, symbols = canonical_tables(t.code_lengths, np)
    return (t.stream, t.chunk_offsets, t.signs, limits, deltas, symbols)


def _decode(t, implementation):
    interpret = implementation != "xla" and ON_CPU
    return np.asarray(ecf8_jax.decode(t, implementation=implementation, interpret=interpret))


def _all_bit_patterns(dtype):
    return np.arange(256, dtype=np.uint8).view(dtype)


def _longest_codes():
    # Fibonacci counts make an unlimited Huffman code 21 levels deep: the limit binds at 16.
    counts = [1, 1]
    while len(counts) < 22:
        counts.append(counts[-1] + counts[-2])
    values = np.repeat(np.arange(22, dtype=np.uint8) + 8, counts)
    rng = np.random.default_rng(3)
    values = rng.permutation(values)
    signs = rng.integers(0, 2, values.size, dtype=np.uint8) << 7
    return (values | signs).view(E4M3)


def _specials():
    special = np.array([0x00, 0x80, 0x7F, 0xFF, 0x01, 0x81, 0x7E, 0xFE, 0x07, 0x08], np.uint8)
    rng = np.random.default_rng(4)
    body = (rng.standard_normal(5000) * 0.02).astype(E4M3).view(np.uint8)
    body[rng.integers(0, body.size, 300)] = rng.choice(special, 300)
    return body.view(E4M3)


CASES = {
    "all_e4m3_patterns": (_all_bit_patterns(E4M3), 32),
    "all_e5m2_patterns": (_all_bit_patterns(E5M2), 32),
    "specials_nan_zero_subnormal_max": (_specials(), 32),
    "longest_codes_16_bits": (_longest_codes(), 64),
    "one_weight": (np.array([-0.5], E4M3), 32),
    "ragged_nine_chunks": (
        (np.random.default_rng(5).standard_normal(4096 * 8 + 77) * 0.1).astype(E4M3),
        32,
    ),
    "incompressible_bytes": (
        np.random.default_rng(6).integers(0, 256, 9000, dtype=np.uint8).view(E4M3),
        32,
    ),
    "constant": (np.full(5000, 0.25, E4M3), 64),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_backend_decodes_every_case_bit_exactly(implementation, case):
    x, chunk_steps = CASES[case]
    t = encode_v1(x, chunk_steps=chunk_steps)
    if case == "longest_codes_16_bits":
        assert t.code_lengths.max() == 16
    out = _decode(t, implementation)
    np.testing.assert_array_equal(out.view(np.uint8), x.view(np.uint8))


def test_kernels_match_the_reference_on_the_padding_too():
    x, _ = CASES["ragged_nine_chunks"]
    raw = _raw(encode_v1(x, chunk_steps=32))
    want = np.asarray(ecf8_decode_reference(*raw))
    gpu = np.asarray(ecf8_decode_gpu(*raw, interpret=True))
    tpu = np.asarray(ecf8_decode_tpu(*raw, interpret=compat.tpu_interpret_params()))
    np.testing.assert_array_equal(gpu, want)
    np.testing.assert_array_equal(tpu, want)


@pytest.mark.parametrize("num_warps, num_stages", [(4, 1), (8, 1), (4, 2), (2, 3)])
def test_gpu_kernel_lowers_for_cuda_in_every_block_configuration(num_warps, num_stages):
    x, _ = CASES["ragged_nine_chunks"]
    raw = _raw(encode_v1(x, chunk_steps=32))
    sizes = BlockSizes(num_warps=num_warps, num_stages=num_stages)
    f = jax.jit(lambda *a: ecf8_decode_gpu(*a, block_sizes=sizes))
    with compat.abstract_device("cuda"):
        text = f.trace(*raw).lower(lowering_platforms=("cuda",)).as_text()
    assert "ecf8_decode" in text
    assert f"num_warps = {num_warps}" in text or "triton" in text.lower()


def test_tpu_kernel_lowers_for_tpu():
    x, _ = CASES["ragged_nine_chunks"]
    raw = _raw(encode_v1(x, chunk_steps=32))
    with compat.abstract_device("tpu"):
        text = jax.jit(ecf8_decode_tpu).trace(*raw).lower(lowering_platforms=("tpu",)).as_text()
    assert "ecf8_decode" in text
    assert "tpu_custom_call" in text


def test_the_jitted_decode_lowers_for_cuda_through_the_api():
    t = encode_v1(CASES["specials_nan_zero_subnormal_max"][0], chunk_steps=32)
    f = jax.jit(lambda t: ecf8_jax.decode(t, implementation="pallas_gpu", interpret=False))
    with compat.abstract_device("cuda"), warnings.catch_warnings():
        warnings.simplefilter("error")
        if ON_CPU:  # an explicit request that cannot run fails fast, even when lowering
            with pytest.raises(ValueError, match="needs a GPU"):
                f.trace(t)
            return
        assert "ecf8_decode" in f.trace(t).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.skipif(not ON_CPU, reason="checks the CPU host's refusal")
@pytest.mark.parametrize("implementation", ["pallas_gpu", "pallas_tpu"])
def test_an_explicit_backend_that_cannot_run_fails_fast_with_the_reason(implementation):
    t = encode_v1(np.ones(10, E4M3))
    with pytest.raises(ValueError, match=f"{implementation} needs a"):
        ecf8_jax.decode(t, implementation=implementation)


def test_the_default_falls_back_to_xla_with_a_warning(monkeypatch):
    t = encode_v1(np.arange(256, dtype=np.uint8).view(E4M3)[:200])
    platform = "gpu" if ON_CPU else "cpu"
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    monkeypatch.setattr(api, "_default_implementation", lambda: "pallas_tpu")
    with pytest.warns(UserWarning, match="falls back to xla"):
        out = np.asarray(ecf8_jax.decode(t))
    np.testing.assert_array_equal(out.view(np.uint8), np.arange(200, dtype=np.uint8))


def test_shapes_supported_names_the_tpu_vmem_limit():
    words = api.TPU_MAX_STREAM_BYTES // 4 + 1
    reason = api.shapes_supported("pallas_tpu", (words,), (1, 1, 128), interpret=True)
    assert "VMEM" in reason
    assert api.shapes_supported("xla", (words,), (1, 1, 128)) is None
    assert "power-of-two" in api.shapes_supported("pallas_gpu", (8,), (1, 1, 96), interpret=True)


def test_tpu_kernel_never_reads_out_of_bounds_on_a_malformed_tensor():
    # TPU interpret mode raises on any out-of-bounds read; offsets and tables are garbage.
    t = encode_v1(CASES["ragged_nine_chunks"][0], chunk_steps=32)
    bad = dataclasses.replace(
        t,
        chunk_offsets=np.full_like(t.chunk_offsets, 2**31 - 1),
        code_lengths=np.full(128, 1, np.uint8),  # over-subscribed: limits saturate
    )
    out = _decode(bad, "pallas_tpu")
    assert out.shape == (t.size,)
    out = _decode(bad, "pallas_gpu")
    assert out.shape == (t.size,)


def test_decode_through_a_kernel_does_not_retrace():
    traces = []

    @jax.jit
    def f(t):
        traces.append(1)
        return ecf8_jax.decode(t, implementation="pallas_gpu", interpret=ON_CPU)

    x = (np.random.default_rng(9).standard_normal(3000) * 0.1).astype(E4M3)
    y = (np.random.default_rng(10).standard_normal(3000) * 0.1).astype(E4M3)
    a, b = (ecf8_jax.codec.pad_stream(encode_v1(v, chunk_steps=32), 1024) for v in (x, y))
    np.testing.assert_array_equal(np.asarray(f(a)).view(np.uint8), x.view(np.uint8))
    np.testing.assert_array_equal(np.asarray(f(b)).view(np.uint8), y.view(np.uint8))
    assert len(traces) == 1


def test_kernels_take_raw_arrays_of_any_integer_dtype():
    x = CASES["one_weight"][0]
    stream, offsets, signs, limits, deltas, symbols = _raw(encode_v1(x))
    out = ecf8_decode_gpu(
        jnp.asarray(stream),
        jnp.asarray(offsets),
        jnp.asarray(signs),
        jnp.asarray(limits),
        jnp.asarray(deltas),
        jnp.asarray(symbols, jnp.uint8),
        interpret=True,
    )
    assert np.asarray(out)[0] == x.view(np.uint8)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_table_and_compare_chain_decode_alike(case):
    x, chunk_steps = CASES[case]
    raw = _raw(encode_v1(x, chunk_steps=chunk_steps))
    chain = np.asarray(ecf8_decode_reference(*raw, use_table=False))
    table = np.asarray(ecf8_decode_reference(*raw, use_table=True))
    np.testing.assert_array_equal(table, chain)
    np.testing.assert_array_equal(table[: x.size], x.view(np.uint8).reshape(-1))


def test_tpu_kernel_takes_its_vmem_limit_from_block_sizes():
    raw = _raw(encode_v1(CASES["specials_nan_zero_subnormal_max"][0], chunk_steps=32))
    limit = 48 << 20
    texts = []
    for sizes in (BlockSizes(), BlockSizes(vmem_limit_bytes=limit)):
        f = jax.jit(lambda *a, sizes=sizes: ecf8_decode_tpu(*a, block_sizes=sizes))
        with compat.abstract_device("tpu"):
            texts.append(f.trace(*raw).lower(lowering_platforms=("tpu",)).as_text())
    assert str(limit) not in texts[0]
    assert str(limit) in texts[1]


def test_explicit_block_sizes_reach_the_kernel_through_the_api(monkeypatch):
    raw = _raw(encode_v1(CASES["ragged_nine_chunks"][0], chunk_steps=32))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")  # as on a TPU host
    sizes = BlockSizes(vmem_limit_bytes=48 << 20)
    f = jax.jit(lambda *a: api.decode(*a, implementation="pallas_tpu", block_sizes=sizes))
    with compat.abstract_device("tpu"):
        text = f.trace(*raw).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text
    assert str(48 << 20) in text
