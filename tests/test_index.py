"""Dataset index: exact top-k against brute force, incremental updates, corrupt files,
patches and grids, the on-disk format, and the ``index`` / ``examples`` commands."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnscope.cli import main
from cnnscope.engine import Engine
from cnnscope.errors import CnnscopeError, ImageError, UnitSpecError, UnknownLayerError
from cnnscope.images import load_gallery_image, load_image
from cnnscope.index import (
    AUGMENTATIONS,
    IndexFormatError,
    build_index,
    default_index_path,
    default_layers,
    ensure_default_index,
    open_index,
    run_build,
)
from cnnscope.index.merge import RunningTopK, decode, encode
from cnnscope.index.patches import crop, field_box, render_grid, support_box
from cnnscope.models import load_model

from .mixed_net import INPUT_SIZE

MIXED = "tests.mixed_net:MixedNet"
LAYERS = ["conv1", "inplace", "shared#2", "conv2", "fc"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "china")


# -- helpers (also used by the resume and distributed tests) ----------------------------------


def write_images(folder: Path, numbers, seed: int = 0) -> list[Path]:
    """Small crops of gallery photos, PNG and JPEG, some in a subfolder, named by number."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [load_gallery_image(n) for n in PHOTOS]
    paths = []
    for n in numbers:
        rng = np.random.default_rng(seed * 1000 + n)
        photo = photos[n % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.2, 0.9)), int(h * rng.uniform(0.2, 0.9))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = photo.crop((left, top, left + cw, top + ch)).resize((36, 26))
        sub = folder / "sub" if n % 3 == 0 else folder
        sub.mkdir(exist_ok=True)
        path = sub / f"img_{n:02d}.{'png' if n % 2 else 'jpg'}"
        img.save(path)
        paths.append(path)
    return paths


def write_corrupt(folder: Path) -> list[str]:
    """Three files that look like images but are not: junk, truncated, empty."""
    (folder / "junk.jpg").write_bytes(b"this is not a jpeg" * 10)
    good = folder / "trunc_src.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "empty.webp").write_bytes(b"")
    return ["junk.jpg", "sub/empty.webp", "trunc.png"]


def image_files(folder: Path) -> list[tuple[str, Path]]:
    exts = {".png", ".jpg", ".jpeg", ".webp"}
    files = [p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file()]
    return sorted((p.relative_to(folder).as_posix(), p) for p in files)


#: The input of each activation layer indexed here: a unit's strength is read there.
PRE_ACTIVATION = {"inplace": "branch_b", "shared#2": "depthwise", "head_act": "head_bn"}


