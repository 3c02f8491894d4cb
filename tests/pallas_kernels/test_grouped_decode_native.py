"""The native CPU decoder (XLA FFI) against the jnp reference, bit for bit, and its dispatch.

Every loop of ``native_cpu.cc`` this CPU has (scalar, AVX2, AVX-512) decodes valid tensors of
every kind and malformed ones (random streams, offsets past the stream or past 2**31, tables
with lengths 0 and 15 and negative entries, thresholds outside [0, 32]) to exactly the
reference's words. ``implementation=None`` takes it on CPU, not when lowering for CUDA or TPU;
a missing or failing compiler falls back with one warning and fails an explicit request with
the compiler's message.
"""

from __future__ import annotations

import re
import warnings

import jax
import ml_dtypes
import numpy as np
import pytest
from jax import lax

import ecf8_jax
from ecf8_jax.format import grouped
from ecf8_jax.format.grouped_encoder import encode_grouped
from pallas_kernels import compat
from pallas_kernels.grouped_decode import api, native_cpu
from pallas_kernels.grouped_decode.reference import grouped_decode_reference

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
SIMD = [native_cpu.SIMD_NONE, native_cpu.SIMD_AVX2, native_cpu.SIMD_AVX512]


@pytest.fixture(scope="module", autouse=True)
def built():
    reason = native_cpu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"native decoder unavailable: {reason}")


def _fp8_cases():
    rng = np.random.default_rng(0)
    specials = np.array([0x00, 0x80, 0x7F, 0xFF, 0x01, 0x81, 0x7E, 0xFE, 0x07, 0x08], np.uint8)
    body = (rng.standard_normal(4000) * 0.02).astype(E4M3).view(np.uint8)
    body[rng.integers(0, body.size, 400)] = rng.choice(specials, 400)
    fib = [1, 1]
    while len(fib) < 16:
        fib.append(fib[-1] + fib[-2])
    deep = np.repeat(np.arange(16, dtype=np.uint8), fib) << 3  # codes of 8 bits
    deep |= rng.integers(0, 8, deep.size, dtype=np.uint8) | (
        rng.integers(0, 2, deep.size, dtype=np.uint8) << 7
    )
    return {
        "all_e4m3_patterns": np.arange(256, dtype=np.uint8).repeat(9).view(E4M3),
        "all_e5m2_patterns": np.arange(256, dtype=np.uint8).repeat(9).view(E5M2),
        "specials_nan_zero_subnormal_max": body.view(E4M3),
        "longest_codes_8_bits": rng.permutation(deep.astype(np.uint8)).view(E4M3),
        "one_weight": np.array([-0.5], E4M3),
        "ragged_seven_chunks": (rng.standard_normal(4096 * 6 + 77) * 0.1).astype(E4M3),
        "incompressible_bytes": rng.integers(0, 256, 4096, np.uint8).view(E4M3),
        "constant": np.full(3000, 0.25, E4M3),
    }


CASES = _fp8_cases()


def _args(t):
    return grouped.kernel_args(t.stream, t.chunk_offsets, t.signs, np.asarray(t.code_lengths), np)


def _native(args, simd=native_cpu.SIMD_AVX512, bits=8):
    return np.asarray(native_cpu.grouped_decode_native(*args, bits=bits, simd=simd))


def _reference(args, bits=8):
    return np.asarray(grouped_decode_reference(*args, bits=bits))


@pytest.fixture(scope="module")
def encoded():
    # One stream length for all (the reference compiles once per shape): 1 chunk or 7.
    return {
        name: ecf8_jax.pad_stream(ecf8_jax.encode(x, chunk_steps=32), 8192)
        for name, x in CASES.items()
    }


@pytest.mark.parametrize("simd", SIMD)
def test_every_loop_decodes_every_fp8_case_bit_exactly(encoded, simd):
    for name, x in CASES.items():
        args = _args(encoded[name])
        words = _native(args, simd)
        np.testing.assert_array_equal(words, _reference(args), err_msg=name)
        out = words.view(np.uint8).reshape(-1)[: x.size]
        np.testing.assert_array_equal(out, x.view(np.uint8), err_msg=name)


def test_long_chunks_decode_bit_exactly():
    x = (np.random.default_rng(1).standard_normal(2 * 1024 * 128 + 999) * 0.05).astype(E4M3)
    t = ecf8_jax.encode(x, chunk_steps=1024)
    words = _native(_args(t))
    np.testing.assert_array_equal(words.view(np.uint8).reshape(-1)[: x.size], x.view(np.uint8))


