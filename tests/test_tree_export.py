"""``cnnscope tree``: one self-contained HTML file, and one-line errors."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cnnscope.cli import main
from cnnscope.tree.export import TreeNode, build_tree, count_nodes, tree_html


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("tree") / "tree.html"
    rc = main(["tree", "chelsea", "--depth", "2", "--k", "2", "--draws", "2", "--out", str(out)])
    assert rc == 0
    return out.read_text(encoding="utf-8")


def test_html_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page), "no network URL may appear"
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page), "only data: URIs"
    assert "<link" not in page and "@import" not in page and "url(" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)


def test_node_count_and_pictures(page):
    k = 2
    assert page.count('class="node ') == 1 + k + k**2
    srcs = re.findall(r'<img src="data:image/(\w+);base64,([^"]+)"', page)
    assert len(srcs) == 1 + (1 + k + k**2)  # the input image + one picture per node
    for _, data in srcs:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        assert img.shape == (224, 224, 3)
        assert img.std() > 2, "blank picture"
    assert "logits:285" in page and "Egyptian cat" in page
    assert page.count('class="faith"') == 1 + k  # one edge label per expanded node


def test_tree_html_escapes_names():
    pic = np.zeros((4, 4, 3), np.uint8)
    from cnnscope.engine import Unit

    node = TreeNode(Unit("a<b>", 1), (Unit("a<b>", 1),), None, "pos", pic)
    page = tree_html(node, pic, [{"index": 1, "label": "<x>", "probability": 0.5}], {"r": "<s>"})
    assert "a<b>" not in page and "<x>" not in page and "<s>" not in page
    assert "&lt;x&gt;" in page and "&lt;s&gt;" in page and "a&lt;b&gt;" in page
    assert count_nodes(node) == 1


def test_build_tree_refuses_huge_trees():
    from cnnscope.errors import CnnscopeError

    with pytest.raises(CnnscopeError, match="nodes"):
        build_tree(None, None, (), depth=8, k=32)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tree", "no-such-image.png"], "not found"),
        (["tree", "chelsea", "--root", "blocks.15.expand_act:99999"], "out of range"),
        (["tree", "chelsea", "--root", "nolayer:1"], "unknown layer"),
        (["tree", "chelsea", "--root", "logits:1/blocks.3.expand_act:0"], "comes head_act"),
        (["tree", "chelsea", "--root", "logits:1//x"], "bad tree path"),
        (["tree", "chelsea", "--depth", "-1"], "--depth"),
        (["tree", "chelsea", "--k", "0"], "--k"),
        (["tree", "chelsea", "--draws", "0"], "--draws"),
        (["tree", "chelsea", "--out", "/no/such/dir/t.html"], "does not exist"),
        (["tree", "chelsea", "--layers", "head_act,nolayer"], "unknown layer"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_cli_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tree", "chelsea", "--rule", "magic"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def _off_grey(picture: np.ndarray) -> float:
    """Fraction of pixels that differ from the grey of a zero gradient."""
    return float((np.abs(picture.astype(int) - 128).max(axis=2) > 24).mean())


def test_export_zooms_a_deep_node_on_its_evidence():
    """The bug: the export had no zoom; a low unit's picture was a speck of a few pixels."""
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model
    from cnnscope.tree import Explorer

    ex = Explorer(load_model())
    x = ex.input(load_gallery_image("chelsea"))
    root = ex.check_path("blocks.3.expand_act:5")
    whole = build_tree(ex, x, root, depth=1, k=2, faithfulness=False, zoom=False)
    zoomed = build_tree(ex, x, root, depth=1, k=2, faithfulness=False)
    for plain, framed in zip([whole, *whole.children], [zoomed, *zoomed.children]):
        assert _off_grey(plain.picture) < 0.05, "the whole picture is a speck"
        assert _off_grey(framed.picture) > 2 * _off_grey(plain.picture)
    assert zoomed.children[0].share is not None
