"""``ecf8_jax.validate`` and ``ecf8_jax.verify_checksums``: every malformation is a FormatError.

Corrupted copies are made with ``dataclasses.replace`` on a valid three-chunk tensor. A last
group of tests decodes malformed tensors without validating them: the decoder clamps every
data-dependent index, so the result has the right shape and dtype (and garbage values).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax


def encode_v1(x, **kw):
    """This module tests format version 1 (docs/FORMAT.md); version 2 is test_grouped.py."""
    return ecf8_jax.encode(x, version=1, **kw)


E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
SHAPE = (100, 120)  # 12000 weights: three chunks of 32 steps, the last one partial
S = 32
LANES = 128


def _x() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(SHAPE) * 0.05).astype(E4M3)


def _valid() -> ecf8_jax.Ecf8Tensor:
    t = encode_v1(_x(), chunk_steps=S)
    assert t.num_chunks == 3 and t.chunk_steps == S
    return t


def _replace_array(name: str, fn):
    return lambda t: dataclasses.replace(t, **{name: fn(np.asarray(getattr(t, name)).copy())})


def _set(index, value):
    def fn(a):
        a[index] = value
        return a

    return fn


def _offsets(fn):
    """Edits chunk_offsets as int64 and stores them back as uint32."""
    return _replace_array(
        "chunk_offsets", lambda a: np.asarray(fn(a.astype(np.int64)), np.int64).astype(np.uint32)
    )


def _over_subscribe(lengths):
    # Give one more magnitude a 1-bit code: a complete code plus 2**-1 has Kraft sum 1.5.
    absent = np.flatnonzero(lengths == 0)[0]
    lengths[absent] = 1
    return lengths


CORRUPTIONS = {
    # Truncated arrays.
    "stream_truncated": (_replace_array("stream", lambda a: a[:-1]), "stream: .* words"),
    "stream_empty": (_replace_array("stream", lambda a: a[:0]), "stream: 0 words"),
    "chunk_offsets_truncated": (
        _replace_array("chunk_offsets", lambda a: a[:-1]),
        r"chunk_offsets: shape \(3,\), expected \(4,\)",
    ),
    "signs_truncated": (
        _replace_array("signs", lambda a: a[:-1]),
        r"signs: shape \(2, 1, 128\), expected \(3, 1, 128\)",
    ),
    "signs_lanes_truncated": (_replace_array("signs", lambda a: a[..., :-1]), "signs: shape"),
    "code_lengths_truncated": (
        _replace_array("code_lengths", lambda a: a[:-1]),
        r"code_lengths: shape \(127,\), expected \(128,\)",
    ),
    "checksums_truncated": (
        _replace_array("checksums", lambda a: a[:-1]),
        r"checksums: shape \(3,\), expected \(4,\)",
    ),
    "stream_two_axes": (_replace_array("stream", lambda a: a[None]), "one axis"),
    # Wrong dtypes.
    "stream_int32": (_replace_array("stream", lambda a: a.astype(np.int32)), "stream: dtype"),
    "stream_uint16": (_replace_array("stream", lambda a: a.astype(np.uint16)), "stream: dtype"),
    "chunk_offsets_int64": (
        _replace_array("chunk_offsets", lambda a: a.astype(np.int64)),
        "chunk_offsets: dtype int64, expected uint32",
    ),
    "signs_int32": (_replace_array("signs", lambda a: a.astype(np.int32)), "signs: dtype"),
    "code_lengths_int32": (
        _replace_array("code_lengths", lambda a: a.astype(np.int32)),
        "code_lengths: dtype int32, expected uint8",
    ),
    "checksums_uint64": (
        _replace_array("checksums", lambda a: a.astype(np.uint64)),
        "checksums: dtype",
    ),
    # Static metadata.
    "version_bumped": (lambda t: dataclasses.replace(t, version=3), "version 3"),
    "version_zero": (lambda t: dataclasses.replace(t, version=0), "version 0"),
    "dtype_unknown": (
        lambda t: dataclasses.replace(t, dtype="float8_e4m3fnuz"),
        "unknown dtype 'float8_e4m3fnuz'",
    ),
    "dtype_bfloat16_in_version_1": (
        lambda t: dataclasses.replace(t, dtype="bfloat16"),
        "version 2 with layout .flat. only",
    ),
    "shape_negative": (lambda t: dataclasses.replace(t, shape=(-1, 120)), "non-negative"),
    "chunk_steps_48": (lambda t: dataclasses.replace(t, chunk_steps=48), "multiple of 32"),
    "chunk_steps_0": (lambda t: dataclasses.replace(t, chunk_steps=0), "multiple of 32"),
    "chunk_steps_negative": (lambda t: dataclasses.replace(t, chunk_steps=-32), "multiple of 32"),
    "chunk_steps_64_changes_chunk_count": (
        lambda t: dataclasses.replace(t, chunk_steps=64),
        r"chunk_offsets: shape \(4,\), expected \(3,\)",
    ),
    "shape_with_more_weights": (
        lambda t: dataclasses.replace(t, shape=(200, 120)),
        "chunk_offsets: shape",
    ),
    # Inconsistent offsets.
    "offsets_decreasing": (_offsets(_set(2, 1)), "chunk_offsets decrease at chunk 1"),
    "offsets_not_starting_at_0": (_offsets(_set(0, 1)), r"chunk_offsets\[0\] = 1, expected 0"),
    "offsets_end_beyond_stream": (
        lambda t: _offsets(_set(-1, 2 * t.stream.shape[0] + 1))(t),
        "chunk_offsets end at unit",
    ),
    "chunk_with_too_many_units": (
        _offsets(lambda a: np.concatenate([[0], a[1:] + S * LANES])),
        f"chunk 0 holds .* units, more than {S * LANES}",
    ),
    # Code lengths.
    "kraft_over_one": (_replace_array("code_lengths", _over_subscribe), "Kraft"),
    "all_lengths_one": (_replace_array("code_lengths", lambda a: np.ones_like(a)), "Kraft"),
    "length_17": (
        _replace_array("code_lengths", _set(np.s_[:], 17)),
        "longest code 17 > 16",
    ),
    "length_255": (_replace_array("code_lengths", _set(5, 255)), "longest code 255"),
    "no_symbol_present": (
        _replace_array("code_lengths", lambda a: np.zeros_like(a)),
        "no symbol present for 12000 weights",
    ),
}


def test_the_valid_tensor_passes_validate_and_verify_checksums():
    t = _valid()
    assert ecf8_jax.validate(t) is t
    assert ecf8_jax.verify_checksums(t) is t


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_validate_raises_format_error_naming_the_problem(name):
    corrupt, message = CORRUPTIONS[name]
    t = corrupt(_valid())
    with pytest.raises(ecf8_jax.FormatError, match=message):
        ecf8_jax.validate(t)
    with pytest.raises(ecf8_jax.FormatError):  # verify_checksums validates first
        ecf8_jax.verify_checksums(t)


def test_validate_and_verify_checksums_accept_device_arrays():
    t = jax.device_put(_valid())
    assert isinstance(t.stream, jax.Array)
    ecf8_jax.verify_checksums(t)


@pytest.mark.parametrize("version", [0, 3])
def test_decode_refuses_an_unknown_format_version(version):
    # docs/FORMAT.md, Versioning: "A decoder refuses any version it does not know
    # (FormatError)". The version is static, so refusing it costs nothing at trace time.
    t = dataclasses.replace(encode_v1(np.ones(3, E4M3)), version=version)
    with pytest.raises(ecf8_jax.FormatError, match="version"):
        ecf8_jax.decode(t)


def test_format_error_is_a_value_error():
    assert issubclass(ecf8_jax.FormatError, ValueError)


def test_validate_rejects_things_that_are_not_ecf8_tensors():
    with pytest.raises(ecf8_jax.FormatError, match="expected an Ecf8Tensor"):
        ecf8_jax.validate(_x())


def test_validate_under_jit_raises_format_error_about_tracers():
    t = _valid()
    with pytest.raises(ecf8_jax.FormatError, match="traced"):
        jax.jit(ecf8_jax.validate)(t)


def test_validate_rejects_a_stacked_tensor():
    t = _valid()
    with pytest.raises(ecf8_jax.FormatError, match="expected one axis"):
        ecf8_jax.validate(ecf8_jax.stack([t, t]))


def test_validate_accepts_an_empty_tensor_and_a_single_symbol_code():
    ecf8_jax.verify_checksums(encode_v1(np.zeros((0, 7), E4M3)))
    t = ecf8_jax.verify_checksums(encode_v1(np.ones(10, E4M3)))
    assert int(t.code_lengths.sum()) == 1


def test_validate_accepts_an_incomplete_code_and_a_zero_padded_stream():
    t = _valid()
    lengths = t.code_lengths.copy()
    lengths[np.flatnonzero(lengths == 0)[0]] = 16  # Kraft sum 1 + 2**-16 > 1 ...
    with pytest.raises(ecf8_jax.FormatError, match="Kraft"):
        ecf8_jax.validate(dataclasses.replace(t, code_lengths=lengths))
    lengths = t.code_lengths.copy()
    assert lengths.max() < 16
    lengths[lengths == lengths.max()] += 1  # ... but lengthening codes keeps it a prefix code
    ecf8_jax.validate(dataclasses.replace(t, code_lengths=lengths))
    ecf8_jax.verify_checksums(dataclasses.replace(t, stream=np.pad(t.stream, (0, 5))))


# --- checksums ----------------------------------------------------------------------------


def _flip_bit(a: np.ndarray, flat_index: int, bit: int) -> np.ndarray:
    a = a.copy()
    a.reshape(-1)[flat_index] ^= a.dtype.type(1 << bit)
    return a


@pytest.mark.parametrize("chunk", [0, 1, 2])
@pytest.mark.parametrize("bit", [0, 15, 16, 31])
def test_verify_checksums_names_the_chunk_with_a_flipped_stream_bit(chunk, bit):
    t = _valid()
    unit = int(t.chunk_offsets[chunk]) + 7  # a unit inside the chunk
    word, low_half = unit // 2, unit % 2
    if (bit < 16) != low_half:  # keep the flip inside this unit
        word, low_half = (unit + 1) // 2, (unit + 1) % 2
    assert int(t.chunk_offsets[chunk]) <= 2 * word + low_half < int(t.chunk_offsets[chunk + 1])
    bad = dataclasses.replace(t, stream=_flip_bit(t.stream, word, bit))
    ecf8_jax.validate(bad)  # still well-formed: only the checksum notices
    with pytest.raises(ecf8_jax.FormatError, match=f"chunk {chunk} checksum mismatch"):
        ecf8_jax.verify_checksums(bad)


@pytest.mark.parametrize("chunk", [0, 2])
def test_verify_checksums_names_the_chunk_with_a_flipped_sign_bit(chunk):
    t = _valid()
    signs = t.signs.copy()
    signs[chunk, 0, 77] ^= np.uint32(1 << 13)
    bad = dataclasses.replace(t, signs=signs)
    ecf8_jax.validate(bad)
    with pytest.raises(ecf8_jax.FormatError, match=f"chunk {chunk} checksum mismatch"):
        ecf8_jax.verify_checksums(bad)


def test_verify_checksums_reports_how_many_chunks_differ():
    t = _valid()
    signs = t.signs.copy()
    signs[1:, 0, 0] ^= np.uint32(1)
    with pytest.raises(ecf8_jax.FormatError, match=r"chunk 1 .*\(2 of 3 chunks differ\)"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, signs=signs))


def test_verify_checksums_catches_a_flipped_code_length_bit_in_the_header():
    t = _valid()
    lengths = t.code_lengths.copy()
    # Flip a 0 bit of a present length to 1: the code gets longer, so it stays a valid prefix
    # code that validate accepts; only the header checksum notices.
    symbol = int(np.flatnonzero((lengths > 0) & (lengths < 8))[0])
    lengths[symbol] |= 8
    bad = dataclasses.replace(t, code_lengths=lengths)
    ecf8_jax.validate(bad)
    with pytest.raises(ecf8_jax.FormatError, match="header checksum mismatch"):
        ecf8_jax.verify_checksums(bad)


def test_verify_checksums_catches_changed_offsets_and_metadata_in_the_header():
    t = _valid()
    offsets = t.chunk_offsets.copy()
    offsets[1] -= 1
    with pytest.raises(ecf8_jax.FormatError, match="header checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, chunk_offsets=offsets))
    with pytest.raises(ecf8_jax.FormatError, match="header checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, shape=(120, 100)))


def test_verify_checksums_catches_a_flipped_checksum():
    t = _valid()
    with pytest.raises(ecf8_jax.FormatError, match="chunk 1 checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, checksums=_flip_bit(t.checksums, 1, 3)))
    with pytest.raises(ecf8_jax.FormatError, match="header checksum mismatch"):
        ecf8_jax.verify_checksums(dataclasses.replace(t, checksums=_flip_bit(t.checksums, 3, 3)))


# --- decoding malformed tensors -----------------------------------------------------------

MALFORMED = {
    "offsets_far_past_the_stream": _offsets(lambda a: a + 10**9),
    "offsets_at_uint32_max": _offsets(lambda a: np.full_like(a, 2**32 - 1)),
    "offsets_decreasing": _offsets(lambda a: a[::-1]),
    "garbage_code_lengths": _replace_array(
        "code_lengths", lambda a: np.random.default_rng(0).integers(0, 256, a.shape, np.uint8)
    ),
    "no_code_lengths": _replace_array("code_lengths", lambda a: np.zeros_like(a)),
    "all_lengths_one": _replace_array("code_lengths", lambda a: np.ones_like(a)),
    "all_lengths_16": _replace_array("code_lengths", lambda a: np.full_like(a, 16)),
    "random_stream": _replace_array(
        "stream", lambda a: np.random.default_rng(1).integers(0, 2**32, a.shape, np.uint32)
    ),
}

_DECODE_MALFORMED = jax.jit(ecf8_jax.decode)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_decoding_an_unvalidated_malformed_tensor_returns_the_right_shape(name):
    t = MALFORMED[name](_valid())
    out = _DECODE_MALFORMED(t)
    out.block_until_ready()
    assert out.shape == SHAPE
    assert out.dtype == E4M3


@pytest.mark.parametrize("words", [0, 1])
def test_decoding_a_truncated_stream_returns_the_right_shape(words):
    t = _valid()
    out = ecf8_jax.decode(dataclasses.replace(t, stream=t.stream[:words]))
    assert out.shape == SHAPE
    assert out.dtype == E4M3
