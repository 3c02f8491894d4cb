"""The version-2 decoders on 16-bit values (BF16, FP16): the FP8 kernels with ``bits=16``.

Encoded here with the format's ``encode_grouped`` (not the public ``encode``), so the kernel
contract is tested on its own: every backend bit-exact against the reference, malformed input
decoding to the same garbage everywhere, and the kernels lowering for CUDA and TPU.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np
import pytest

from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_decode import api, reference
from pallas_kernels.grouped_decode.config import BlockSizes
from pallas_kernels.grouped_decode.pallas_gpu import grouped_decode_gpu
from pallas_kernels.grouped_decode.pallas_tpu import grouped_decode_tpu

WIDE = grouped.WIDE
STEPS = 32


@dataclasses.dataclass(frozen=True)
class Encoded:
    values: np.ndarray  # uint16[n]
    stream: np.ndarray
    offsets: np.ndarray
    raw: np.ndarray
    lengths: np.ndarray

    def args(self):
        return grouped.kernel_args(self.stream, self.offsets, self.raw, self.lengths, np)


def _encode(values: np.ndarray, steps: int = STEPS) -> Encoded:
    u = np.ascontiguousarray(values).view(np.uint16).reshape(-1)
    chunks = -(-u.size // (steps * 128))
    return Encoded(u, *encode_grouped(u, steps, chunks, WIDE))


def _longest_codes():
    # Fibonacci counts over 14 exponents: unlimited Huffman would go 13 deep; the limit is 8.
    counts = [1, 1]
    while len(counts) < 14:
        counts.append(counts[-1] + counts[-2])
    symbols = np.repeat(np.arange(100, 114, dtype=np.uint16), counts)
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, symbols.size, dtype=np.uint16)
    return rng.permutation(WIDE.join(symbols, raw))


CASES = {
    # every bf16 / fp16 bit pattern: NaN payloads, +-0, +-inf, subnormals, max
    "all_16bit_patterns": np.arange(1 << 16, dtype=np.uint16)[::7],
    "bf16_weights_ragged": (np.random.default_rng(5).standard_normal(4096 * 3 + 77) * 0.02)
    .astype(ml_dtypes.bfloat16)
    .view(np.uint16),
    "fp16_weights": (np.random.default_rng(6).standard_normal(5000) * 0.02)
    .astype(np.float16)
    .view(np.uint16),
    "longest_codes_8_bits": _longest_codes(),
    "one_value": np.array([0xBF80], np.uint16),
}


@pytest.fixture(scope="module")
def encoded():
    return {name: _encode(x) for name, x in CASES.items()}


def _run(implementation, args):
    if implementation == "pallas_gpu":
        return np.asarray(grouped_decode_gpu(*args, bits=16, interpret=True))
    if implementation == "pallas_tpu":
        params = compat.tpu_interpret_params()
        return np.asarray(grouped_decode_tpu(*args, bits=16, interpret=params))
    return np.asarray(reference.grouped_decode_reference(*args, bits=16))


def test_reference_decodes_every_16bit_pattern():
    e = _encode(np.arange(1 << 16, dtype=np.uint16), steps=128)
    assert e.lengths.shape == (4, 256) and e.raw.shape == (4, 32, 128)
    out = _run("xla", e.args())
    assert out.shape == (4, 64, 128)
    np.testing.assert_array_equal(np.asarray(reference.words_to_values(out, 16)), e.values)


@pytest.mark.parametrize("implementation", ["xla", "pallas_gpu", "pallas_tpu"])
def test_every_backend_decodes_16bit_values_bit_exactly(encoded, implementation):
    for name, e in encoded.items():
        if name == "longest_codes_8_bits":
            assert e.lengths.max() == grouped.MAX_CODE_LEN
        words = _run(implementation, e.args())
        out = np.asarray(reference.words_to_values(words, 16))[: e.values.size]
        np.testing.assert_array_equal(out, e.values, err_msg=name)


def test_16bit_kernels_match_the_reference_on_malformed_input(encoded):
    e = encoded["bf16_weights_ragged"]
    rng = np.random.default_rng(7)
    c = e.lengths.shape[0]
    bad = dataclasses.replace(
        e,
        stream=rng.integers(0, 2**32, e.stream.size, dtype=np.uint64).astype(np.uint32),
        offsets=np.sort(rng.integers(0, 3 * e.stream.size, c + 1)).astype(np.uint32),
        lengths=rng.integers(0, 12, (c, 256)).astype(np.uint8),
    )
    want = _run("xla", bad.args())
    np.testing.assert_array_equal(_run("pallas_gpu", bad.args()), want)
    np.testing.assert_array_equal(_run("pallas_tpu", bad.args()), want)


def test_16bit_output_is_twice_the_fp8_words_and_bad_widths_are_refused(encoded):
    args = encoded["one_value"].args()
    assert api.decode(*args, bits=16, implementation="xla").shape == (1, 16, 128)
    with pytest.raises(ValueError, match="16"):
        api.decode(*args, bits=12, implementation="xla")


def _abstract(args):
    return [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]


def test_16bit_kernels_lower_for_cuda_and_tpu(encoded):
    args = _abstract(encoded["bf16_weights_ragged"].args())
    f = jax.jit(lambda *a: grouped_decode_gpu(*a, bits=16, block_sizes=BlockSizes()))
    with compat.abstract_device("cuda"):
        text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "ecf8_grouped_decode" in text
    g = jax.jit(lambda *a: grouped_decode_tpu(*a, bits=16))
    with compat.abstract_device("tpu"):
        text = g.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text
