"""``ecf8_jax.atomic``: a target is the old file or the complete new one, never a part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecf8_jax import atomic

REPO = Path(__file__).resolve().parents[1]


def test_write_json_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic.write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_value_json_cannot_hold_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        atomic.write_json(target, {"x": float("nan")}, allow_nan=False)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_error_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_file(target) as f:
        f.write(b"new, but only half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_atomic_file_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="whole files"), atomic.atomic_file(tmp_path / "x", "ab"):
        pass


def test_atomic_folder_swaps_in_the_new_folder_and_cleans_up_after_an_error(tmp_path):
    target = tmp_path / "ck"
    with atomic.atomic_folder(target) as staging:
        staging.mkdir()
        (staging / "a").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic.atomic_folder(target):
            pass
    with pytest.raises(RuntimeError), atomic.atomic_folder(target, overwrite=True) as staging:
        staging.mkdir()
        (staging / "a").write_text("2")
        Path(f"{staging}.orbax-checkpoint-tmp-1").mkdir()  # a library's own leftover
        raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    with atomic.atomic_folder(target, overwrite=True) as staging:
        staging.mkdir()
        (staging / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_save_figure_writes_a_complete_png(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = plt.figure(figsize=(1, 1))
    atomic.save_figure(fig, tmp_path / "f.png", dpi=20)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_KILLED_WRITE = textwrap.dedent(
    """
    import sys, time
    from ecf8_jax.atomic import atomic_file

    with atomic_file(sys.argv[1]) as f:
        f.write(b"n" * 4096)
        f.flush()
        print("half written", flush=True)
        time.sleep(60)  # killed here
        f.write(b"n" * 4096)
    """
)


def test_a_process_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old contents")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITE, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == "half written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old contents"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert [p.name.startswith(".weights.bin.tmp-") for p in leftovers] == [True]
    assert leftovers[0].stat().st_size == 4096  # the half that was written went elsewhere
