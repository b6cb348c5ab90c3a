"""The explorer's layer views API (mosaics, orderings, volumes) against the real model.

Answers are checked against computations made here without the server: the library's
``mosaic()`` and ``order_channels()`` called directly (pixel for pixel, permutation for
permutation), and the layer's activations recomputed by calling the model's own
submodules in order (no engine), for the per-channel max and mean.
"""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from cnnscope.images import load_gallery_image
from cnnscope.models import load_model
from cnnscope.server import create_app
from cnnscope.tree import Explorer
from cnnscope.views import mosaic, order_channels, plotly_js

from .mixed_net import INPUT_SIZE

MIXED = "tests.mixed_net:MixedNet"


@pytest.fixture(scope="module")
def client(model, tmp_path_factory):
    app = create_app(model, data_dir=tmp_path_factory.mktemp("layers-data"))
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


@pytest.fixture(scope="module")
def stem_act(model, x) -> torch.Tensor:
    """``stem_act`` for chelsea, from the model's own submodules (no engine, no hooks)."""
    net = model.module
    with torch.no_grad():
        return net.stem_act(net.stem_bn(net.stem(x)))[0].double()


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def box(tile) -> tuple[int, int, int, int]:
    return (tile["x"], tile["y"], tile["w"], tile["h"]) if isinstance(tile, dict) else tile[1:]


# ---------------------------------------------------------------------------- the layer list


def test_layer_list_has_the_chain_first_and_flags_maps(client, model):
    body = client.get("/api/images/chelsea/layers").json()
    chain = Explorer(model).chain
    names = [layer["name"] for layer in body["layers"]]
    assert names[: len(chain)] == chain  # the tree's layers first, top first
    assert all(layer["in_chain"] for layer in body["layers"][: len(chain)])
    assert not any(layer["in_chain"] for layer in body["layers"][len(chain) :])
    by_name = {layer["name"]: layer for layer in body["layers"]}
    assert by_name["stem_act"]["shape"] == [32, 112, 112] and by_name["stem_act"]["maps"]
    assert by_name["stem_act"]["kind"] == "ReLU6"
    assert not by_name["logits"]["maps"] and not by_name["flatten"]["maps"]
    assert by_name["blocks.4"]["maps"] and not by_name["blocks.4"]["in_chain"]
    assert not by_name["input"]["tree"] and by_name["blocks.4"]["tree"]
    assert by_name[body["default"]]["maps"]
    assert body["orders"] == ["none", "kmeans", "pca-slice", "pca"]
    assert body["plotly_js"].startswith("/vendor/plotly.min.js?v=")


# ---------------------------------------------------------------------------- mosaics


@pytest.mark.parametrize(
    "layer, order, normalize",
    [
        ("stem_act", "kmeans", "joint"),
        ("blocks.4", "pca", "channel"),
        ("blocks.4", "none", "joint"),
    ],
)
def test_mosaic_equals_the_library_tile_for_tile_and_pixel_for_pixel(
    client, model, x, layer, order, normalize
):
    r = client.get(f"/api/images/chelsea/layers/{layer}/mosaic?order={order}&normalize={normalize}")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = mosaic(model, x, layer, None if order == "none" else order, normalize)
    channels = body["shape"][0]
    assert len(body["tiles"]) == channels == len(expected.tiles)
    assert body["permutation"] == expected.permutation.tolist()
    assert sorted(body["permutation"]) == list(range(channels))
    for position, (tile, lib) in enumerate(zip(body["tiles"], expected.tiles)):
        assert tile["position"] == position
        assert tile["channel"] == lib.channel == body["permutation"][position]
        assert box(tile) == (lib.x, lib.y, lib.w, lib.h)
        # the box's centre and corners map back to this channel through Mosaic.channel_at
        cx, cy = tile["x"] + tile["w"] / 2, tile["y"] + tile["h"] / 2
        assert expected.channel_at(cx, cy) == tile["channel"]
        assert expected.channel_at(tile["x"], tile["y"]) == tile["channel"]
        assert (
            expected.channel_at(tile["x"] + tile["w"] - 0.5, tile["y"] + tile["h"] - 0.5)
            == (tile["channel"])
        )
        # just outside the box (the label strip above, or the padding) is not this tile
        assert expected.channel_at(cx, tile["y"] - 1) != tile["channel"]
    png = png_array(client.get(body["png"]).content)
    assert png.shape == (body["height"], body["width"], 3)
    assert np.array_equal(png, expected.image)  # the PNG is the library's picture
    assert png.std() > 10, "the mosaic looks blank"
    # inside one tile the pixels vary (a map, not a flat patch) for a live channel
    live = max(body["tiles"], key=lambda t: t["max"] - t["mean"])
    patch = png[live["y"] : live["y"] + live["h"], live["x"] : live["x"] + live["w"]]
    assert patch.reshape(-1, 3).std(axis=0).max() > 5