def _malformed(t, seed):
    """The same shapes with random words, offsets, tables and thresholds."""
    rng = np.random.default_rng(seed)
    stream, offsets, raw, lut, threshold = (np.array(a) for a in _args(t))
    c = raw.shape[0]
    yield "random stream", (rng.integers(0, 2**32, stream.size, np.uint64).astype(np.uint32),
                            offsets, raw, lut, threshold)  # fmt: skip
    yield "offsets past the stream", (stream, np.sort(rng.integers(0, 3 * stream.size, c + 1))
                                      .astype(np.uint32), raw, lut, threshold)  # fmt: skip
    high = np.array([2**31 - 5, 2**32 - 3, 2**31 + 7] * c, np.uint32)[: c + 1]
    yield "offsets past 2**31", (stream, high, raw, lut, threshold)
    lengths = rng.integers(0, 12, (c, 16))
    yield "random code lengths", (stream, offsets, raw, grouped.decode_lut(lengths, np),
                                  grouped.refill_below(lengths, np))  # fmt: skip
    bad_lut = rng.integers(-(2**31), 2**31, lut.shape, np.int64).astype(np.int32)
    bad_lut[:, ::3] = rng.integers(0, 256, (c, 86))  # byte entries with lengths 0..15
    yield "random tables", (stream, offsets, raw, bad_lut, threshold)
    yield "byte tables, lengths 0..15", (stream, offsets, raw,
                                         rng.integers(0, 256, lut.shape).astype(np.int32),
                                         threshold)  # fmt: skip
    bad_threshold = rng.choice(np.array([-40, -1, 0, 5, 33, 64, 2**31 - 1], np.int32), c)
    yield "thresholds outside [0, 32]", (stream, offsets, raw, lut, bad_threshold)
    yield "empty stream", (np.zeros(0, np.uint32), offsets, raw, lut, threshold)
    yield "one word", (stream[:1], offsets, raw, lut, threshold)


@pytest.mark.parametrize("simd", SIMD)
def test_malformed_input_decodes_to_the_references_garbage(encoded, simd):
    for name, args in _malformed(encoded["ragged_seven_chunks"], seed=simd):
        np.testing.assert_array_equal(_native(args, simd), _reference(args), err_msg=name)


def _wide(dtype, n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 0.03).astype(dtype).view(np.uint16)
    x[rng.integers(0, n, 200)] = rng.choice(np.array([0, 0x8000, 0x7F80, 0xFFFF, 1, 0x7C00]), 200)
    return x


@pytest.mark.parametrize("simd", SIMD)
def test_16_bit_values_decode_bit_exactly(simd):
    steps = 32
    for dtype, n in [(ml_dtypes.bfloat16, 5 * 4096 + 33), (np.float16, 4096)]:
        x = _wide(dtype, n, simd)
        chunks = -(-n // (steps * 128))
        stream, offsets, raw, lengths = encode_grouped(x, steps, chunks, grouped.WIDE)
        args = grouped.kernel_args(stream, offsets, raw, lengths, np)
        words = _native(args, simd, bits=16)
        np.testing.assert_array_equal(words, _reference(args, bits=16))
        np.testing.assert_array_equal(words.view(np.uint16).reshape(-1)[:n], x)
        rng = np.random.default_rng(simd)
        garbage = (rng.integers(0, 2**32, stream.size, np.uint64).astype(np.uint32), offsets,
                   raw, rng.integers(0, 256, args[3].shape).astype(np.int32), args[4])  # fmt: skip
        np.testing.assert_array_equal(_native(garbage, simd, 16), _reference(garbage, 16))


@pytest.mark.parametrize("bits", [8, 16])
def test_values_are_the_words_bytes_in_slot_order(bits):
    x = _wide(ml_dtypes.bfloat16, 4096 + 5, 9) if bits == 16 else CASES["ragged_seven_chunks"]
    x = x.view(np.uint8 if bits == 8 else np.uint16)
    width = grouped.FP8 if bits == 8 else grouped.WIDE
    stream, offsets, raw, lengths = encode_grouped(x, 32, -(-x.size // 4096), width)
    args = grouped.kernel_args(stream, offsets, raw, lengths, np)
    got = native_cpu.grouped_decode_native(*args, bits=bits, values=True)
    want = api.decode(*args, bits=bits, implementation="xla", values=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got)[: x.size], x)
    default = jax.jit(lambda *a: api.decode(*a, bits=bits, values=True))(*args)
    np.testing.assert_array_equal(np.asarray(default), np.asarray(want))


def test_threads_and_jit_give_the_same_words(encoded):
    args = _args(encoded["ragged_seven_chunks"])
    one = jax.jit(lambda *a: native_cpu.grouped_decode_native(*a, max_threads=1))(*args)
    many = jax.jit(native_cpu.grouped_decode_native)(*args)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(many))


def test_vmap_and_scan_over_stacked_tensors(encoded):
    rng = np.random.default_rng(2)
    xs = [(rng.standard_normal(3000) * s).astype(E4M3) for s in (0.01, 0.1, 1.0)]
    stacked = ecf8_jax.stack([ecf8_jax.encode(x, chunk_steps=32) for x in xs])
    want = np.stack([x.view(np.uint8) for x in xs])
    mapped = jax.jit(jax.vmap(ecf8_jax.decode))(stacked)
    np.testing.assert_array_equal(np.asarray(mapped).view(np.uint8), want)
    _, scanned = jax.jit(lambda s: lax.scan(lambda c, t: (c, ecf8_jax.decode(t)), 0, s))(stacked)
    np.testing.assert_array_equal(np.asarray(scanned).view(np.uint8), want)


def _abstract(t):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), t)


