"""The tree's HTTP routes: shares, faithfulness in words, zoom on focus, seed scoring."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cnnscope.render import png_bytes
from cnnscope.tree import format_path, render_gradient, zoom_picture

BASE = "/api/images/chelsea"


@pytest.fixture(scope="module")
def client(explorer, tmp_path_factory):
    from cnnscope.server import create_app

    app = create_app(explorer.model, data_dir=tmp_path_factory.mktemp("tree-server"))
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


def picture(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_children_carry_their_share_of_the_parent(client, explorer, x):
    ans = client.get(f"{BASE}/children", params={"path": "logits:285", "k": 5}).json()
    kids = explorer.children(x, "logits:285", k=5)
    assert [c["share"] for c in ans["children"]] == pytest.approx([n.share for n in kids])
    assert all(0 < c["share"] <= 1 for c in ans["children"])
    # under guided_neg the logit's children are the units that lower it
    neg = client.get(f"{BASE}/children", params={"path": "logits:285", "rule": "guided_neg"})
    assert {c["sign"] for c in neg.json()["children"]} == {"neg"}


def test_faithfulness_says_what_was_zeroed_and_measured(client):
    f = client.get(f"{BASE}/faithfulness", params={"path": "logits:285", "k": 5}).json()
    assert "logit of class 285" in f["measure"] and len(f["children"]) == 5
    assert f["value"] > f["zeroed"] and f["drop"] == pytest.approx(
        (f["value"] - f["zeroed"]) / abs(f["value"]), rel=1e-6
    )
    kid = client.get(f"{BASE}/children", params={"path": "logits:285", "k": 1}).json()
    deeper = client.get(f"{BASE}/faithfulness", params={"path": kid["children"][0]["path"]})
    assert "weighted by the gradient its path brings" in deeper.json()["measure"]


def test_focus_zoom_frames_where_the_node_carries_its_evidence(client, explorer, x):
    """The bug: the old zoom (crop=support) did nothing below the logit, where the
    gradient reaches the whole image."""
    path = explorer.children(x, "logits:285", k=1)[0].path
    url = f"{BASE}/reconstruction.png"
    whole = picture(client.get(url, params={"path": format_path(path)}).content)
    support = picture(
        client.get(url, params={"path": format_path(path), "crop": "support"}).content
    )
    focus = picture(client.get(url, params={"path": format_path(path), "crop": "focus"}).content)
    assert np.array_equal(support, whole)  # nothing to crop: the gradient is everywhere
    box = explorer.focus(x, path)
    assert box is not None and box[2] - box[0] <= 112
    want = picture(png_bytes(zoom_picture(whole, box)))
    assert np.abs(focus.astype(int) - want.astype(int)).max() <= 1
    assert not np.array_equal(focus, whole)


def test_seed_scoring_has_its_own_pictures(client, explorer, x):
    ans = client.get(
        f"{BASE}/children", params={"path": "logits:285", "k": 2, "scoring": "seed"}
    ).json()
    assert ans["scoring"] == "seed"
    kid = ans["children"][0]
    assert "scoring=seed" in kid["reconstruction"]
    got = picture(client.get(kid["reconstruction"]).content)
    grad = explorer.input_gradients(x, [kid["path"]], scoring="seed")[0]
    assert np.abs(got.astype(int) - render_gradient(grad).astype(int)).max() <= 1
    bad = client.get(f"{BASE}/children", params={"path": "logits:285", "scoring": "nope"})
    assert bad.status_code in (400, 422) and "detail" in bad.json()