def test_mosaic_stats_match_the_model_own_submodules(client, stem_act):
    body = client.get("/api/images/chelsea/layers/stem_act/mosaic?normalize=channel").json()
    flat = stem_act.reshape(32, -1)
    for tile in body["tiles"]:
        c = tile["channel"]
        assert tile["max"] == pytest.approx(float(flat[c].max()), rel=1e-5, abs=1e-6)
        assert tile["mean"] == pytest.approx(float(flat[c].mean()), rel=1e-4, abs=1e-6)
        assert tile["vmin"] == pytest.approx(float(flat[c].min()), abs=1e-6)  # per channel
        assert tile["vmax"] == pytest.approx(float(flat[c].max()), rel=1e-5, abs=1e-6)
    joint = client.get("/api/images/chelsea/layers/stem_act/mosaic").json()
    assert {t["vmax"] for t in joint["tiles"]} == {joint["tiles"][0]["vmax"]}  # one scale
    assert joint["tiles"][0]["vmax"] == pytest.approx(float(flat.max()), rel=1e-5)
    assert joint["tiles"][0]["vmin"] == pytest.approx(float(flat.min()), abs=1e-6)
    # the channels that are zero everywhere on this image (docs/views.md: 11, 16, 28, 29, 31)
    dead = sorted(t["channel"] for t in body["tiles"] if t["max"] == 0)
    assert dead == sorted(c for c in range(32) if float(flat[c].abs().max()) == 0)


@pytest.mark.parametrize("order", ["kmeans", "pca-slice", "pca"])
def test_orderings_are_permutations_equal_to_order_channels(client, stem_act, order):
    body = client.get(f"/api/images/chelsea/layers/stem_act/mosaic?order={order}").json()
    expected = order_channels(stem_act.float(), order)
    assert body["order"] == order
    assert sorted(body["permutation"]) == list(range(32))
    assert body["permutation"] == expected.permutation.tolist()
    assert body["separators"] == expected.separators
    assert body["ordering"]["method"] == order
    if order == "kmeans":
        assert body["ordering"]["row"] == 56 and body["ordering"]["k"] == expected.info["k"]
        sizes = body["ordering"]["sizes"]
        assert sum(sizes) == 32 and np.cumsum(sizes)[:-1].tolist() == body["separators"]
        # each tile knows its cluster, in display order
        clusters = [t["cluster"] for t in body["tiles"]]
        assert clusters == sorted(clusters) and clusters[-1] == len(sizes) - 1
    else:
        assert body["separators"] == [] and 0 < body["ordering"]["explained_variance"] <= 1


def test_kmeans_options_change_the_ordering(client, stem_act):
    body = client.get("/api/images/chelsea/layers/stem_act/mosaic?order=kmeans&k=3&row=20").json()
    expected = order_channels(stem_act.float(), "kmeans", k=3, row=20)
    assert body["permutation"] == expected.permutation.tolist()
    assert body["ordering"]["k"] == 3 and body["ordering"]["row"] == 20
    assert len(body["separators"]) == 2
    assert "k=3" in body["png"] and "row=20" in body["png"] and "k=3" in body["volume"]
    none = client.get("/api/images/chelsea/layers/stem_act/mosaic").json()
    assert none["permutation"] == list(range(32)) and none["ordering"] is None


# ---------------------------------------------------------------------------- volumes


