"""``cnnscope index`` killed with SIGKILL at several points, then rerun: the same index.

The kill points are exact: ``CNNSCOPE_INDEX_KILL_AT`` makes the command SIGKILL itself
right after its N-th checkpoint is on disk, half-way through writing one (new arrays
written, manifest not), with the final manifest written to its temporary file but not
renamed, or between writing the final arrays and the manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnscope.atomic import KILL_ENV
from cnnscope.index import build_index, open_index
from cnnscope.models import load_model

from .mixed_net import INPUT_SIZE
from .test_index import MIXED, assert_same_index, write_corrupt, write_images

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "shared#2", "conv2", "fc"]


def cli(folder: Path, out: Path, kill_at: str | None = None, workers: int = 0):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    cmd = [sys.executable, "-m", "cnnscope", "-v", "index", str(folder), "--out", str(out)]
    cmd += ["--layers", ",".join(LAYERS), "--top-k", "3", "--batch-size", "2"]
    cmd += ["--workers", str(workers), "--checkpoint-every", "1"]
    cmd += ["--model", MIXED, "--input-size", "10x14"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def checkpoint(out: Path) -> dict:
    return json.loads((out / ".building" / "rank0.json").read_text())


@pytest.fixture(scope="module")
def mixed():
    return load_model(MIXED, input_size=INPUT_SIZE)


def test_sigkill_at_several_points_then_resume(mixed, tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, range(12))
    write_corrupt(folder)  # 15 files: 8 batches of 2
    ref = build_index(mixed, folder, LAYERS, top_k=3, out=tmp_path / "ref", batch_size=2, workers=0)
    out = tmp_path / "ix"

    # killed right after the 2nd checkpoint (with a decoding worker process)
    run = cli(folder, out, "checkpoint:2", workers=1)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert checkpoint(out)["batches_done"] == 2 and not (out / "index.json").exists()

    # resumed, then killed while the 4th checkpoint was half written
    run = cli(folder, out, "checkpoint-half:4")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "resuming: 2 of 8 batches already done" in run.stderr
    assert checkpoint(out)["batches_done"] == 3
    assert len(list((out / ".building").glob("rank0-*.npz"))) == 2  # old and new arrays

    # resumed, then killed with the final manifest in its temporary file
    run = cli(folder, out, "commit-tmp")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "resuming: 3 of 8 batches already done" in run.stderr
    assert not (out / "index.json").exists() and list(out.glob(".index.json.*.tmp"))

    # the same command once more finishes, and the index is bitwise the uninterrupted one
    run = cli(folder, out)
    assert run.returncode == 0, run.stderr
    assert "resuming: 8 of 8 batches already done" in run.stderr
    assert "indexed 12 new images (0 already indexed, 3 skipped)" in run.stdout
    assert_same_index(out, ref)
    assert not (out / ".building").exists() and not list(out.glob(".*.tmp"))
    assert len(list(out.glob("topk-*.npz"))) == 1

    # an update killed at its commit leaves the previous index intact and readable
    old = open_index(out).fingerprint
    write_images(folder, [20, 21, 22])
    run = cli(folder, out, "commit")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert open_index(out).fingerprint == old
    run = cli(folder, out)
    assert run.returncode == 0, run.stderr
    assert "indexed 3 new images (12 already indexed, 0 skipped)" in run.stdout
    full = build_index(mixed, folder, LAYERS, top_k=3, out=tmp_path / "full", batch_size=2)
    assert_same_index(out, full)


def test_atomic_write_killed_before_rename_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    code = (
        "import sys; from cnnscope.atomic import atomic_write; "
        "atomic_write(sys.argv[1], b'new' * 1000, kill_point='swap')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), KILL_ENV: "swap"}
    run = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    (left,) = [p for p in tmp_path.iterdir() if p != target]  # the dead writer's temporary file
    assert left.read_bytes() == b"new" * 1000
    from cnnscope.atomic import remove_stale_temps

    remove_stale_temps(tmp_path)
    assert list(tmp_path.iterdir()) == [target]
    env.pop(KILL_ENV)
    subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=60, check=True)
    assert target.read_bytes() == b"new" * 1000


def test_old_module_name_still_imports_with_a_warning():
    import warnings

    from cnnscope import atomic
    from cnnscope.index import bundle, store

    old = [*bundle.__all__, "MAX_INFLATION", *atomic.__all__]
    for name in old:
        with pytest.warns(DeprecationWarning, match=f"cnnscope.index.store.{name} is deprecated"):
            value = getattr(store, name)
        assert value is getattr(
            bundle if name in (*bundle.__all__, "MAX_INFLATION") else atomic, name
        )
    with pytest.raises(AttributeError):
        store.ImageStore  # noqa: B018 - not a name it ever had
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new homes do not warn
        assert bundle.read_bundle and atomic.atomic_write
