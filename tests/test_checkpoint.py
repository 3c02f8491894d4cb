"""Orbax checkpoints of Ecf8Tensors and arrays: bit-exact, verified, atomic (ecf8_jax.checkpoint)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

import ecf8_jax
from ecf8_jax import checkpoint
from ecf8_jax.format.tensor import FormatError

FP8 = ml_dtypes.float8_e4m3fn
REPO = Path(__file__).resolve().parent.parent


def _fp8(shape, seed=0, dtype=FP8):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def _tree():
    w = _fp8((300, 257))
    return {
        "layer0": {
            "w": ecf8_jax.encode(w),
            "w_tiles": ecf8_jax.encode(_fp8((64, 256), 1), layout="tiles"),
            "bias": np.arange(7, dtype=np.float32).astype(ml_dtypes.bfloat16),
            "scale": np.float32(0.125),
        },
        "e5m2": ecf8_jax.encode(_fp8((1000,), 2, ml_dtypes.float8_e5m2)),
        "empty": ecf8_jax.encode(np.zeros((0, 3), FP8)),
        "no.dots/or slashes": np.arange(3, dtype=np.int32),
        "zero_size": np.zeros((0, 4), np.float16),
        "stacked": ecf8_jax.stack([ecf8_jax.encode(w), ecf8_jax.encode(w[::-1].copy())]),
    }


def _bytes(x) -> np.ndarray:
    return np.asarray(x).reshape(-1).view(np.uint8)


def assert_trees_bit_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.shape(x) == np.shape(y)
        np.testing.assert_array_equal(_bytes(x), _bytes(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tree = _tree()
    path = checkpoint.save(tmp_path_factory.mktemp("ck") / "ckpt", tree, metadata={"note": "x"})
    return tree, path


def _copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def _edit_metadata(path: Path, fn) -> None:
    meta_file = path / checkpoint.METADATA_ITEM / "metadata"
    meta = json.loads(meta_file.read_text())
    fn(meta)
    meta_file.write_text(json.dumps(meta))


def _data_files(path: Path) -> list[Path]:
    files = [p for p in (path / checkpoint.ARRAYS_ITEM).rglob("*") if p.is_file()]
    return sorted((p for p in files if p.parent.name == "d"), key=lambda p: p.stat().st_size)


# ----------------------------------------------------------------------------- round trips


def test_restore_is_bit_exact_and_keeps_static_metadata(saved):
    tree, path = saved
    out = checkpoint.restore(path)
    assert_trees_bit_equal(out, tree)
    assert out["layer0"]["w"].metadata() == tree["layer0"]["w"].metadata()
    assert out["layer0"]["w_tiles"].layout == "tiles"
    assert isinstance(out["layer0"]["bias"], jax.Array)
    assert list(out) == list(tree)  # insertion order kept


def test_restored_tensors_decode_to_the_original_fp8_bytes(saved):
    tree, path = saved
    out = checkpoint.restore(path)
    back = jax.jit(ecf8_jax.decode)(out["layer0"]["w"])
    np.testing.assert_array_equal(_bytes(back), _bytes(_fp8((300, 257))))


def test_restore_to_host_returns_numpy_and_accepts_a_matching_target(saved):
    tree, path = saved
    out = checkpoint.restore(path, to_host=True, target=tree)
    assert isinstance(out["layer0"]["bias"], np.ndarray)
    assert isinstance(out["layer0"]["w"].stream, np.ndarray)
    assert_trees_bit_equal(out, tree)


def test_restore_onto_a_given_sharding(saved):
    tree, path = saved
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    replicated = NamedSharding(mesh, PartitionSpec())
    out = checkpoint.restore(path, sharding=replicated)
    assert out["layer0"]["w"].stream.sharding == replicated
    assert out["layer0"]["bias"].sharding == replicated
    seen = []

    def choose(name, leaf):
        seen.append((name, leaf))
        return SingleDeviceSharding(jax.devices()[-1])

    out = checkpoint.restore(path, sharding=choose)
    assert ("layer0/w", "stream") in seen and ("layer0/bias", "value") in seen
    assert_trees_bit_equal(out, tree)


def test_user_metadata_and_format_fields_are_stored(saved):
    _, path = saved
    meta = checkpoint.read_metadata(path)
    assert meta["format"] == "ecf8-checkpoint" and meta["format_version"] == 1
    assert meta["user"] == {"note": "x"}
    w = next(i for i in meta["items"] if i["path"] == ["layer0", "w"])
    assert w["ecf8"] == {
        "version": ecf8_jax.FORMAT_VERSION,
        "shape": [300, 257],
        "dtype": "float8_e4m3fn",
        "chunk_steps": w["ecf8"]["chunk_steps"],
        "layout": "flat",
    }


def test_on_disk_size_is_about_the_compressed_size(tmp_path):
    q = _fp8((1024, 1024))
    t = ecf8_jax.encode(q)
    path = checkpoint.save(tmp_path / "ck", {"w": t})
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert t.nbytes < on_disk < 1.02 * t.nbytes + 16 * 1024
    assert on_disk < 0.9 * q.nbytes


def test_save_refuses_an_existing_path_unless_overwrite(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"a": np.arange(3)})
    with pytest.raises(FileExistsError, match="already exists"):
        checkpoint.save(path, {"a": np.arange(4)})
    checkpoint.save(path, {"b": np.arange(5, dtype=np.int32)}, overwrite=True)
    assert list(checkpoint.restore(path)) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging leftovers


def test_save_refuses_leaves_that_are_not_numeric_arrays(tmp_path):
    with pytest.raises(TypeError, match="cannot save an array of <U5"):
        checkpoint.save(tmp_path / "a", {"x": "hello"})
    with pytest.raises(TypeError, match="cannot save an array of object"):
        checkpoint.save(tmp_path / "b", {"x": object()})
    assert not any(tmp_path.iterdir())


def test_lists_and_int_keys_are_stored_as_dicts_and_rebuilt_from_a_target(tmp_path):
    tree = {"x": [np.arange(3, dtype=np.float32), np.ones(2, np.float32)], 1: np.zeros(2)}
    path = checkpoint.save(tmp_path / "a", tree)
    back = checkpoint.restore(path, target=tree, to_host=True)
    assert isinstance(back["x"], list) and set(back) == {"x", 1}
    np.testing.assert_array_equal(back["x"][0], tree["x"][0])


def test_int64_arrays_need_to_host_without_x64(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"ids": np.arange(3, dtype=np.int64)})
    if not jax.config.jax_enable_x64:
        with pytest.raises(FormatError, match="ids: int64 would be narrowed"):
            checkpoint.restore(path)
    out = checkpoint.restore(path, to_host=True)
    assert out["ids"].dtype == np.int64


def test_manager_saves_async_and_restores_steps(tmp_path):
    tree = _tree()
    with checkpoint.CheckpointManager(tmp_path / "run", max_to_keep=2) as mngr:
        for step in range(3):
            mngr.save(step, tree, metadata={"step": step})
        mngr.wait_until_finished()
        assert mngr.all_steps() == [1, 2]
        assert mngr.latest_step() == 2
        assert_trees_bit_equal(mngr.restore(), tree)
        assert mngr.metadata(1)["user"] == {"step": 1}
        with pytest.raises(FormatError, match="no finished checkpoint for step 7"):
            mngr.restore(7)


# ----------------------------------------------------------------------------- refusals


def test_a_checkpoint_of_another_format_version_is_refused(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    _edit_metadata(path, lambda m: m.update(format_version=2))
    with pytest.raises(FormatError, match="unsupported ECF8 checkpoint version 2"):
        checkpoint.restore(path)


def test_an_item_of_another_ecf8_version_is_refused_by_name(saved, tmp_path):
    path = _copy(saved[1], tmp_path)

    def bump(meta):
        next(i for i in meta["items"] if i["path"] == ["e5m2"])["ecf8"]["version"] = 9

    _edit_metadata(path, bump)
    with pytest.raises(FormatError, match="e5m2: unsupported ECF8 format version 9"):
        checkpoint.restore(path)


def test_an_item_missing_from_the_arrays_is_refused_by_name(saved, tmp_path):
    path = _copy(saved[1], tmp_path)

    def add(meta):
        meta["items"].append(
            {
                "path": ["ghost"],
                "key": "t999999",
                "kind": "array",
                "leaves": {"value": {"shape": [4], "dtype": "float32", "crc32": 0}},
            }
        )

    _edit_metadata(path, add)
    with pytest.raises(FormatError, match="ghost: array 'value' is missing"):
        checkpoint.restore(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("e5m2"), "'e5m2' is in the checkpoint but not expected"),
        (lambda t: t.update(extra=np.zeros(2)), "'extra' of the expected tree is not in"),
        (
            lambda t: t["layer0"].update(bias=np.zeros(8, ml_dtypes.bfloat16)),
            r"layer0/bias: checkpoint holds array .*\[7\].*expected array .*\[8\]",
        ),
        (
            lambda t: t["layer0"].update(
                w=dataclasses.replace(t["layer0"]["w"], dtype="float8_e5m2")
            ),
            "layer0/w: checkpoint holds ecf8 .*float8_e4m3fn.*expected ecf8 .*float8_e5m2",
        ),
        (
            lambda t: t.update(e5m2=jax.ShapeDtypeStruct((1000,), np.float32)),
            "e5m2: checkpoint holds ecf8",
        ),
    ],
)
def test_a_checkpoint_of_another_structure_is_refused_by_name(saved, change, message):
    tree, path = saved
    target = _tree()
    change(target)
    with pytest.raises(FormatError, match=message):
        checkpoint.restore(path, target=target)


def test_a_bit_flip_in_an_ecf8_stream_is_caught_by_its_checksum(tmp_path):
    q = _fp8((512, 512))
    path = checkpoint.save(tmp_path / "ck", {"big": ecf8_jax.encode(q), "b": np.ones(3)})
    data = _data_files(path)[-1]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    data.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"^big: (chunk \d+ checksum mismatch|unreadable)"):
        checkpoint.restore(path)


def test_a_bit_flip_in_an_ordinary_array_is_caught_by_its_checksum(tmp_path):
    value = np.random.default_rng(0).integers(0, 255, 200_000, dtype=np.uint8)
    path = checkpoint.save(tmp_path / "ck", {"emb": value})
    data = _data_files(path)[-1]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"^emb: (checksum mismatch|unreadable)"):
        checkpoint.restore(path)


def test_a_truncated_array_file_is_refused_by_item_name(tmp_path):
    q = _fp8((512, 512))
    path = checkpoint.save(tmp_path / "ck", {"big": ecf8_jax.encode(q)})
    data = _data_files(path)[-1]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(FormatError, match=r"^big: "):
        checkpoint.restore(path)


def test_missing_or_damaged_metadata_is_refused(saved, tmp_path):
    with pytest.raises(FormatError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "nothing")
    path = _copy(saved[1], tmp_path)
    (path / checkpoint.METADATA_ITEM / "metadata").write_text("{not json")
    with pytest.raises(FormatError, match="unreadable checkpoint metadata"):
        checkpoint.restore(path)
    (path / checkpoint.METADATA_ITEM / "metadata").write_text('{"format": "other"}')
    with pytest.raises(FormatError, match="not an ECF8 checkpoint"):
        checkpoint.restore(path)


# ----------------------------------------------------------------------------- atomicity

_KILLED_SAVE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ecf8_jax
    from ecf8_jax import checkpoint

    directory, size = sys.argv[1], int(sys.argv[2])
    q = np.random.default_rng(0).standard_normal((256, 256)).astype("float8_e4m3fn")
    mngr = checkpoint.CheckpointManager(directory, async_save=False)
    mngr.save(1, {"w": ecf8_jax.encode(q), "x": np.arange(10, dtype=np.int32)})
    mngr.wait_until_finished()
    print("step 1 saved", flush=True)
    big = np.frombuffer(np.random.default_rng(1).bytes(size), np.uint8)
    mngr.save(2, {"w": ecf8_jax.encode(q), "x": big})
    mngr.wait_until_finished()
    print("step 2 saved", flush=True)
    """
)


def test_a_save_killed_mid_write_leaves_the_previous_step_readable(tmp_path):
    directory = tmp_path / "run"
    script = tmp_path / "save.py"
    script.write_text(_KILLED_SAVE)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory), str(192 << 20)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == "step 1 saved"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until step 2 has data files on disk
            tmp = [p for p in directory.iterdir() if "tmp" in p.name]
            if tmp and any(p.is_file() for p in tmp[0].rglob("*")):
                break
            assert proc.poll() is None, "the save finished before it could be killed"
            time.sleep(0.002)
        else:
            pytest.fail("step 2 never started writing")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with checkpoint.CheckpointManager(directory) as mngr:
        assert mngr.all_steps() == [1]
        out = mngr.restore(to_host=True)
        np.testing.assert_array_equal(out["x"], np.arange(10, dtype=np.int32))
        q = np.random.default_rng(0).standard_normal((256, 256)).astype(FP8)
        np.testing.assert_array_equal(_bytes(ecf8_jax.decode(out["w"])), _bytes(q))
        mngr.save(2, {"x": np.arange(3)})  # and the folder is still usable
        mngr.wait_until_finished()
        assert mngr.all_steps() == [1, 2]
