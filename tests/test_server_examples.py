"""The explorer's per-example API: a unit's dataset examples one by one.

``GET /api/units/{unit}/examples`` is checked against :meth:`Index.examples`, each patch
against the example image cut by hand to the unit's receptive field (read from the
engine, not from the index), and ``POST .../open`` by running the built-in model on the
stored image: the unit at the example's position must give the activation the index
recorded, and the tree URL it answers must load.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnscope.engine import Engine
from cnnscope.images import load_gallery_image
from cnnscope.index import Source, build_index, open_index
from cnnscope.index.sources import apply_recipe
from cnnscope.server import create_app

FINE = "blocks.3.expand_act"  # receptive field 19 px: patches scaled up by whole pixels
COARSE = "blocks.8.expand_act"  # 147 px: patches scaled down


@pytest.fixture(scope="module")
def engine(model):
    return Engine.for_module(model.module)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    """An augmented index of three photos (one in a sub-folder), and its server."""
    root = tmp_path_factory.mktemp("examples")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    load_gallery_image("chelsea").resize((160, 120)).save(photos / "chelsea.png")
    load_gallery_image("coffee").resize((150, 150)).save(photos / "coffee.png")
    load_gallery_image("rocket").resize((120, 160)).save(photos / "sub" / "rocket.png")
    path = build_index(
        model, photos, [FINE, COARSE], top_k=3, out=root / "ix", workers=0, augment=True
    )
    app = create_app(model, data_dir=root / "data", index=str(path))
    with TestClient(app) as client:
        yield open_index(path), client, app


def units_of(index, layer, n=4):
    """A few channels of ``layer`` whose examples are not all saturated (ReLU6 caps at 6)."""
    channels = index.layer_entry(layer)["channels"]
    picked = [
        c
        for c in range(channels)
        if any(0 < e.activation < 5.99 for e in index.examples(f"{layer}:{c}"))
    ]
    assert len(picked) >= n
    return [f"{layer}:{c}" for c in picked[:n]]


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def field_crop(index, engine, example, size=(224, 224)) -> np.ndarray:
    """The example image as the model saw it, cut to the field (engine's Field, clipped)."""
    field = {i.name: i.field for i in engine.layers(size)}[example.layer]
    top, left, bottom, right = field.box(*example.position)
    top, left = max(math.floor(top), 0), max(math.floor(left), 0)
    bottom, right = min(math.ceil(bottom), size[0] - 1), min(math.ceil(right), size[1] - 1)
    view = np.asarray(index.preprocessing.geometry(index.load_image(example)))
    return view[top : bottom + 1, left : right + 1].astype(np.int16)


def test_the_list_is_the_index_strongest_first(built):
    index, client, _ = built
    for unit in units_of(index, FINE, 2) + units_of(index, COARSE, 2):
        r = client.get(f"/api/units/{unit}/examples")
        assert r.status_code == 200, r.text
        got = r.json()
        want = index.examples(unit)
        assert len(got) == len(want) == 3
        assert [g["activation"] for g in got] == sorted(
            (g["activation"] for g in got), reverse=True
        )
        for g, e in zip(got, want):
            assert g["rank"] == e.rank and g["id"] == e.image
            assert (g["y"], g["x"]) == e.position
            assert g["activation"] == pytest.approx(e.activation, abs=0)
            assert g["augmentation"] == e.augmentation and "|" in e.image
            base = e.image.split("|")[0]
            assert g["image"] == base.rsplit("/", 1)[-1]  # the file name, no folder
            assert g["unit"] == f"{unit}@{e.position[0]},{e.position[1]}"
            assert g["patch"] == f"/api/units/{unit}/examples/{e.rank}.png"
            assert g["open"] == f"/api/units/{unit}/examples/{e.rank}/open"
    # a position in the unit is ignored: examples are per channel
    unit = units_of(index, FINE, 1)[0]
    assert (
        client.get(f"/api/units/{unit}@3,4/examples").json()
        == client.get(f"/api/units/{unit}/examples").json()
    )


def test_patches_are_the_receptive_field_crops(built, engine):
    index, client, _ = built
    for unit in units_of(index, FINE, 2):
        for example in index.examples(unit):
            r = client.get(f"/api/units/{unit}/examples/{example.rank}.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            got, want = png_array(r.content), field_crop(index, engine, example)
            assert got.std() > 5, "blank patch"
            # small fields are scaled up by a whole factor, nearest neighbour: exact pixels
            factor = got.shape[0] // want.shape[0]
            assert factor >= 2 and got.shape[:2] == (
                want.shape[0] * factor,
                want.shape[1] * factor,
            )
            assert max(got.shape[:2]) <= 128
            assert np.array_equal(got[::factor, ::factor], want)
    for unit in units_of(index, COARSE, 2):
        examples = index.examples(unit)
        crops = [field_crop(index, engine, e) for e in examples]
        for example, want in zip(examples, crops):
            got = png_array(client.get(f"/api/units/{unit}/examples/{example.rank}.png").content)
            assert max(got.shape[:2]) == 128 and got.std() > 5
            back = Image.fromarray(got.astype(np.uint8)).resize(
                (want.shape[1], want.shape[0]), Image.Resampling.BOX
            )
            err = np.abs(np.asarray(back, np.int16) - want).mean()
            others = [
                np.abs(np.asarray(back.resize(c.shape[1::-1]), np.int16) - c).mean()
                for c in crops
                if c is not want and c.shape == want.shape and np.abs(c - want).mean() > 20
            ]
            assert err < 6, f"patch differs from its field crop by {err:.1f} levels"
            assert all(o > 3 * err for o in others)


def test_open_stores_the_image_and_the_tree_starts_at_the_example(built, model, engine):
    index, client, app = built
    store = app.state.store
    checked = []
    for unit in units_of(index, FINE, 2) + units_of(index, COARSE, 2):
        layer, channel = unit.split(":")
        for example in index.examples(unit):
            r = client.post(f"/api/units/{unit}/examples/{example.rank}/open")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["image"].startswith("u-") and body["unit"] == str(example.unit)
            # the stored image is the example image, augmentation applied, pixel for pixel
            stored = store.load(body["image"])
            base, recipe = example.image.split("|")
            source = Image.open(index.source.root / base).convert("RGB")
            assert np.array_equal(np.asarray(stored), np.asarray(apply_recipe(source, recipe)))
            assert body["name"] == store.get(body["image"]).name
            assert recipe.replace("+", " ") in body["name"]
            # the model on the stored image gives the indexed strength at (y, x), its max
            # (read below the unit's activation: cnnscope.engine.strength)
            x = model.preprocess(stored)
            fwd = engine.forward(x, cache=False, grad=False)
            act = fwd.activation(fwd.pre_activation(layer))[0, int(channel)]
            y0, x0 = example.position
            assert float(act[y0, x0]) == pytest.approx(example.activation, abs=2e-4, rel=1e-5)
            assert float(act.max()) == pytest.approx(float(act[y0, x0]), abs=2e-4)
            checked.append(example.activation)
            # the tree URL: that image, rooted at the unit at the example's position
            url = urlsplit(body["tree"])
            assert url.path == f"/images/{body['image']}/tree"
            query = parse_qs(url.query)
            assert query["path"] == [str(example.unit)]
            assert query["model"] == [model.name]
            assert client.get(body["tree"], headers={"Accept": "text/html"}).status_code == 200
        kids = client.get(
            f"/api/images/{body['image']}/children",
            params={"path": query["path"][0], "k": 3, "model": model.name},
        )
        assert kids.status_code == 200, kids.text
        assert kids.json()["path"] == str(example.unit) and len(kids.json()["children"]) == 3
    assert any(0 < a < 5.99 for a in checked)  # not only saturated ReLU6 values
    again = client.post(f"/api/units/{unit}/examples/{example.rank}/open").json()
    assert again["image"] == body["image"] and again["created"] is False


def test_an_unaugmented_gallery_photo_opens_as_itself(model, tmp_path):
    path = build_index(
        model, Source(None, augment=False), [COARSE], top_k=2, out=tmp_path / "ix", workers=0
    )
    app = create_app(model, data_dir=tmp_path / "data", index=str(path))
    gallery = {r.id for r in app.state.store.list()}
    with TestClient(app) as c:
        ex = c.get(f"/api/units/{COARSE}:11/examples").json()[0]
        assert ex["augmentation"] is None and ex["image"] == ex["id"] in gallery
        body = c.post(ex["open"]).json()
        assert body["image"] == ex["id"] and body["created"] is False
        q = parse_qs(urlsplit(body["tree"]).query)
        r = c.get(f"/api/images/{body['image']}/children", params={"path": q["path"][0], "k": 2})
        assert r.status_code == 200
    assert not (tmp_path / "data" / "uploads").exists() or not any(
        (tmp_path / "data" / "uploads").iterdir()
    )


def test_bad_requests_are_4xx_with_one_line(built):
    index, client, _ = built
    unit = units_of(index, FINE, 1)[0]
    cases = {
        f"/api/units/{unit}/examples/4.png": 404,  # top_k is 3
        f"/api/units/{unit}/examples/0.png": 422,
        f"/api/units/{unit}/examples/-1.png": 422,
        f"/api/units/{unit}/examples/one.png": 422,
        f"/api/units/{unit}/examples/99999999999.png": 422,
        f"/api/units/{FINE}:9999/examples": 404,  # no such channel
        "/api/units/blocks.4:2/examples": 404,  # a layer the index lacks
        "/api/units/nolayer:1/examples": 404,
        "/api/units/blocks.4/examples": 400,  # not a unit
        # path traversal: any 4xx, never a file
        "/api/units/..%2F..%2Fetc%2Fpasswd/examples": None,
        "/api/units/%2E%2E/examples/1.png": None,
        f"/api/units/{unit}/examples/..%2F..%2Findex.json": None,
        f"/api/units/{unit}/examples/1/..%2F..%2F..%2Findex.json": None,
        f"/api/units/{unit}/examples/%2E%2E%2Findex.json.png": None,
    }
    for url, status in cases.items():
        r = client.get(url)
        if status is None:
            assert 400 <= r.status_code < 500, (url, r.status_code)
            assert r.headers["content-type"] == "application/json"
        else:
            assert r.status_code == status, (url, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, url
    for url, status in {
        f"/api/units/{unit}/examples/4/open": 404,
        f"/api/units/{unit}/examples/0/open": 422,
        "/api/units/blocks.4:2/examples/1/open": 404,
        f"/api/units/{unit}/examples/1/open?model=resnet50": 404,
    }.items():
        r = client.post(url)
        assert r.status_code == status, (url, r.status_code, r.text)
        assert "\n" not in r.json()["detail"]
    assert client.get(f"/api/units/{unit}/examples/1/open").status_code == 405


def test_without_an_index_or_while_it_is_built_the_answer_is_404(model, tmp_path):
    with TestClient(create_app(model, data_dir=tmp_path / "none")) as c:
        for method, url in [
            ("get", f"/api/units/{FINE}:5/examples"),
            ("get", f"/api/units/{FINE}:5/examples/1.png"),
            ("post", f"/api/units/{FINE}:5/examples/1/open"),
        ]:
            r = getattr(c, method)(url)
            assert r.status_code == 404 and r.json()["detail"].startswith("no index:"), r.text
    app = create_app(model, data_dir=tmp_path / "building", default_index=True)
    svc = app.state.service
    with TestClient(app) as c:
        answers = [
            c.get(f"/api/units/{FINE}:5/examples"),
            c.get(f"/api/units/{FINE}:5/examples/2.png"),
            c.post(f"/api/units/{FINE}:5/examples/2/open"),
        ]
        building = svc.index.state()["state"] == "building"
    if building:  # answered before the build finished
        for r in answers:
            assert r.status_code == 404 and r.json()["detail"].startswith("index building")
    assert svc.index.task.finished.wait(120)  # the server's shutdown stops the build


def test_an_index_of_other_weights_is_refused(model, tmp_path):
    # built-in models are shared: change a copy of the weights, never the module itself
    other = dataclasses.replace(model, module=copy.deepcopy(model.module))
    with torch.no_grad():
        other.module.stem.weight.mul_(1.01)
    photos = tmp_path / "photos"
    photos.mkdir()
    load_gallery_image("coffee").resize((100, 100)).save(photos / "coffee.png")
    path = build_index(other, photos, [FINE], top_k=1, out=tmp_path / "ix", workers=0)
    with TestClient(create_app(model, data_dir=tmp_path / "data", index=str(path))) as c:
        for r in (
            c.get(f"/api/units/{FINE}:5/examples"),
            c.get(f"/api/units/{FINE}:5/examples/1.png"),
            c.post(f"/api/units/{FINE}:5/examples/1/open"),
        ):
            assert r.status_code == 400 and "another model" in r.json()["detail"], r.text