def test_volume_is_a_plotly_figure_in_the_mosaic_order(client):
    mosaic_body = client.get("/api/images/chelsea/layers/blocks.4/mosaic?order=pca").json()
    r = client.get(mosaic_body["volume"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    fig = r.json()
    kinds = [trace["type"] for trace in fig["data"]]
    assert kinds == ["volume", "surface", "heatmap"]
    assert len(fig["frames"]) == 40  # one per slice
    steps = fig["layout"]["sliders"][0]["steps"]
    assert [int(s["label"]) for s in steps] == mosaic_body["permutation"]
    assert "pca" in fig["layout"]["title"]["text"]
    # compressed for clients that accept it, plain JSON for the others
    packed = client.get(mosaic_body["volume"], headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    raw = client.get(mosaic_body["volume"], headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and raw.json() == fig
    stream = client.stream("GET", mosaic_body["volume"], headers={"Accept-Encoding": "gzip"})
    with stream as s:
        assert gzip.decompress(b"".join(s.iter_raw())) == raw.content


def test_plotly_js_is_served_from_the_installed_package(client):
    url = client.get("/api/images/chelsea/layers").json()["plotly_js"]
    r = client.get(url)
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert r.text == plotly_js()
    assert "max-age=31536000" in r.headers["cache-control"]
    again = client.get(url, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert "/vendor/plotly.min.js" not in client.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------------------- pages, schema


def test_layers_page_is_the_shell_and_routes_are_in_the_schema(client):
    r = client.get("/images/chelsea/layers?layer=stem_act&order=kmeans&view=volume")
    assert r.status_code == 200 and "/static/js/main.js" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("layers", "layers/{layer}/mosaic", "layers/{layer}/mosaic.png"):
        operation = paths[f"/api/images/{{image_id}}/{route}"]["get"]
        assert operation["tags"] == ["layers"]
    volume = paths["/api/images/{image_id}/layers/{layer}/volume"]["get"]
    assert volume["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorOut"
    )


# ---------------------------------------------------------------------------- bad input

BAD = [
    ("nope/layers/stem_act/{what}", 404, "unknown image"),
    ("NOPE!/layers/stem_act/{what}", 400, "bad image id"),
    ("chelsea/layers/nolayer/{what}", 404, "unknown layer"),
    ("chelsea/layers/stem_act~2/{what}", 404, "unknown layer"),
    ("chelsea/layers/logits/{what}", 400, "not channel maps"),
    ("chelsea/layers/flatten/{what}", 400, "not channel maps"),
    ("chelsea/layers/classifier/{what}", 400, "not channel maps"),
    ("chelsea/layers/stem_act/{what}?order=random", 422, "order"),
    ("chelsea/layers/stem_act/{what}?order=kmeans&row=112", 400, "row 112 is outside"),
    ("chelsea/layers/stem_act/{what}?order=kmeans&k=33", 400, "32 channels"),
    ("chelsea/layers/stem_act/{what}?order=kmeans&k=0", 422, "k"),
    ("chelsea/layers/stem_act/{what}?row=-1", 422, "row"),
    ("chelsea/layers/stem_act/{what}?model=resnet50", 404, "this server runs model"),
]


@pytest.mark.parametrize("what", ["mosaic", "mosaic.png", "volume"])
@pytest.mark.parametrize("url, status, words", BAD)
def test_bad_layer_requests_are_4xx_json(client, what, url, status, words):
    r = client.get("/api/images/" + url.format(what=what))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail


@pytest.mark.parametrize(
    "url, status, words",
    [
        ("/api/images/chelsea/layers/stem_act/mosaic?normalize=log", 422, "normalize"),
        ("/api/images/chelsea/layers/stem_act/mosaic.png?normalize=", 422, "normalize"),
        ("/api/images/nope/layers", 404, "unknown image"),
        ("/api/images/chelsea/layers?model=resnet50", 404, "this server runs model"),
    ],
)
def test_bad_list_and_normalisation_are_4xx_json(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


# ---------------------------------------------------------------------------- a reused module


def test_reused_module_calls_use_tilde_in_urls(tmp_path):
    """MixedNet calls one ReLU three times: its second call is ``shared#2``, ``shared~2``."""
    net_model = load_model(MIXED, input_size=INPUT_SIZE, resize="resize")
    app = create_app(net_model, data_dir=tmp_path)
    with TestClient(app) as c:
        listing = c.get("/api/images/chelsea/layers").json()
        names = {layer["name"]: layer["url_name"] for layer in listing["layers"]}
        assert names["shared#2"] == "shared~2" and names["shared#3"] == "shared~3"
        body = c.get("/api/images/chelsea/layers/shared~2/mosaic?order=pca").json()
        assert body["layer"] == "shared#2" and body["url_name"] == "shared~2"
        assert "/layers/shared~2/mosaic.png?" in body["png"]
        # the second call of `shared` is relu(depthwise(cat(relu(branch_a), relu(branch_b))))
        net = net_model.module
        x = net_model.preprocess(load_gallery_image("chelsea"))
        with torch.no_grad():
            h1 = F.relu(net.conv1(x))
            cat = torch.cat([F.relu(net.branch_a(h1)), F.relu(net.branch_b(h1))], dim=1)
            d = F.relu(net.depthwise(cat))[0].double()
        assert len(body["tiles"]) == 8
        for tile in body["tiles"]:
            assert tile["max"] == pytest.approx(float(d[tile["channel"]].max()), abs=1e-5)
        assert body["permutation"] == order_channels(d.float(), "pca").permutation.tolist()
        assert png_array(c.get(body["png"]).content).shape == (body["height"], body["width"], 3)
        assert c.get(body["volume"]).json()["frames"]