def brute_force(model, folder: Path, layers, k: int, batch_size: int) -> dict:
    """Every image's every strength, then a plain sort per unit (value desc, file order).

    The strength of an activation layer's unit is its pre-activation (ReLU6 units do
    not all tie at 6). The batches are the documented ones: the sorted files in groups of
    ``batch_size``, unreadable files dropped, padded with zero images to ``batch_size``.
    """
    engine = Engine.for_module(model.module)
    files = image_files(folder)
    names = [engine.resolve(n, model.preprocess_config.input_size) for n in layers]
    maps = {n: [] for n in names}
    order = []
    for start in range(0, len(files), batch_size):
        xs, rels = [], []
        for rel, path in files[start : start + batch_size]:
            try:
                xs.append(model.preprocess(load_image(path)))
                rels.append(rel)
            except ImageError:
                continue
        if not xs:
            continue
        x = torch.cat(xs + [torch.zeros_like(xs[0])] * (batch_size - len(xs)))
        fwd = engine.forward(x, cache=False)  # every layer, with a graph: another code path
        for n in names:
            maps[n].append(fwd.activation(PRE_ACTIVATION.get(n, n))[: len(xs)].detach().numpy())
        order += rels
    out = {}
    for n in names:
        a = np.concatenate(maps[n])  # images x C x ...
        width = a.shape[3] if a.ndim == 4 else 1
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        pos = flat.argmax(axis=2)  # first maximum
        val = flat.max(axis=2)
        units = []
        for c in range(a.shape[1]):
            ranked = sorted(range(len(order)), key=lambda i: (-float(val[i, c]), order[i]))[:k]
            units.append(
                [
                    (order[i], float(val[i, c]), int(pos[i, c] // width), int(pos[i, c] % width))
                    for i in ranked
                ]
            )
        out[n] = units
    return out


def index_as_lists(ix) -> dict:
    out = {}
    for layer in ix.layers:
        channels = ix.layer_entry(layer)["channels"]
        out[layer] = [
            [(e.image, e.activation, *e.position) for e in ix.examples(f"{layer}:{c}")]
            for c in range(channels)
        ]
    return out


def arrays_of(path) -> dict:
    with np.load(
        Path(path) / json.loads((Path(path) / "index.json").read_text())["arrays"]["file"]
    ) as z:
        return {k: z[k] for k in z.files}


def assert_same_index(a, b) -> None:
    """Bitwise equal arrays (top-k and image table)."""
    xa, xb = arrays_of(a), arrays_of(b)
    assert sorted(xa) == sorted(xb)
    for key in xa:
        assert xa[key].dtype == xb[key].dtype and np.array_equal(xa[key], xb[key]), key
    ma = json.loads((Path(a) / "index.json").read_text())
    mb = json.loads((Path(b) / "index.json").read_text())
    assert ma["arrays"]["sha256"] == mb["arrays"]["sha256"]
    assert ma["skipped"] == mb["skipped"]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed():
    return load_model(MIXED, input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_images(root, range(12))
    return root


@pytest.fixture(scope="module")
def built(mixed, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ix") / "index"
    build_index(mixed, folder, LAYERS, top_k=5, out=out, batch_size=4, workers=0)
    return out


# -- the top k is exact -------------------------------------------------------------------------


def test_top_k_equals_brute_force(mixed, folder, built):
    ix = open_index(built)
    assert ix.layers == LAYERS and ix.top_k == 5
    assert index_as_lists(ix) == brute_force(mixed, folder, LAYERS, 5, 4)
    # and the values agree with one-image-at-a-time forwards up to float rounding
    engine = Engine.for_module(mixed.module)
    ex = ix.examples("conv2:3")[0]
    x = mixed.preprocess(load_image(ex.path))
    a = engine.forward(x, cache=False).activation("conv2")[0, 3]
    assert abs(float(a.max()) - ex.activation) < 1e-5
    assert float(a[ex.position]) == pytest.approx(ex.activation, abs=1e-5)


def test_more_slots_than_images_and_workers(mixed, folder, tmp_path):
    out = build_index(
        mixed, folder, ["conv2"], top_k=20, out=tmp_path / "ix", batch_size=5, workers=2
    )
    ix = open_index(out)
    ex = ix.examples("conv2:0")
    assert len(ex) == 12  # only 12 images
    assert [e.rank for e in ex] == list(range(1, 13))
    acts = [e.activation for e in ex]
    assert acts == sorted(acts, reverse=True)
    assert index_as_lists(ix)["conv2"] == brute_force(mixed, folder, ["conv2"], 20, 5)["conv2"]


def test_builtin_model_top_k_equals_brute_force(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS[:4]:
        load_gallery_image(name).resize((256, 200)).save(folder / f"{name}.jpg")
    layers = ["blocks.4", "head_act", "classifier"]
    out = build_index(model, folder, layers, top_k=2, out=tmp_path / "ix", batch_size=4, workers=0)
    ix = open_index(out)
    assert index_as_lists(ix) == brute_force(model, folder, layers, 2, 4)
    assert ix.examples("classifier:285")[0].position == (0, 0)
    # the patches of a conv unit: field crop, support inside the field, activation recomputed
    patches = ix.patches("blocks.4:7", model)
    for p, e in zip(patches, ix.examples("blocks.4:7")):
        assert p.activation == pytest.approx(e.activation, rel=1e-4, abs=1e-4)
        t, left, b, r = p.field_box
        assert (b - t + 1, r - left + 1) == (67, 67)  # blocks.4's receptive field
        st, sl, sb, sr = p.support_box
        assert max(t, 0) <= st <= sb <= min(b, 223) and max(left, 0) <= sl <= sr <= min(r, 223)
    grid = render_grid(patches, 2, tile=32)
    assert grid.shape == (2 * 34 + 2 - 34, 2 * (2 * 34 + 2) + 5, 3)
    assert grid[:, :70].std() > 10 and grid[:, 75:].std() > 10  # neither half is blank


# -- merging is order-independent -------------------------------------------------------------


def test_merge_of_random_partitions_is_exact():
    rng = np.random.default_rng(0)
    n, c, k = 200, 7, 6
    values = torch.from_numpy(rng.integers(-4, 5, size=(n, c)).astype(np.float32) / 2)  # many ties
    values[rng.random((n, c)) < 0.05] = float("nan")
    pos = torch.from_numpy(rng.integers(0, 50, size=(n, c)).astype(np.int32))
    ref = RunningTopK({"l": c}, k)
    ref.update("l", values, pos, torch.arange(n))
    for trial in range(5):
        perm = rng.permutation(n)
        cuts = np.sort(rng.choice(np.arange(1, n), size=4, replace=False))
        parts = []
        for chunk in np.split(perm, cuts):
            part = RunningTopK({"l": c}, k)
            for sub in np.array_split(chunk, 3):
                if len(sub):
                    idx = torch.from_numpy(sub)
                    part.update("l", values[idx], pos[idx], idx)
            parts.append(part)
        merged = RunningTopK({"l": c}, k)
        for part in reversed(parts) if trial % 2 else parts:
            merged.merge(part)
        assert torch.equal(merged.keys["l"], ref.keys["l"]) and torch.equal(
            merged.pos["l"], ref.pos["l"]
        )
    # against a plain sort: value descending (NaN last), then image ascending
    got = ref.arrays("l", width=10)
    v = values.numpy().copy()
    v[np.isnan(v)] = -np.inf
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-v[i, ch], i))[:k]
        assert got["image"][ch].tolist() == order
        assert got["y"][ch].tolist() == [int(pos[i, ch]) // 10 for i in order]


def test_keys_round_trip_special_values():
    v = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, float("inf"), float("-inf")])
    i = torch.arange(8)
    got_v, got_i = decode(encode(v, i))
    assert torch.equal(got_v, v) and torch.equal(got_i, i)
    assert encode(v, i).argsort(descending=True).tolist() == [6, 4, 2, 0, 1, 3, 5, 7]


# -- incremental, corrupt files, config changes ------------------------------------------------


def test_incremental_update_equals_full_rebuild(mixed, tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, range(0, 14, 2))  # even numbers first
    out = tmp_path / "inc"
    first = run_build(mixed, folder, LAYERS, top_k=4, out=out, batch_size=3, workers=0)
    assert first.processed == 7
    write_images(folder, [1, 5, 9, 15])  # new files sort between the old ones
    second = run_build(mixed, folder, LAYERS, top_k=4, out=out, batch_size=3, workers=0)
    assert (second.processed, second.reused, second.total) == (4, 7, 11)
    full = run_build(mixed, folder, LAYERS, top_k=4, out=tmp_path / "full", batch_size=3, workers=0)
    assert full.processed == 11
    assert_same_index(out, tmp_path / "full")
    # nothing new: nothing is done and the index is untouched
    before = (out / "index.json").read_bytes()
    again = run_build(mixed, folder, LAYERS, top_k=4, out=out, batch_size=3, workers=0)
    assert again.up_to_date and again.processed == 0
    assert (out / "index.json").read_bytes() == before
    # a changed file cannot be taken out of a top-k list: everything is redone
    path = next(folder.rglob("img_05.png"))
    Image.new("RGB", (36, 26), (250, 0, 0)).save(path)
    os.utime(path, ns=(1, 1))
    redo = run_build(mixed, folder, LAYERS, top_k=4, out=out, batch_size=3, workers=0)
    assert redo.processed == 11 and redo.reused == 0
    # other settings (layers) also rebuild
    other = run_build(mixed, folder, ["conv1"], top_k=4, out=out, batch_size=3, workers=0)
    assert other.processed == 11 and open_index(out).layers == ["conv1"]


def test_corrupt_files_are_skipped_and_reported(mixed, folder, tmp_path, capsys):
    dirty = tmp_path / "dirty"
    shutil.copytree(folder, dirty)
    bad = write_corrupt(dirty)
    out = tmp_path / "ix"
    code = main(
        ["index", str(dirty), "--layers", "conv1,conv2", "fc", "--top-k", "5", "--out", str(out)]
        + ["--batch-size", "4", "--workers", "1", "--model", MIXED, "--input-size", "10x14"]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "indexed 12 new images (0 already indexed, 3 skipped)" in text
    for name in bad:
        assert f"  {name}: " in text
    ix = open_index(out)
    assert [s["image"] for s in ix.skipped] == bad
    assert all(s["reason"] for s in ix.skipped)
    # the corrupt files change nothing else: same examples as the clean folder
    assert index_as_lists(ix) == brute_force(mixed, dirty, ["conv1", "conv2", "fc"], 5, 4)
    clean = build_index(
        mixed, folder, ["conv1", "conv2", "fc"], top_k=5, out=tmp_path / "c", batch_size=4
    )
    assert index_as_lists(open_index(clean)) == index_as_lists(ix)
    # a rerun does not retry them, and --json reports the run
    assert (
        main(
            ["index", str(dirty), "--layers", "conv1,conv2,fc", "--top-k", "5", "--out", str(out)]
            + ["--model", MIXED, "--input-size", "10x14", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["up_to_date"] is True


# -- the examples command ---------------------------------------------------------------------


def test_examples_command_text_and_json(built, capsys):
    ix = open_index(built)
    assert main(["examples", str(built), "conv2:3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit"] == "conv2:3" and data["top_k"] == 5
    got = [(e["image"], e["activation"], e["y"], e["x"]) for e in data["examples"]]
    assert got == [(e.image, e.activation, *e.position) for e in ix.examples("conv2:3")]
    acts = [e["activation"] for e in data["examples"]]
    assert acts == sorted(acts, reverse=True) and len(acts) == 5
    assert [e["rank"] for e in data["examples"]] == [1, 2, 3, 4, 5]
    assert data["examples"][0]["path"] == str(ix.source.root / data["examples"][0]["image"])

    assert main(["examples", str(built), "shared#2:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shared#2:1: top 5 of 12 images")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r[3] for r in rows] == [e.image for e in ix.examples("shared#2:1")]


def test_examples_grid_png(built, mixed, tmp_path, capsys):
    png = tmp_path / "g.png"
    # a model that is not built in is never loaded from the manifest: the user names it
    argv = ["examples", str(built), "conv2:3", "--grid", str(png), "--tile", "16"]
    assert main(argv) == 2
    assert f"pass --model {MIXED}" in capsys.readouterr().err
    assert main([*argv, "--model", MIXED]) == 0
    assert "grid written to" in capsys.readouterr().out
    image = np.asarray(Image.open(png))
    assert image.shape == (2 * 18 + 2, 2 * (3 * 18 + 2) + 5, 3)  # k = 5: 3 columns, 2 rows
    ix = open_index(built)
    assert np.array_equal(ix.grid("conv2:3", mixed, tile=16), image)
    cached = list((built / "grids").rglob("*.png"))
    assert len(cached) == 1 and re.fullmatch(r"L\d+-conv2", cached[0].parent.name)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "/no/such/folder", "--out", "{tmp}/x"], "image folder not found"),
        (["index", "{folder}"], "give --out"),
        (["index", "{folder}", "--layers", "conv9", "--out", "{tmp}/x"], "unknown layer 'conv9'"),
        (["index", "{folder}", "--layers", "input", "--out", "{tmp}/x"], "needs layers with"),
        (["index", "{folder}", "--top-k", "0", "--out", "{tmp}/x"], "--top-k"),
        (["index", "{folder}", "--out", "{folder}"], "not a cnnscope index"),
        (["index", "{empty}", "--out", "{tmp}/x"], "no images found"),
        (["index", "--layers", "conv1", "{folder}", "--out", "{tmp}/x"], "write DIR before"),
        (["examples", "{index}", "conv2:99"], "out of range 0-7"),
        (["examples", "{index}", "conv2"], "bad unit"),
        (["examples", "{index}", "conv3:0"], "not in the index; did you mean conv2"),
        (["examples", "{folder}", "conv2:0"], "is not a cnnscope index"),
        (["examples", "{tmp}/nothing", "conv2:0"], "index not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, built, folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    subs = {
        "tmp": str(tmp_path),
        "folder": str(folder),
        "index": str(built),
        "empty": str(tmp_path / "empty"),
    }
    argv = [a.format(**subs) for a in argv]
    if argv[0] == "index":
        argv += ["--model", MIXED, "--input-size", "10x14", "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_api_errors(built, mixed, model):
    ix = open_index(built)
    with pytest.raises(UnknownLayerError):
        ix.examples("conv2#2:0")
    with pytest.raises(UnitSpecError):
        ix.examples("fc:5")
    with pytest.raises(CnnscopeError, match="another model"):
        ix.grid("conv2:0", model)
    assert ix.examples("conv2:1@3,4") == ix.examples("conv2:1")  # examples are per channel


def test_concurrent_build_is_refused_and_moved_folder_is_found(mixed, built, folder, tmp_path):
    import fcntl

    with open(built / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(CnnscopeError, match="another process is building the index "):
            build_index(mixed, folder, LAYERS, top_k=5, out=built, batch_size=4, workers=0)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    ix = open_index(built, root=moved)
    ex = ix.examples("conv1:0")[0]
    assert ex.path == moved / ex.image and ix.load_image(ex).size == (36, 26)


# -- format and atomicity ---------------------------------------------------------------------


def test_damaged_or_newer_index_is_refused(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    meta = json.loads((copy / "index.json").read_text())
    npz = copy / meta["arrays"]["file"]
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError):
        open_index(copy)
    shutil.copy(Path(built) / meta["arrays"]["file"], npz)
    assert open_index(copy).fingerprint == meta["arrays"]["sha256"]
    meta["version"] = 99
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="upgrade"):
        open_index(copy)


def test_manifest_documents_layers_and_images(built, folder):
    meta = json.loads((built / "index.json").read_text())
    assert meta["format"] == "cnnscope-index" and meta["version"] == 2
    assert [e["name"] for e in meta["layers"]] == LAYERS
    conv2 = meta["layers"][3]
    assert conv2["shape"] == [8, 5, 7] and conv2["field"] == {
        "size": [9, 9],
        "stride": [2, 2],
        "offset": [0.0, 0.0],
    }
    assert meta["layers"][4]["field"] is None
    assert meta["images"] == {"total": 12, "indexed": 12, "skipped": 0}
    assert open_index(built).images == [rel for rel, _ in image_files(folder)]
    assert meta["model"]["spec"] == {"model": MIXED, "weights": None}  # how to reload it
    a = arrays_of(built)
    assert a["L3_activation"].shape == (8, 5) and a["L3_activation"].dtype == np.float32
    assert a["L4_y"].max() == 0  # a vector layer has no position


# -- patches and the default index -------------------------------------------------------------


def test_patch_boxes():
    # support: rows from axis 0, columns from axis 1 (the seed mixed them up)
    r = np.zeros((3, 10, 14))
    r[2, 1, 12] = 1e-9
    r[0, 6, 3] = -2
    assert support_box(r, (0, 0, 0, 0)) == (1, 3, 6, 12)
    from cnnscope.engine import Field

    assert field_box(Field((9, 9), (2, 2), (0.0, 0.0)), 0, 6, (10, 14)) == (-4, 8, 4, 16)
    img = np.arange(10 * 14 * 3, dtype=np.uint8).reshape(10, 14, 3)
    c = crop(img, (-4, 8, 4, 16), fill=7)
    assert c.shape == (9, 9, 3)
    assert (c[:4] == 7).all() and (c[:, 6:] == 7).all() and np.array_equal(c[4:, :6], img[:5, 8:])


def test_patches_of_mixed_net(built, mixed):
    ix = open_index(built)
    for unit in ("conv2:5", "fc:2", "inplace:1"):
        examples = ix.examples(unit)
        patches = ix.patches(unit, mixed)
        assert len(patches) == len(examples) == 5
        for p, e in zip(patches, examples):
            assert p.activation == pytest.approx(e.activation, abs=1e-5)
            assert p.reconstruction.shape == (3, 10, 14) and np.abs(p.reconstruction).max() > 0
            t, left, b, r = p.field_box
            st, sl, sb, sr = p.support_box
            assert max(t, 0) <= st <= sb <= min(b, 9) and max(left, 0) <= sl <= sr <= min(r, 13)
            m = np.abs(p.reconstruction).max(axis=0)
            assert m[st, :].any() and m[sb, :].any() and m[:, sl].any() and m[:, sr].any()
            outside = m.copy()
            outside[st : sb + 1, sl : sr + 1] = 0
            assert not outside.any()
            assert p.field_box == ix.field_box(e)
            if unit.startswith("conv2"):
                assert p.field_crop().shape == (9, 9, 3)


def test_default_gallery_index(mixed, tmp_path):
    calls = []
    path = ensure_default_index(
        mixed, tmp_path, progress=lambda d, n: calls.append((d, n)), workers=0
    )
    assert path == default_index_path(mixed, tmp_path) and path.parent == tmp_path / "indexes"
    n = 8 * len(AUGMENTATIONS)
    assert calls[-1] == (n, n) and len(calls) == n // 32 + 1
    ix = open_index(path)
    assert ix.manifest["images"]["indexed"] == n and ix.source.kind == "gallery"
    engine = Engine.for_module(mixed.module)
    assert ix.layers == [engine.resolve(n, INPUT_SIZE) for n in default_layers(mixed)]
    # the structural chain (engine.structure): the last module output at each resolution
    assert ix.layers == ["shared#2", "act6", "pool"] and "fc" not in ix.layers
    ex = ix.examples(f"{ix.layers[0]}:0")
    assert len(ex) == 16 and ex[0].path is None and ex[0].augmentation in AUGMENTATIONS
    assert ix.load_image(ex[0]).size[0] > 0
    before = (path / "index.json").stat().st_mtime_ns
    calls.clear()
    assert ensure_default_index(mixed, tmp_path, progress=lambda d, n: calls.append((d, n))) == path
    assert calls == [] and (path / "index.json").stat().st_mtime_ns == before
