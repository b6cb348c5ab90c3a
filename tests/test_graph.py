"""Class graphs: exact against a per-image brute force, resumable after SIGKILL, the same
on 1 and 2 processes, incremental, pruned with the thresholds shown, and the ``graph``
command's errors."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from cnnscope.atomic import KILL_ENV
from cnnscope.cli import main
from cnnscope.engine import Engine, strength_layer
from cnnscope.errors import CnnscopeError, UnknownLayerError
from cnnscope.graph import build_graph, class_graph, read_state
from cnnscope.graph.sums import ExactSums
from cnnscope.images import load_image
from cnnscope.index import IndexFormatError
from cnnscope.models import load_model

from .mixed_net import INPUT_SIZE
from .test_index import MIXED, image_files, write_corrupt, write_images

REPO = Path(__file__).resolve().parents[1]
CHAIN = ["pool", "act6", "shared#2"]  # MixedNet's default chain below the logits
TARGET = 2


@pytest.fixture(scope="module")
def mixed():
    return load_model(MIXED, input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph") / "imgs"
    write_images(root, range(11))
    return root


# -- the brute force: one image at a time, float64, plain autograd, no engine --------------


def brute_force(model, folder: Path, target: int, edge_k: int, select: str = "all") -> dict:
    """Every sum of docs/graph.md, computed image by image on a float64 copy of MixedNet."""
    net = copy.deepcopy(model.module).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    calls = {"shared": 0}
    grabbed: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(_m, _i, out):
            if name == "shared":
                calls["shared"] += 1
                if calls["shared"] != 2:
                    return
                name_ = "shared#2"
            else:
                name_ = name
            grabbed[name_] = out

        return hook

    handles = [
        getattr(net, n).register_forward_hook(grab(n))
        for n in ("pool", "act6", "shared", "depthwise")
    ]
    # strength maps: shared#2 is the ReLU of depthwise (its pre-activation); act6 reads
    # 3 * conv2's output, not a recorded layer, so it is its own; pool is no activation
    strength_of = {"pool": "pool", "act6": "act6", "shared#2": "depthwise"}
    channels = {"pool": 8, "act6": 8, "shared#2": 8}
    out = {"images": 0, "logit": 0.0}
    for i, layer in enumerate(CHAIN):
        out[f"act{i}"] = np.zeros(channels[layer])
        out[f"inf{i}"] = np.zeros(channels[layer])
        out[f"top{i}"] = np.zeros(channels[layer])
    for i in range(len(CHAIN) - 1):
        out[f"edge{i}"] = np.zeros((channels[CHAIN[i]], channels[CHAIN[i + 1]]))
        out[f"count{i}"] = np.zeros(channels[CHAIN[i]])
    per_image = {}
    try:
        for rel, path in image_files(folder):
            try:
                image = load_image(path)
            except Exception:
                continue
            x = model.preprocess(image).double().requires_grad_(True)
            calls["shared"] = 0
            logits = net(x)
            if select == "predicted" and int(logits[0].argmax()) != target:
                continue
            y = logits[0, target]
            acts = [grabbed[layer] for layer in CHAIN]
            grads = torch.autograd.grad(y, acts, retain_graph=True)
            out["images"] += 1
            out["logit"] += float(y.detach())
            infs = []
            for i, layer in enumerate(CHAIN):
                a, g = acts[i][0], grads[i][0]
                inf = (a * g).reshape(a.shape[0], -1).sum(1).detach()
                infs.append(inf)
                out[f"inf{i}"] += inf.numpy()
                out[f"act{i}"] += (
                    grabbed[strength_of[layer]][0].reshape(a.shape[0], -1).amax(1).detach().numpy()
                )
                top = np.argsort(-inf.detach().numpy(), kind="stable")[:edge_k]
                out[f"top{i}"][top] += 1
                if i + 1 < len(CHAIN):
                    for u in top:
                        seed = torch.zeros_like(grads[i])
                        seed[0, u] = grads[i][0, u]
                        (h,) = torch.autograd.grad(acts[i], acts[i + 1], seed, retain_graph=True)
                        e = (acts[i + 1][0] * h[0]).reshape(h.shape[1], -1).sum(1)
                        out[f"edge{i}"][u] += e.detach().numpy()
                        out[f"count{i}"][u] += 1
            per_image[rel] = [inf.detach().numpy() for inf in infs]
    finally:
        for h in handles:
            h.remove()
    out["per_image"] = per_image
    return out


def saved(folder: Path, name: str) -> np.ndarray:
    from cnnscope.graph.result import totals

    return totals(read_state(folder)[1], name)


def assert_same_graph(a: Path, b: Path) -> None:
    """Bitwise the same sums, examples and image table."""
    ma, xa = read_state(a)
    mb, xb = read_state(b)
    assert ma["config_key"] == mb["config_key"]
    assert ma["images"] == mb["images"]
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert np.array_equal(xa[name], xb[name]), name


# -- exactness ---------------------------------------------------------------------------


def split_model(mixed, folder: Path):
    """MixedNet with the bias of class TARGET raised so that about half the images are
    predicted as it (the plain MixedNet predicts class 0 for all of them)."""
    net = copy.deepcopy(mixed.module)
    with torch.no_grad():
        logits = torch.cat([net(mixed.preprocess(load_image(p))) for _, p in image_files(folder)])
        margin = (logits[:, 0] - logits[:, TARGET]).sort().values
        net.fc.bias[TARGET] += float(margin[4] + margin[5]) / 2
    return dataclasses.replace(mixed, module=net)


@pytest.mark.parametrize("select", ["all", "predicted"])
def test_sums_equal_the_brute_force(mixed, folder, tmp_path, one_thread, select):
    fwd = Engine(mixed.module).forward(torch.zeros(1, 3, *INPUT_SIZE), grad=False)
    assert strength_layer(fwd, "shared#2") == "depthwise"  # as the brute force reads it
    mixed = split_model(mixed, folder)
    out = tmp_path / "g"
    run = build_graph(
        mixed, folder, TARGET, out=out, select=select, edge_k=2, examples=3, batch_size=3
    )
    ref = brute_force(mixed, folder, TARGET, edge_k=2, select=select)
    assert run.processed == 11 and run.included == ref["images"] > 0
    if select == "predicted":
        assert ref["images"] == 5
    assert saved(out, "images")[0] == ref["images"]
    np.testing.assert_allclose(saved(out, "logit")[0], ref["logit"], rtol=1e-5)
    for i in range(len(CHAIN)):
        np.testing.assert_allclose(
            saved(out, f"L{i}.influence"), ref[f"inf{i}"], rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(
            saved(out, f"L{i}.activation"), ref[f"act{i}"], rtol=1e-5, atol=1e-6
        )
        assert np.array_equal(saved(out, f"L{i}.top"), ref[f"top{i}"])
    for i in range(len(CHAIN) - 1):
        np.testing.assert_allclose(
            saved(out, f"E{i}.weight"), ref[f"edge{i}"], rtol=1e-4, atol=1e-7
        )
        assert np.array_equal(saved(out, f"E{i}.count"), ref[f"count{i}"])
        assert ref[f"edge{i}"].any()
    # each unit's examples: the images of largest influence, best first
    meta, arrays = read_state(out)
    ids = meta and [e[0] for e in image_files(folder)]
    for i in range(len(CHAIN)):
        for c in range(8):
            by_image = sorted(
                ref["per_image"], key=lambda rel: (-ref["per_image"][rel][i][c], ids.index(rel))
            )
            got = [ids[j] for j in arrays[f"X{i}.image"][c] if j >= 0]
            assert got == by_image[:3]


def test_exact_sums_merge_in_any_order():
    rng = np.random.default_rng(0)
    terms = torch.from_numpy(rng.normal(0, 1e3, (200, 5)) * rng.uniform(1e-6, 1, (200, 1)))
    one = ExactSums({"x": (5,)})
    for row in terms:
        one.add("x", row[None])
    parts = [ExactSums({"x": (5,)}) for _ in range(3)]
    for j, chunk in enumerate(torch.split(terms.flip(0), 70)):
        parts[j].add("x", chunk)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    assert torch.equal(parts[2].hi["x"], one.hi["x"]) and torch.equal(parts[2].lo["x"], one.lo["x"])
    np.testing.assert_allclose(one.value("x").numpy(), terms.sum(0).numpy(), rtol=0, atol=1e-7)


# -- the pruned graph -------------------------------------------------------------------


def test_class_graph_prunes_and_reports_thresholds(mixed, folder, tmp_path, one_thread):
    out = tmp_path / "g"
    build_graph(mixed, folder, TARGET, out=out, edge_k=3, batch_size=4)
    g = class_graph(out, units=3, edges=2, min_share=0.1)
    d = json.loads(json.dumps(g.to_dict()))
    assert d["layers"] == ["logits", *CHAIN] and d["nodes"][0]["id"] == f"logits:{TARGET}"
    n = g.images
    kept: list[list[int]] = []
    for i, layer in enumerate(CHAIN):
        imp = saved(out, f"L{i}.influence") / n
        # the top layer by importance; below, by what a unit sends into the nodes kept above
        score = imp if i == 0 else np.maximum(saved(out, f"E{i - 1}.weight")[kept[-1]], 0).sum(0)
        best = [int(c) for c in np.argsort(-score, kind="stable") if score[c] > 0][:3]
        best += [int(c) for c in np.argsort(-imp, kind="stable") if imp[c] > 0 and c not in best]
        nodes = [node for node in g.nodes if node.layer == layer]
        assert [node.channel for node in nodes] == best[:3]
        kept.append(best[:3])
        assert nodes[0].importance == pytest.approx(imp[best[0]])
        assert all(
            node.examples and node.examples[0]["image"].endswith((".png", ".jpg")) for node in nodes
        )
    ids = {node.id for node in g.nodes}
    per_target: dict[str, list] = {}
    for e in g.edges:
        assert e.source in ids and e.target in ids and e.weight > 0
        per_target.setdefault(e.target, []).append(e)
    assert len(per_target.pop(f"logits:{TARGET}")) == 3  # every top-layer node feeds the class
    assert max(len(v) for v in per_target.values()) <= 2
    w = saved(out, "E1.weight") / n
    strongest = w[np.ix_(kept[1], kept[2])].max()
    drawn = {(e.target, e.source) for e in g.edges if e.target.startswith("act6:")}
    for u in kept[1]:
        best = sorted((c for c in kept[2] if w[u, c] > 0), key=lambda c: -w[u, c])[:2]
        want = {(f"act6:{u}", f"shared#2:{c}") for c in best if w[u, c] >= 0.1 * strongest}
        assert want == {p for p in drawn if p[0] == f"act6:{u}"}
    assert drawn and d["thresholds"]["smallest_edge"]["shared#2"] == pytest.approx(
        min(w[int(t.split(":")[1]), int(s.split(":")[1])] for t, s in drawn)
    )
    assert d["thresholds"]["units_per_layer"] == 3 and d["thresholds"]["min_edge_share"] == 0.1


# -- incremental, resume, distributed -----------------------------------------------------


def test_incremental_update_equals_a_full_run(mixed, tmp_path, one_thread):
    imgs = tmp_path / "imgs"
    write_images(imgs, range(0, 12, 2))
    write_corrupt(imgs)
    out = tmp_path / "g"
    build_graph(mixed, imgs, TARGET, out=out, edge_k=2, examples=4, batch_size=3)
    write_images(imgs, range(1, 12, 2))
    run = build_graph(mixed, imgs, TARGET, out=out, edge_k=2, examples=4, batch_size=3)
    assert (run.processed, run.reused, run.total) == (6, 6, 15)
    full = build_graph(
        mixed, imgs, TARGET, out=tmp_path / "full", edge_k=2, examples=4, batch_size=3
    )
    assert full.processed == 12 and len(full.skipped) == 3
    assert_same_graph(out, tmp_path / "full")
    again = build_graph(mixed, imgs, TARGET, out=out, edge_k=2, examples=4, batch_size=3)
    assert again.up_to_date and again.included == 12
    # another class or setting in the same folder starts over
    other = build_graph(mixed, imgs, 1, out=out, edge_k=2, examples=4, batch_size=3)
    assert other.processed == 12 and other.reused == 0


def _env(kill_at: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same rounding as this process
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def _args(folder: Path, out: Path) -> list[str]:
    return [
        "graph",
        str(folder),
        "--class",
        str(TARGET),
        "--out",
        str(out),
        "--edge-k",
        "2",
        "--examples",
        "4",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--model",
        MIXED,
        "--input-size",
        "10x14",
    ]


def cli(folder: Path, out: Path, kill_at: str | None = None):
    cmd = [sys.executable, "-m", "cnnscope", "-v", *_args(folder, out)]
    return subprocess.run(cmd, env=_env(kill_at), capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_equals_an_uninterrupted_run(mixed, folder, tmp_path, one_thread):
    ref = tmp_path / "ref"
    build_graph(mixed, folder, TARGET, out=ref, edge_k=2, examples=4, batch_size=2)
    out = tmp_path / "g"
    run = cli(folder, out, "checkpoint:2")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert json.loads((out / ".building" / "rank0.json").read_text())["batches_done"] == 2
    run = cli(folder, out, "commit")
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert "resuming: 2 of 6 batches already done" in run.stderr
    assert not (out / "state.json").exists()
    run = cli(folder, out)
    assert run.returncode == 0, run.stderr
    assert "resuming: 6 of 6 batches already done" in run.stderr
    assert_same_graph(out, ref)
    assert (out / "graph.png").stat().st_size > 0 and not (out / ".building").exists()
    graph = json.loads((out / "graph.json").read_text())
    assert graph["class"]["index"] == TARGET and graph["images"] == 11


def test_progress_counts_up_and_an_exception_from_it_stops_the_pass(
    mixed, folder, tmp_path, one_thread
):
    def build(out: Path, progress, **options):
        return build_graph(
            mixed, folder, TARGET, out=out, edge_k=2, batch_size=3, progress=progress, **options
        )

    seen: list[tuple[int, int]] = []
    build(tmp_path / "ref", lambda d, n: seen.append((d, n)))
    assert seen == [(3, 11), (6, 11), (9, 11), (11, 11)]  # 11 images, batches of 3

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done >= 6:
            raise Stop

    out = tmp_path / "g"
    with pytest.raises(Stop):
        build(out, stop_after_two, checkpoint_every=1)
    assert not (out / "state.json").exists() and not (out / ".lock").exists()
    seen.clear()
    build(out, lambda d, n: seen.append((d, n)))
    assert seen == [(3, 5), (5, 5)]  # resumed after the two checkpointed batches
    assert_same_graph(out, tmp_path / "ref")


def test_cli_writes_the_page_with_every_node(folder, tmp_path, capsys, one_thread):
    out = tmp_path / "g"
    assert main([*_args(folder, out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    page = out / "graph.html"
    assert summary["page"] == str(page) and summary["graph"] == str(out / "graph.json")
    graph = json.loads((out / "graph.json").read_text())
    text = page.read_text(encoding="utf-8")
    ids = [n["id"] for n in graph["nodes"]]
    assert len(ids) > len(CHAIN) and all(f'"{i}"' in text for i in ids)
    m = re.search(r'<script type="application/json" id="cg-data">(.*?)</script>', text, re.S)
    assert m and [n["id"] for n in json.loads(m.group(1))["nodes"]] == ids
    # --no-html: no page, and none left over from before
    assert main([*_args(folder, out), "--json", "--no-html"]) == 0
    assert json.loads(capsys.readouterr().out)["page"] is None and not page.exists()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_processes_equal_one(mixed, folder, tmp_path, one_thread):
    one = tmp_path / "one"
    build_graph(mixed, folder, TARGET, out=one, edge_k=2, examples=4, batch_size=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "cnnscope", *_args(folder, tmp_path / "two")]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert read_state(tmp_path / "two")[0]["last_run"]["world_size"] == 2
    assert_same_graph(tmp_path / "two", one)
    two = json.loads((tmp_path / "two" / "graph.json").read_text())
    assert two == json.loads(json.dumps(class_graph(one).to_dict()))


# -- bad input ---------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(folder, tmp_path, capsys):
    base = ["--model", MIXED, "--input-size", "10x14"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (["graph", str(folder), "--class", "zebra", "--out", str(tmp_path / "a")], "zebra"),
        (["graph", str(folder), "--class", "9", "--out", str(tmp_path / "a")], "9"),
        (
            ["graph", str(tmp_path / "nope"), "--class", "1", "--out", str(tmp_path / "a")],
            "not found",
        ),
        (["graph", str(folder), "--class", "1", "--out", str(tmp_path / "file")], "is a file"),
        (
            ["graph", str(folder), "--class", "1", "--out", str(tmp_path / "other")],
            "not a cnnscope class graph",
        ),
        (
            ["graph", str(folder), "--class", "1", "--out", str(tmp_path / "a"), "--edge-k", "0"],
            "--edge-k",
        ),
        (
            [
                "graph",
                str(folder),
                "--class",
                "1",
                "--out",
                str(tmp_path / "a"),
                "--layers",
                "nope",
            ],
            "nope",
        ),
        (
            ["graph", str(folder), "--class", "1", "--out", str(tmp_path / "a"), "--select", "x"],
            "--select",
        ),
        (["graph", str(folder), "--out", str(tmp_path / "a")], "--class"),
        (
            ["graph", str(folder), "--class", "1", "--out", str(tmp_path / "a"), "--units", "0"],
            "--units",
        ),
        (
            [
                "graph",
                str(folder),
                "--class",
                "1",
                "--out",
                str(tmp_path / "a"),
                "--min-share",
                "1",
            ],
            "--min-share",
        ),
    ]
    for argv, words in cases:
        with (
            pytest.raises(SystemExit)
            if "--select" in argv or "--class" not in argv
            else contextlib.nullcontext()
        ):
            assert main([*argv, *base]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, (argv, err)
    assert not (tmp_path / "a").exists()


def test_a_held_lock_names_the_class_graph(mixed, folder, tmp_path, capsys):
    import fcntl

    out = tmp_path / "g"
    out.mkdir()
    with open(out / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(CnnscopeError) as info:
            build_graph(mixed, folder, TARGET, out=out, edge_k=1, examples=2)
        assert str(info.value) == f"another process is building the class graph {out.resolve()}"
        assert main([*_args(folder, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "building the class graph" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else made


def test_bad_api_input(mixed, folder, tmp_path):
    with pytest.raises(UnknownLayerError):
        build_graph(mixed, folder, 1, out=tmp_path / "g", layers=["nope"])
    with pytest.raises(CnnscopeError, match="select"):
        build_graph(mixed, folder, 1, out=tmp_path / "g", select="some")
    with pytest.raises(CnnscopeError, match="rule"):
        build_graph(mixed, folder, 1, out=tmp_path / "g", rule="magic")
    with pytest.raises(CnnscopeError, match="not found"):
        class_graph(tmp_path / "missing")
    # a manifest that lies about its arrays is refused before they are read
    out = tmp_path / "small"
    build_graph(mixed, folder, 1, out=out, edge_k=1, examples=2, batch_size=4)
    meta = json.loads((out / "state.json").read_text())
    meta["layers"][0]["channels"] = 9
    (out / "state.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="expected int64"):
        class_graph(out)
