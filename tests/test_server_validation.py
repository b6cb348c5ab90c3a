"""Each request is checked once, in the route's dependencies, and the answer says why a
node has no children.

The counts wrap the real checks of the running app (:class:`~cnnscope.server.refs.
References`, on the real model): no mock stands in for anything. The reason of a
childless node is compared with the tree explorer's own, computed here without the server.
"""

from __future__ import annotations

import collections

import pytest
from fastapi.testclient import TestClient

from cnnscope.images import load_gallery_image
from cnnscope.server import create_app

CHECKS = ("image", "layer_info", "maps_layer", "unit", "map_unit", "path", "ordering", "method")


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    app = create_app(model, data_dir=tmp_path_factory.mktemp("validation"))
    refs = app.state.service.refs
    calls: collections.Counter = collections.Counter()
    for name in CHECKS:  # count every call of the app's own checks, then run them
        real = getattr(refs, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(refs, name, counted)
    with TestClient(app) as client:
        yield client, calls, app.state.service


def checks_of(served, url: str) -> dict:
    client, calls, _ = served
    calls.clear()
    r = client.get(url)
    assert r.status_code == 200, r.text
    return dict(calls)


@pytest.mark.parametrize("query", ["", "?order=kmeans&k=4&row=3", "?order=pca&normalize=channel"])
def test_a_mosaic_request_checks_its_image_and_layer_once(served, query):
    url = f"/api/images/chelsea/layers/blocks.5.expand_act/mosaic{query}"
    assert checks_of(served, url) == {"image": 1, "maps_layer": 1, "layer_info": 1, "ordering": 1}
    png = checks_of(served, url.replace("/mosaic", "/mosaic.png"))
    assert png == {"image": 1, "maps_layer": 1, "layer_info": 1, "ordering": 1}


@pytest.mark.parametrize("what", ["children", "reconstruction.png", "faithfulness"])
def test_a_tree_path_is_checked_once(served, what):
    path = "logits:285/head_act:254"
    got = checks_of(served, f"/api/images/chelsea/{what}?path={path}")
    assert got == {"image": 1, "path": 1, "layer_info": 2}  # one lookup per unit of the path


def test_units_and_methods_are_checked_once(served):
    one_unit = {"image": 1, "unit": 1, "layer_info": 1}
    assert checks_of(served, "/api/images/chelsea/parents?unit=blocks.15:120") == one_unit
    got = checks_of(served, "/api/images/chelsea/activation.png?unit=blocks.15:120")
    assert got == {"image": 1, "map_unit": 1, "unit": 1, "layer_info": 1}
    assert checks_of(served, "/api/units/blocks.15:120") == {"unit": 1, "layer_info": 1}
    got = checks_of(served, "/api/images/chelsea/attribution.png?method=grad_cam&layer=head_act")
    assert got == {"image": 1, "method": 1, "layer_info": 1}


def test_a_childless_node_says_why(served, explorer):
    client, _, svc = served
    x = explorer.input(load_gallery_image("chelsea"))
    bottom = f"{explorer.chain[-1]}:0"
    body = client.get(f"/api/images/chelsea/children?path={bottom}").json()
    assert body["children"] == [] and body["layer"] is None
    assert body["reason"] == explorer.no_children(x, bottom) and "bottom" in body["reason"]
    found = client.get("/api/images/chelsea/children?path=logits:285").json()
    assert found["children"] and found["reason"] is None
    # a node with no inhibitory children under guided: the reason names the sign
    for node in found["children"]:
        path = node["path"]
        if explorer.no_children(x, path, sign="neg") is not None:
            neg = client.get(f"/api/images/chelsea/children?path={path}&sign=neg").json()
            assert neg["children"] == []
            assert neg["reason"] == explorer.no_children(x, path, sign="neg")
            break
    # faithfulness of a childless node is a 400 with the same reason
    r = client.get(f"/api/images/chelsea/faithfulness?path={bottom}")
    assert r.status_code == 400 and r.json()["detail"] == body["reason"]
