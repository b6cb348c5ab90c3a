"""``torchrun --nproc_per_node 2 -m cnnscope index`` (gloo, CPU) equals the 1-process index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cnnscope.index import build_index
from cnnscope.models import load_model

from .mixed_net import INPUT_SIZE
from .test_index import MIXED, assert_same_index, write_corrupt, write_images

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "inplace", "shared#2", "conv2", "fc"]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)


def torchrun(folder: Path, out: Path, nproc: int = 2):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    # torchrun would set OMP_NUM_THREADS=1; some CPU kernels (here the depthwise conv) round
    # differently with another thread count, so give the ranks the same as this process
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), "-m", "cnnscope", "index", str(folder)]
    cmd += ["--out", str(out), "--layers", *LAYERS, "--top-k", "4", "--batch-size", "2"]
    cmd += ["--workers", "0", "--model", MIXED, "--input-size", "10x14"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_equal_one_process(tmp_path):
    mixed = load_model(MIXED, input_size=INPUT_SIZE)
    folder = tmp_path / "imgs"
    write_images(folder, range(0, 16, 2))
    write_corrupt(folder)
    # rank 0 extends an existing (1-process) index: the plan comes from rank 0 alone
    out = tmp_path / "ix"
    build_index(mixed, folder, LAYERS, top_k=4, out=out, batch_size=2, workers=0)
    write_images(folder, range(1, 16, 2))
    run = torchrun(folder, out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "indexed 8 new images (8 already indexed, 0 skipped)" in run.stdout
    meta = json.loads((out / "index.json").read_text())
    assert meta["last_run"]["world_size"] == 2
    full = build_index(mixed, folder, LAYERS, top_k=4, out=tmp_path / "one", batch_size=2)
    assert_same_index(out, full)

    # a fresh 2-rank build of the whole folder (corrupt files on some rank) is the same too
    fresh = tmp_path / "fresh"
    run = torchrun(folder, fresh)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "indexed 16 new images (0 already indexed, 3 skipped)" in run.stdout
    assert_same_index(fresh, full)
