"""``/api/graphs``: class graphs served from ``--graphs DIR`` and built on the background lane.

The reference is the library itself: a graph built by :func:`cnnscope.graph.build_graph`
over two gallery photos on the real model, read by :func:`cnnscope.graph.class_graph`;
the explorer must serve exactly that, and its own build (one pass on the background lane,
reporting its progress) must give the graph of one plain pass over the same images.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from cnnscope.graph import build_graph, class_graph
from cnnscope.images import load_gallery_image
from cnnscope.server import create_app
from cnnscope.server.routers.pages import PAGES
from cnnscope.server.services.graphs import SERVED_IMAGES
from cnnscope.synthesis.api import unit_visualization

CLASS = 281  # tabby


def two_photo_graph(model, root):
    """``root/photos`` (chelsea and coffee) and the library's tabby graph of them in
    ``root/graphs/tabby``; returns the two folders."""
    photos = root / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        load_gallery_image(name).save(photos / f"{name}.png")
    build_graph(model, photos, "tabby", out=root / "graphs" / "tabby", edge_k=2)
    return photos, root / "graphs"


@pytest.fixture(scope="module")
def setup(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    photos, graphs = two_photo_graph(model, root)
    (graphs / "junk").mkdir()
    (graphs / "junk" / "state.json").write_text("{not json")
    (graphs / "empty").mkdir()
    app = create_app(model, data_dir=root / "data", gallery_dir=photos, graphs_dir=graphs)
    with TestClient(app) as client:
        yield client, graphs, root


def test_lists_the_graph_folders_and_skips_bad_ones(setup):
    client, graphs, _ = setup
    r = client.get("/api/graphs")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["folder"] == str(graphs.resolve())
    assert [c["index"] for c in got["classes"]] == [CLASS]
    entry = got["classes"][0]
    assert entry["folder"] == "tabby" and entry["images"] == 2 and entry["total"] == 2
    assert entry["page"] == f"/classes/{CLASS}"
    assert entry["covers"].startswith("from 2 images of ") and "tabby" in entry["covers"]


def test_serves_the_librarys_graph(setup):
    client, graphs, _ = setup
    for params in ({}, {"units": 2, "edges": 1, "min_share": 0.2}):
        r = client.get("/api/graphs/tabby", params=params)
        assert r.status_code == 200, r.text
        got = r.json()
        ref = class_graph(graphs / "tabby", **params).to_dict()
        assert got["class"] == ref["class"] and got["images"] == 2
        assert got["layers"] == ref["layers"] and got["thresholds"] == ref["thresholds"]
        assert [n["id"] for n in got["nodes"]] == [n["id"] for n in ref["nodes"]]
        assert [n["importance"] for n in got["nodes"]] == [n["importance"] for n in ref["nodes"]]
        assert got["edges"] == ref["edges"]
        assert len(got["nodes"]) > 3 and got["edges"]
    per_layer = {}
    for n in got["nodes"]:
        per_layer[n["layer"]] = per_layer.get(n["layer"], 0) + 1
    assert max(per_layer.values()) <= 2
    # by name or by index: the same graph
    assert (
        client.get(f"/api/graphs/{CLASS}").json()["nodes"]
        == client.get("/api/graphs/tabby%20cat").json()["nodes"]
    )


def test_nodes_link_to_unit_pages_and_example_trees(setup):
    client, _, _ = setup
    got = client.get("/api/graphs/tabby").json()
    ids = {img["id"]: img["name"] for img in client.get("/api/images").json()["images"]}
    linked = 0
    for node in got["nodes"]:
        assert node["page"] == "/units/" + node["id"].replace("#", "~")
        for ex in node["examples"]:
            assert ex["image"] in ("chelsea.png", "coffee.png")
            # the graph's photos are the --gallery folder's: the explorer knows them
            assert ids[ex["image_id"]] == ex["image"]
            assert ex["tree"].startswith(f"/images/{ex['image_id']}/tree?")
            assert f"path={node['id']}" in ex["tree"]
            linked += 1
    assert linked
    layer = got["nodes"][1]
    ex = layer["examples"][0]
    r = client.get(
        f"/api/images/{ex['image_id']}/children", params={"path": ex["tree"].split("path=")[1]}
    )
    assert r.status_code == 200, r.text  # the tree page's root is a valid path


def test_examples_carry_thumbnails_and_rendered_visualizations(setup, model):
    client, _, _ = setup
    got = client.get("/api/graphs/tabby").json()
    seen = 0
    for node in got["nodes"]:
        # not rendered yet: no visualization, and asking for the graph started none
        assert node["visualization"] is None
        state = client.get("/api" + node["page"] + "/visualization")
        assert state.status_code == 200 and state.json()["state"] == "none", state.text
        for ex in node["examples"]:
            assert ex["thumbnail"] == f"/api/images/{ex['image_id']}/thumbnail.jpg"
            r = client.get(ex["thumbnail"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert r.content[:3] == b"\xff\xd8\xff"  # a JPEG
            seen += 1
    assert seen
    # once a unit's picture is in the cache (rendered by the library itself), its node has it
    svc = client.app.state.service
    node = got["nodes"][1]
    unit = svc.refs.unit(node["id"]).unit
    path = unit_visualization(model, unit, svc.units._vis_dir, steps=2, size=32)
    again = {n["id"]: n for n in client.get("/api/graphs/tabby").json()["nodes"]}
    assert again[node["id"]]["visualization"] == "/api" + node["page"] + "/visualization.png"
    r = client.get(again[node["id"]]["visualization"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == path.read_bytes()
    assert sum(n["visualization"] is not None for n in again.values()) == 1


def test_export_is_the_static_html_as_an_attachment(setup):
    client, _, _ = setup
    got = client.get("/api/graphs/tabby", params={"units": 3}).json()
    r = client.get(got["export"])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-disposition"] == 'attachment; filename="class-graph-281-tabby.html"'
    assert "<script" in r.text and got["nodes"][1]["id"] in r.text


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("/api/graphs/tabbyy", 404, "did you mean 'tabby'"),
        ("/api/graphs/5000", 404, "out of range"),
        ("/api/graphs/cat", 400, "ambiguous"),
        ("/api/graphs/goldfish", 404, "POST /api/graphs/1"),
        ("/api/graphs/tabby?units=0", 422, "units"),
        ("/api/graphs/tabby?edges=100", 422, "edges"),
        ("/api/graphs/tabby?min_share=1", 422, "min_share"),
        ("/api/graphs/tabbyy/build", 404, "did you mean"),
        ("/api/graphs/goldfish/export.html", 404, "no graph of class 1"),
    ],
)
def test_bad_requests_are_one_line_errors(setup, url, status, words):
    client, _, _ = setup
    r = client.get(url)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail


def test_a_graph_of_another_model_is_skipped(setup, tmp_path):
    client, graphs, _ = setup
    other = graphs / "other-model"
    other.mkdir()
    meta = json.loads((graphs / "tabby" / "state.json").read_text())
    meta["model"] = {**meta["model"], "fingerprint": "0" * 16}
    (other / "state.json").write_text(json.dumps(meta))
    for name in (graphs / "tabby").glob("sums-*.npz"):
        (other / name.name).write_bytes(name.read_bytes())
    try:
        classes = client.get("/api/graphs").json()["classes"]
        assert [c["folder"] for c in classes] == ["tabby"]
    finally:
        for f in other.iterdir():
            f.unlink()
        other.rmdir()


def test_the_class_page_is_a_page(setup):
    client, _, _ = setup
    assert PAGES["graph"] == "/classes/{class}"
    assert client.get("/api/vocabulary").json()["pages"]["graph"] == "/classes/{class}"
    r = client.get("/classes/tabby", headers={"Accept": "text/html"})
    assert r.status_code == 200 and "main.js" in r.text
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/graphs", "/api/graphs/{class}", "/api/graphs/{class}/build"):
        assert path in paths
    assert "post" in paths["/api/graphs/{class}"]


def test_a_cross_site_build_is_refused(setup):
    client, _, _ = setup
    r = client.post("/api/graphs/goldfish", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert client.get("/api/graphs/goldfish/build").json()["state"] == "none"


def test_the_explorer_builds_a_graph_like_one_pass(setup, model):
    client, graphs, root = setup
    r = client.post("/api/graphs/goldfish")
    assert r.status_code == 202, r.text
    assert r.json()["state"] in ("queued", "running")
    deadline = time.monotonic() + 300
    seen = []
    while True:
        state = client.get("/api/graphs/goldfish/build").json()
        seen.append((state["done"], state["total"]))
        if state["state"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["state"] == "done", state
    served = len(client.get("/api/images").json()["images"])
    assert state["done"] == state["total"] == served  # 8 built-in photos + the 2 of the folder
    got = client.get("/api/graphs/goldfish").json()
    assert got["images"] == served
    assert got["source"]["covers"].startswith(f"from {served} images of the explorer's gallery")
    # the reference: one plain pass of the library over the same copies
    copies = root / "data" / SERVED_IMAGES
    assert len(list(copies.iterdir())) == served
    build_graph(model, copies, "goldfish", out=root / "reference", edge_k=2)
    ref = class_graph(root / "reference").to_dict()
    assert [n["id"] for n in got["nodes"]] == [n["id"] for n in ref["nodes"]]
    assert [n["importance"] for n in got["nodes"]] == [n["importance"] for n in ref["nodes"]]
    assert got["edges"] == ref["edges"]
    # every example image is a served one, with its tree page
    for node in got["nodes"]:
        for ex in node["examples"]:
            assert ex["tree"].startswith(f"/images/{ex['image_id']}/tree?")
    # the progress only went up, to the number of images
    done = [d for d, n in seen if n]
    assert done == sorted(done) and done[-1] == served and {n for _, n in seen} <= {0, served}
    # building again adds nothing and is done at once
    assert client.post("/api/graphs/goldfish").status_code == 202
    assert "goldfish" in json.dumps(client.get("/api/graphs").json())


def test_serve_refuses_a_graphs_file(tmp_path, capsys):
    from cnnscope.cli import main
    from tests.live_server import free_port

    (tmp_path / "graphs.txt").write_text("not a folder")
    argv = ["serve", "--no-browser", "--data-dir", str(tmp_path), "--port", str(free_port())]
    code = main([*argv, "--graphs", str(tmp_path / "graphs.txt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err


@pytest.fixture(scope="module")
def foreign(model, tmp_path_factory):
    """A graph over a folder the explorer does not serve (no --gallery)."""
    root = tmp_path_factory.mktemp("foreign")
    photos, graphs = two_photo_graph(model, root)
    (root / "secret.png").write_bytes((photos / "coffee.png").read_bytes())
    with TestClient(create_app(model, data_dir=root / "data", graphs_dir=graphs)) as client:
        yield client


def test_an_example_outside_the_explorer_opens_as_an_upload(foreign):
    client = foreign
    got = client.get("/api/graphs/tabby").json()
    ex = got["nodes"][1]["examples"][0]
    assert ex["image_id"] is None and ex["tree"] is None
    assert ex["path"].startswith(got["nodes"][1]["id"] + "@")
    before = len(client.get("/api/images").json()["images"])
    r = client.post(
        "/api/graphs/tabby/examples/open", params={"image": ex["image"], "path": ex["path"]}
    )
    assert r.status_code == 200, r.text
    opened = r.json()
    assert opened["image"].startswith("u-") and opened["created"]
    assert opened["tree"].startswith(f"/images/{opened['image']}/tree?")
    assert len(client.get("/api/images").json()["images"]) == before + 1
    r = client.get(f"/api/images/{opened['image']}/children", params={"path": ex["path"]})
    assert r.status_code == 200, r.text
    # now the graph links that image's tree directly
    again = client.get("/api/graphs/tabby").json()["nodes"][1]["examples"]
    assert any(e["image_id"] == opened["image"] and e["tree"] for e in again)
    for image in ("../secret.png", "secret.png", "nope.png"):
        r = client.post(
            "/api/graphs/tabby/examples/open", params={"image": image, "path": ex["path"]}
        )
        assert r.status_code == 404, (image, r.text)
    r = client.post(
        "/api/graphs/tabby/examples/open",
        params={"image": ex["image"], "path": ex["path"]},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
