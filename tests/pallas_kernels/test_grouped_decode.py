"""Every version-2 decode backend, bit for bit, and its lowering for the real targets.

On a CPU host the Pallas kernels run in interpret mode (Triton's and TPU's); they must also
lower for CUDA (an abstract H200) and TPU from this host, and ``implementation=None`` must pick
the kernel of the platform the program is lowered for, not of the default backend.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format import grouped
from pallas_kernels import compat
from pallas_kernels.grouped_decode import api, pallas_tpu, reference
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.pallas_gpu import grouped_decode_gpu
from pallas_kernels.grouped_decode.pallas_tpu import grouped_decode_tpu
from pallas_kernels.grouped_decode.reference import grouped_decode_reference

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
IMPLEMENTATIONS = ["xla", "pallas_gpu", "pallas_tpu"]


def _raw(t):
    return grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np)


def _run(implementation, raw):
    if implementation == "pallas_gpu":
        return np.asarray(grouped_decode_gpu(*raw, interpret=True))
    if implementation == "pallas_tpu":
        return np.asarray(grouped_decode_tpu(*raw, interpret=compat.tpu_interpret_params()))
    return np.asarray(grouped_decode_reference(*raw))


def _longest_codes():
    # Fibonacci counts over the 16 symbols: unlimited Huffman would go 15 deep; the limit is 8.
    counts = [1, 1]
    while len(counts) < 16:
        counts.append(counts[-1] + counts[-2])
    symbols = np.repeat(np.arange(16, dtype=np.uint8), counts)
    rng = np.random.default_rng(3)
    low = rng.integers(0, 8, symbols.size, dtype=np.uint8)
    sign = rng.integers(0, 2, symbols.size, dtype=np.uint8) << 7
    return rng.permutation((symbols << 3) | low | sign).view(E4M3)


def _specials():
    special = np.array([0x00, 0x80, 0x7F, 0xFF, 0x01, 0x81, 0x7E, 0xFE, 0x07, 0x08], np.uint8)
    rng = np.random.default_rng(4)
    body = (rng.standard_normal(3000) * 0.02).astype(E4M3).view(np.uint8)
    body[rng.integers(0, body.size, 200)] = rng.choice(special, 200)
    return body.view(E4M3)


CASES = {
    "all_e4m3_patterns": np.arange(256, dtype=np.uint8).repeat(9).view(E4M3),
    "all_e5m2_patterns": np.arange(256, dtype=np.uint8).repeat(9).view(E5M2),
    "specials_nan_zero_subnormal_max": _specials(),
    "longest_codes_8_bits": _longest_codes(),
    "one_weight": np.array([-0.5], E4M3),
    "ragged_five_chunks": (np.random.default_rng(5).standard_normal(4096 * 4 + 77) * 0.1).astype(
        E4M3
    ),
    "incompressible_bytes": np.random.default_rng(6).integers(0, 256, 6000, np.uint8).view(E4M3),
    "constant": np.full(3000, 0.25, E4M3),
}


@pytest.fixture(scope="module")
def encoded():
    return {name: ecf8_jax.encode(x, chunk_steps=32) for name, x in CASES.items()}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_backend_decodes_every_case_bit_exactly(encoded, implementation, case):
    x, t = CASES[case], encoded[case]
    if case == "longest_codes_8_bits":
        assert t.code_lengths.max() == grouped.MAX_CODE_LEN
    words = _run(implementation, _raw(t))
    out = np.asarray(reference.words_to_bytes(words))[: x.size]
    np.testing.assert_array_equal(out, x.view(np.uint8).reshape(-1))


def _garbage(t, seed):
    """Same shapes, random stream words, offsets and code lengths: malformed on purpose."""
    rng = np.random.default_rng(seed)
    c = t.num_chunks
    offsets = np.sort(rng.integers(0, 3 * t.stream.size, c + 1)).astype(np.uint32)
    lengths = rng.integers(0, 12, (c, 16)).astype(np.uint8)
    return dataclasses.replace(
        t,
        stream=rng.integers(0, 2**32, t.stream.size, dtype=np.uint64).astype(np.uint32),
        chunk_offsets=offsets,
        code_lengths=lengths,
    )


def test_kernels_match_the_reference_on_padding_and_malformed_input(encoded):
    # Out-of-range offsets, over-long and over-subscribed codebooks: garbage, but the same
    # garbage everywhere, and no read out of bounds (TPU interpret mode checks every index).
    for t in [encoded["ragged_five_chunks"], _garbage(encoded["ragged_five_chunks"], 7)]:
        raw = _raw(t)
        want = _run("xla", raw)
        np.testing.assert_array_equal(_run("pallas_gpu", raw), want)
        np.testing.assert_array_equal(_run("pallas_tpu", raw), want)


def test_tpu_kernel_with_several_vregs_per_program_matches(encoded):
    raw = _raw(encoded["ragged_five_chunks"])
    sizes = BlockSizes(chunks_per_program=16)
    got = grouped_decode_tpu(*raw, block_sizes=sizes, interpret=compat.tpu_interpret_params())
    np.testing.assert_array_equal(np.asarray(got), _run("xla", raw))


def test_kernel_constants_match_the_format():
    assert reference.GROUP == grouped.GROUP
    assert reference.WORD_BITS == grouped.WORD_BITS
    assert reference.LUT_SIZE == grouped.LUT_SIZE
    assert reference.PEEK_SHIFT == 32 - grouped.MAX_CODE_LEN
    assert reference.LENGTH_MASK == (1 << grouped.LUT_LENGTH_BITS) - 1
    assert reference.NIBBLES_PER_WORD == grouped.NIBBLES_PER_WORD
    # the TPU window holds the most words a chunk can have (validate's bound), plus spare rows
    for steps in (32, 2048):
        rows = pallas_tpu.window_rows(1, steps, 1 << 30) - pallas_tpu.SPARE_ROWS
        assert rows * pallas_tpu.ROW_WORDS == grouped.max_chunk_words(steps)


def _abstract(raw):
    return [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in raw]


@pytest.mark.parametrize("num_warps", [1, 4])
def test_gpu_kernel_lowers_for_cuda(encoded, num_warps):
    raw = _abstract(_raw(encoded["ragged_five_chunks"]))
    sizes = BlockSizes(num_warps=num_warps)
    f = jax.jit(lambda *a: grouped_decode_gpu(*a, block_sizes=sizes))
    with compat.abstract_device("cuda"):
        text = f.trace(*raw).lower(lowering_platforms=("cuda",)).as_text()
    assert "ecf8_grouped_decode" in text


def test_tpu_kernel_lowers_for_tpu(encoded):
    raw = _abstract(_raw(encoded["ragged_five_chunks"]))
    with compat.abstract_device("tpu"):
        text = jax.jit(grouped_decode_tpu).trace(*raw).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text


@pytest.mark.parametrize(
    ("platform", "marker"), [("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")]
)
def test_default_implementation_follows_the_lowering_platform(encoded, platform, marker):
    # Traced on this CPU host, lowered for the device: the device's kernel is in the program.
    t = encoded["ragged_five_chunks"]
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), t)
    with compat.abstract_device(platform):
        text = jax.jit(ecf8_jax.decode).trace(args).lower(lowering_platforms=(platform,)).as_text()
    assert marker in text
    cpu_text = jax.jit(ecf8_jax.decode).trace(args).lower().as_text()
    assert marker not in cpu_text


def test_explicit_implementation_does_not_ask_the_default_backend(encoded):
    # Asking for the TPU kernel on a CPU host traces fine (ahead-of-time compilation).
    raw = _abstract(_raw(encoded["one_weight"]))
    f = jax.jit(lambda *a: api.decode(*a, implementation="pallas_tpu"))
    with compat.abstract_device("tpu"):
        f.trace(*raw).lower(lowering_platforms=("tpu",))


def test_bad_explicit_implementation_fails_with_the_reason(encoded):
    raw = _raw(encoded["one_weight"])
    with pytest.raises(ValueError, match="unknown implementation"):
        api.decode(*raw, implementation="cuda")
    narrow = (*raw[:2], jnp.zeros((1, 4, 64), jnp.uint32), *raw[3:])
    with pytest.raises(ValueError, match="needs 128 lanes"):
        api.decode(*narrow, implementation="pallas_tpu")
