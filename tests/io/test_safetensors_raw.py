"""The strict safetensors reader and byte-exact writer (ecf8_jax.io.safetensors_raw)."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecf8_jax.io import safetensors_raw as sr


def _tensors():
    rng = np.random.default_rng(0)
    fp8 = rng.integers(0, 256, (16, 8), dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)
    return {
        "model.layers.0.weight": fp8,
        "model.layers.0.weight_scale": rng.random((16, 1), dtype=np.float32),
        "e5m2": rng.integers(0, 256, 5, dtype=np.uint8).view(ml_dtypes.float8_e5m2),
        "bf16": rng.integers(0, 1 << 16, (3, 3), dtype=np.uint16).view(ml_dtypes.bfloat16),
        "f16": rng.standard_normal(4).astype(np.float16),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False, True]),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 7), np.float32),
    }


def _raw_file(header: dict, data: bytes, pad: bool = True) -> bytes:
    head = json.dumps(header).encode()
    if pad:
        head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def test_every_dtype_reads_back_bit_for_bit(tmp_path):
    tensors = _tensors()
    sr.write(tmp_path / "a.safetensors", tensors, metadata={"format": "pt"})
    header, back = sr.read(tmp_path / "a.safetensors")
    assert header.metadata == {"format": "pt"}
    assert set(back) == set(tensors)
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
        np.testing.assert_array_equal(
            back[name].reshape(-1).view(np.uint8), arr.reshape(-1).view(np.uint8)
        )


def test_canonical_files_match_the_safetensors_library_byte_for_byte(tmp_path):
    # Only dtypes numpy knows (the library's numpy API has no bfloat16 or FP8); one metadata
    # key, since the library writes __metadata__ in hash-map order.
    native = (np.float16, np.float32, np.int64, np.bool_)
    plain = {k: v for k, v in _tensors().items() if v.dtype in native}
    safetensors.numpy.save_file(plain, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    sr.write(tmp_path / "ours.safetensors", plain, metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (
        tmp_path / "ref.safetensors"
    ).read_bytes()


def test_writing_with_the_read_header_reproduces_the_file(tmp_path):
    # A header with odd key order, extra whitespace and metadata: reproduced verbatim.
    data = np.arange(4, dtype=np.float32).tobytes() + bytes([0x38, 0xB8])
    head = (
        b'{ "w": {"data_offsets": [16, 18], "shape": [2], "dtype": "F8_E4M3"},\n'
        b' "__metadata__": {"b": "2", "a": "1"},'
        b' "s": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}   '
    )
    src = tmp_path / "src.safetensors"
    src.write_bytes(struct.pack("<Q", len(head)) + head + data)
    h, tensors = sr.read(src)
    sr.write(tmp_path / "dst.safetensors", tensors, header=h)
    assert (tmp_path / "dst.safetensors").read_bytes() == src.read_bytes()
    with pytest.raises(sr.SafetensorsError, match="'w' is float32"):
        sr.write(tmp_path / "bad.safetensors", {**tensors, "w": np.zeros(2, np.float32)}, header=h)
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.safetensors"
    sr.write(path, {"a": np.ones(3, np.float32)})
    before = path.read_bytes()
    with pytest.raises(sr.SafetensorsError, match="no safetensors name"):
        sr.write(path, {"a": np.ones(3, np.complex64)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "header, data, message",
    [
        (
            {"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}},
            8,
            "'a': unknown dtype 'F99'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            8,
            r"'a': .*hold 8 bytes, but F32\[3\] needs 12",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            4,
            "'a': .*end past the data",
        ),
        (
            {**GOOD, "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}},
            8,
            "'b' at .* overlaps 'a'|'a' at .* overlaps 'b'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            12,
            "'a' starts at 4, leaving a gap",
        ),
        (GOOD, 9, "1 bytes after the last tensor"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "'a': shape"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            8,
            r"'a': data_offsets \[8, 0\]",
        ),
        ({"a": {"dtype": "F32", "shape": [2]}}, 8, "'a': entry has"),
        ({**GOOD, "__metadata__": {"k": 1}}, 8, "__metadata__ must map strings"),
        ([1, 2], 0, "header does not start with"),
    ],
)
def test_a_lying_header_is_refused_naming_the_tensor(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_raw_file(header, bytes(data)))
    with pytest.raises(sr.SafetensorsError, match=message):
        sr.read(path)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 1 << 40), "exceeds 100000000"),
        (struct.pack("<Q", 64) + b"{}", "exceeds the file"),
        (struct.pack("<Q", 4) + b"{,} ", "not valid UTF-8 JSON"),
        (struct.pack("<Q", 4) + b"{\xff} ", "not valid UTF-8 JSON"),
        (struct.pack("<Q", 8) + b'{"a":1} ', "entry has int"),
        (struct.pack("<Q", 16) + b'{"a":{},"a":{}} ', "'a' appears twice"),
    ],
)
def test_a_malformed_header_is_refused(tmp_path, raw, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(sr.SafetensorsError, match=message):
        sr.read(path)


@pytest.fixture(scope="module")
def valid_file_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ok.safetensors"
    sr.write(path, _tensors(), metadata={"format": "pt"})
    return path.read_bytes()


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("digit"), st.integers(0, 10_000), st.integers(0, 9)),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(damages=st.lists(damage, min_size=1, max_size=3))
def test_fuzzed_files_either_read_consistently_or_raise_a_clear_error(
    tmp_path, valid_file_bytes, damages
):
    raw = bytearray(valid_file_bytes)
    for kind, pos, arg in damages:
        pos %= max(len(raw), 1)
        if kind == "flip" and raw:
            raw[pos] ^= 1 << arg
        elif kind == "truncate":
            raw = raw[:pos]
        elif kind == "digit":  # rewrite a header digit: offsets and shapes that lie
            digits = [i for i in range(8, min(len(raw), 8 + 600)) if chr(raw[i]).isdigit()]
            if digits:
                raw[digits[pos % len(digits)]] = ord(str(arg))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(raw))
    try:
        header, tensors = sr.read(path)
    except sr.SafetensorsError as e:
        assert str(e).startswith("fuzzed.safetensors: ") and "\n" not in str(e)
        return
    assert header.file_size == len(raw)
    for name, info in header.tensors.items():
        assert tensors[name].nbytes == info.nbytes
