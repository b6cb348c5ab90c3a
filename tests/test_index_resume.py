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

from cnnscope.index import build_index, open_index
from cnnscope.index.store import KILL_ENV
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