def test_default_cpu_decode_calls_the_native_target_and_devices_do_not(encoded):
    args = _abstract(encoded["ragged_seven_chunks"])
    cpu_text = jax.jit(ecf8_jax.decode).trace(args).lower().as_text()
    assert native_cpu.TARGET in cpu_text
    for platform in ("cuda", "tpu"):
        with compat.abstract_device(platform):
            lowered = jax.jit(ecf8_jax.decode).trace(args).lower(lowering_platforms=(platform,))
        assert native_cpu.TARGET not in lowered.as_text()


@pytest.fixture
def no_native_yet(monkeypatch):
    """A process in which the native decoder was never registered nor tried."""
    monkeypatch.setattr(native_cpu, "_registered", False)
    monkeypatch.setattr(native_cpu, "_failure", None)
    monkeypatch.setattr(api, "_native_warned", False)
    return monkeypatch


def _lowered_default(t):
    f = jax.jit(lambda a: api.decode(*a, implementation=None))
    return f.trace(_abstract(_args(t))).lower().as_text()


def test_without_a_compiler_the_default_falls_back_with_one_warning(encoded, no_native_yet):
    no_native_yet.setattr(native_cpu, "find_compiler", lambda: None)
    t = encoded["one_weight"]
    with pytest.warns(UserWarning, match="falls back to xla: no C\\+\\+ compiler"):
        text = _lowered_default(t)
    assert native_cpu.TARGET not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _lowered_default(t)  # warned once per process
    np.testing.assert_array_equal(
        np.asarray(ecf8_jax.decode(t)).view(np.uint8), CASES["one_weight"].view(np.uint8)
    )
    with pytest.raises(native_cpu.NativeUnavailableError, match="no C\\+\\+ compiler"):
        api.decode(*_args(t), implementation="native_cpu")


def test_a_failing_compiler_is_quoted_when_asked_for_explicitly(encoded, no_native_yet, tmp_path):
    cxx = tmp_path / "broken-c++"
    cxx.write_text("#!/bin/sh\necho 'broken-c++ 1.0'\necho 'fatal: no space left' >&2\nexit 1\n")
    cxx.chmod(0o755)
    no_native_yet.setenv("CXX", str(cxx))
    no_native_yet.setenv("ECF8_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(native_cpu.NativeUnavailableError, match="fatal: no space left"):
        api.decode(*_args(encoded["one_weight"]), implementation="native_cpu")
    assert not list((tmp_path / "cache").glob("*"))  # no partial library left behind


def test_switched_off_by_the_environment_without_a_warning(encoded, no_native_yet):
    no_native_yet.setenv(native_cpu.ENV_SWITCH, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native_cpu.TARGET not in _lowered_default(encoded["one_weight"])


def test_the_library_is_cached_by_a_hash_of_source_jax_and_compiler():
    path = native_cpu.build()
    assert re.fullmatch(r"ecf8_native_cpu-[0-9a-f]{20}\.so", path.name)
    mtime = path.stat().st_mtime_ns
    assert native_cpu.build() == path and path.stat().st_mtime_ns == mtime


def test_bad_bits_fail_before_the_call(encoded):
    with pytest.raises(ValueError, match="not 4"):
        native_cpu.grouped_decode_native(*_args(encoded["one_weight"]), bits=4)
