"""16-bit values (bfloat16, float16) in format version 2 (docs/FORMAT.md, "16-bit values").

Lossless claims compare uint16 views: NaN payloads, -0 and subnormals must survive bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

import ecf8_jax
from ecf8_jax.format import grouped
from pallas_kernels.grouped_decode import api as grouped_api
from pallas_kernels.grouped_decode import reference

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
WIDE = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]


def _bits(x) -> np.ndarray:
    x = np.asarray(x)
    assert x.dtype.itemsize == 2
    return x.view(np.uint16)


def _round_trip(x, **kw) -> ecf8_jax.Ecf8Tensor:
    t = ecf8_jax.encode(x, **kw)
    assert t.version == 2 and t.dtype == x.dtype.name
    ecf8_jax.verify_checksums(t)
    y = ecf8_jax.decode(t)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(_bits(y), _bits(x))
    return t


def _every_pattern(dtype) -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16).view(dtype)


@pytest.mark.parametrize("dtype", WIDE)
def test_every_16_bit_pattern_round_trips(dtype):
    # All 65,536 patterns: NaNs with payloads, +-0, +-inf, subnormals; 8 chunks of 64 steps.
    t = _round_trip(_every_pattern(dtype), chunk_steps=64)
    assert t.num_chunks == 8
    assert t.code_lengths.shape == (8, 256) and t.signs.shape == (8, 16, 128)


@pytest.mark.parametrize("dtype", WIDE)
def test_every_16_bit_pattern_round_trips_shuffled_in_a_matrix(dtype):
    x = np.random.default_rng(0).permutation(_every_pattern(dtype)).reshape(256, 256)
    _round_trip(x)


@pytest.mark.parametrize("dtype", WIDE)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (), (1,), (3,), (127,), (129,), (513, 7)])
def test_awkward_shapes_round_trip(dtype, shape):
    x = (np.random.default_rng(1).standard_normal(shape) * 0.02).astype(dtype)
    t = _round_trip(x)
    assert t.num_chunks == (1 if x.size else 0)


@pytest.mark.parametrize("dtype", WIDE)
def test_ragged_multi_chunk_tensors_round_trip(dtype):
    # 5 chunks of 32 steps, the last one 77 weights into its slots.
    x = (np.random.default_rng(2).standard_t(3, 4096 * 4 + 77) * 0.05).astype(dtype)
    t = _round_trip(x, chunk_steps=32)
    assert t.num_chunks == 5


def test_specials_round_trip_bit_for_bit():
    specials = np.array(
        [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F, 0x7F7F],
        np.uint16,
    )
    x = np.tile(specials, 500).view(BF16)
    _round_trip(x, chunk_steps=32)


def test_a_constant_tensor_has_one_1_bit_code():
    t = _round_trip(np.full(5000, 0.5, BF16))
    lengths = np.asarray(t.code_lengths)
    assert lengths.sum() == 1 and lengths[0, 126] == 1  # 0.5 = 0 01111110 0000000


@pytest.mark.parametrize("dtype", WIDE)
def test_random_16_bit_patterns_cost_at_most_16_05_bits(dtype):
    x = np.random.default_rng(3).integers(0, 1 << 16, 1 << 20, dtype=np.uint16).view(dtype)
    t = _round_trip(x)
    assert t.bits_per_weight <= 16.05


def test_gaussian_bf16_costs_about_8_raw_bits_plus_the_exponent_entropy():
    x = np.random.default_rng(4).standard_normal(1 << 20).astype(np.float32) * 0.02
    x = x.astype(BF16)
    t = _round_trip(x)
    s = ecf8_jax.stats(x, encoded=t)
    # Huffman on a Gaussian exponent: ~0.1 bit over its entropy (2.54 bits here).
    assert 8 + s.exponent_entropy < t.bits_per_weight < 8 + s.exponent_entropy + 0.15
    assert t.bits_per_weight < 11.0


@pytest.mark.parametrize("layout, version", [("flat", 1), ("tiles", None), ("tiles", 2)])
@pytest.mark.parametrize("dtype", WIDE)
def test_version_1_and_tiles_refuse_16_bit_values(dtype, layout, version):
    with pytest.raises(ValueError, match="version 2 with layout 'flat' only"):
        ecf8_jax.encode(np.ones((256, 128), dtype), layout=layout, version=version)


def test_a_16_bit_tensor_claiming_version_1_is_refused_before_decoding():
    t = dataclasses.replace(ecf8_jax.encode(np.ones(64, BF16)), version=1)
    with pytest.raises(ecf8_jax.FormatError, match="version 2 with layout 'flat' only"):
        ecf8_jax.validate(t)
    with pytest.raises(ecf8_jax.FormatError, match="version 2 with layout 'flat' only"):
        ecf8_jax.decode(t)


def _tensor(dtype=BF16):
    x = (np.random.default_rng(6).standard_normal(9000) * 0.05).astype(dtype)
    return ecf8_jax.encode(x, chunk_steps=32)


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("code_lengths", lambda a: np.where(np.arange(256) == 0, 9, a).astype(np.uint8), "9 bits"),
        ("code_lengths", lambda a: np.ones_like(a), "over-subscribed"),
        ("code_lengths", lambda a: np.zeros_like(a), "no symbol present"),
        ("code_lengths", lambda a: a[:, :16].copy(), r"code_lengths \(bfloat16\).*\(3, 256\)"),
        ("chunk_offsets", lambda a: a[::-1].copy(), r"chunk_offsets\[0\]"),
        ("stream", lambda a: a[: a.size // 2].copy(), "truncated"),
        ("signs", lambda a: a[:, ::2].copy(), r"raw bytes of bfloat16.*\(3, 8, 128\)"),
        ("checksums", lambda a: a[:-1].copy(), "checksums"),
    ],
)
def test_malformed_16_bit_tensors_are_refused_with_the_reason(field, change, message):
    t = _tensor()
    assert t.num_chunks == 3
    bad = dataclasses.replace(t, **{field: change(np.asarray(getattr(t, field)))})
    with pytest.raises(ecf8_jax.FormatError, match=message):
        ecf8_jax.validate(bad)


def test_an_fp8_shaped_tensor_relabelled_bfloat16_is_refused():
    x = (np.random.default_rng(7).standard_normal(9000) * 0.05).astype(ml_dtypes.float8_e4m3fn)
    t = dataclasses.replace(ecf8_jax.encode(x, chunk_steps=32), dtype="bfloat16")
    with pytest.raises(ecf8_jax.FormatError, match="raw bytes of bfloat16"):
        ecf8_jax.validate(t)


@pytest.mark.parametrize("field", ["stream", "signs", "code_lengths"])
def test_a_flipped_bit_is_caught_by_the_chunk_checksum(field):
    t = _tensor()
    arr = np.array(getattr(t, field))
    if field == "code_lengths":  # swap two different lengths: still a valid code
        row = arr[-1]
        i, j = np.flatnonzero(row != row[np.argmax(row)])[0], int(np.argmax(row))
        row[[i, j]] = row[[j, i]]
    else:
        arr.reshape(-1).view(np.uint8)[arr.nbytes // 2] ^= 0x10
    with pytest.raises(ecf8_jax.FormatError, match="checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, **{field: arr}))


def test_the_header_checksum_covers_the_dtype():
    t = _tensor(F16)
    with pytest.raises(ecf8_jax.FormatError, match="header checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, dtype="bfloat16"))


def test_decode_chunks_returns_16_bit_slots():
    x = (np.random.default_rng(8).standard_normal(128 * 32 * 3) * 0.05).astype(BF16)
    t = ecf8_jax.encode(x, chunk_steps=32)
    out = np.asarray(ecf8_jax.decode_chunks(t, np.array([2, 0, 9])))
    assert out.dtype == np.uint16 and out.shape == (3, 128 * 32)
    chunks = _bits(x).reshape(3, -1)
    np.testing.assert_array_equal(out, chunks[[2, 0, 2]])


@pytest.mark.parametrize("dtype", WIDE)
def test_jit_vmap_and_scan_over_stacked_16_bit_tensors(dtype):
    rng = np.random.default_rng(9)
    xs = [(rng.standard_t(4, (48, 96)) * s).astype(dtype) for s in (1e-3, 0.02, 1.0, 30.0)]
    stacked = ecf8_jax.stack([ecf8_jax.encode(x, chunk_steps=32) for x in xs])
    want = np.stack([_bits(x) for x in xs])
    traces = []

    @jax.jit
    def both(t):
        traces.append(None)
        mapped = jax.vmap(ecf8_jax.decode)(t)
        _, scanned = lax.scan(lambda c, layer: (c, ecf8_jax.decode(layer)), 0, t)
        return mapped, scanned

    for half in (slice(0, 2), slice(2, 4)):
        mapped, scanned = both(jax.tree_util.tree_map(lambda leaf, h=half: leaf[h], stacked))
        assert mapped.dtype == dtype
        np.testing.assert_array_equal(_bits(mapped), want[half])
        np.testing.assert_array_equal(_bits(scanned), want[half])
    assert len(traces) == 1


def test_pad_stream_keeps_16_bit_decoding_exact():
    x = (np.random.default_rng(10).standard_normal(5000) * 0.05).astype(BF16)
    t = ecf8_jax.pad_stream(ecf8_jax.encode(x))
    np.testing.assert_array_equal(_bits(jax.jit(ecf8_jax.decode)(t)), _bits(x))


def test_codec_gemv_decodes_16_bit_weights_like_its_raw_twin():
    from ecf8_jax import codec

    w = (np.random.default_rng(11).standard_normal((8, 512)) * 0.1).astype(BF16)
    t = ecf8_jax.encode(w, chunk_steps=32, balance=False)
    assert codec.fused_gemv_ready(t)
    x = jnp.asarray(np.random.default_rng(12).standard_normal((1, 512)), jnp.float32)
    ones = jnp.ones((8,), jnp.float32)
    got = codec.gemv(x, t, ones, interpret=True)
    twin = codec.fp8_gemv(x, jnp.asarray(w), ones, interpret=True)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(twin).view(np.uint32))


def test_stats_measures_16_bit_exponents_bytes_and_values():
    x = _every_pattern(BF16)
    s = ecf8_jax.stats(x, chunk_steps=64)
    assert s.dtype == "bfloat16" and s.exponent_histogram.shape == (256,)
    np.testing.assert_array_equal(s.exponent_histogram, np.full(256, 256))
    assert s.exponent_entropy == pytest.approx(8.0)
    assert s.byte_entropy == pytest.approx(16.0) and s.value_entropy == pytest.approx(16.0)
    h = ecf8_jax.stats(np.full(10, 1.0, F16)).exponent_histogram  # 1.0 = 0 01111 0000000000
    assert h.shape == (32,) and h[15] == 10
    assert "H(value)" in str(s)


# --- every decoder implementation on a small 16-bit case (Pallas in interpret mode) ---


def _specials_and_gaussian() -> np.ndarray:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(128 * 32 * 2 + 300) * 0.02).astype(BF16).view(np.uint16)
    x[rng.integers(0, x.size, 300)] = rng.integers(0, 1 << 16, 300, dtype=np.uint16)
    return x.view(BF16)


@pytest.mark.parametrize("implementation", grouped_api.IMPLEMENTATIONS)
def test_every_implementation_decodes_16_bit_values_bit_exactly(implementation):
    x = _specials_and_gaussian()
    t = ecf8_jax.encode(x, chunk_steps=32)
    assert t.num_chunks == 3
    args = grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, t.code_lengths, np)
    words = grouped_api.decode(
        *args,
        bits=16,
        implementation=implementation,
        interpret=implementation != "xla",
    )
    out = np.asarray(reference.words_to_values(words, 16))[: x.size]
    np.testing.assert_array_equal(out, _bits(x))
