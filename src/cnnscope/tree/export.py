"""A neuron tree as one self-contained HTML file: images inlined, no server, no network."""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..engine import Unit
from ..errors import CnnscopeError
from ..render import png_bytes
from .explorer import Explorer
from .node import Node
from .paths import TreePath, format_path

log = logging.getLogger(__name__)

#: Most nodes an export may hold (a bigger tree is unreadable and slow).
MAX_NODES = 1500


@dataclass
class TreeNode:
    """A node of an exported tree, with its picture and its children."""

    unit: Unit
    path: TreePath
    weight: float | None
    sign: str
    picture: np.ndarray | None = None
    children: list[TreeNode] = field(default_factory=list)
    faithfulness: dict | None = None
    share: float | None = None


def build_tree(
    explorer: Explorer,
    x: torch.Tensor,
    root: TreePath,
    depth: int,
    k: int,
    rule: str = "guided",
    gain: str = "auto",
    scoring: str = "path",
    sign: str = "pos",
    faithfulness: bool = True,
    progress: bool = False,
    draws: int = 8,
    zoom: bool = True,
) -> TreeNode:
    """Expand ``root`` ``depth`` levels down, ``k`` children per node, with pictures.

    Each level costs one backward per expanded node (its children) and one batched
    backward for all the level's reconstructions. With ``zoom`` each picture is framed
    on where its node carries its evidence (:meth:`Explorer.focus`), as in the explorer.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> ex = Explorer(load_model())
    >>> x = ex.input(load_gallery_image("chelsea"))
    >>> tree = build_tree(ex, x, ex.check_path("logits:285"), depth=1, k=2, faithfulness=False)
    >>> len(tree.children)
    2
    """
    if depth < 0:
        raise CnnscopeError(f"depth must be >= 0, not {depth}")
    if k < 1:
        raise CnnscopeError(f"k must be >= 1, not {k}")
    total = sum(k**d for d in range(depth + 1))
    if total > MAX_NODES:
        raise CnnscopeError(
            f"a tree of depth {depth} with k={k} has up to {total} nodes (limit {MAX_NODES}): "
            "lower --depth or --k"
        )
    top = TreeNode(root[-1], root, None, "pos")
    level = [top]
    pictures_of = [top]
    bar = tqdm(total=total, desc="tree", unit="node", disable=not progress)
    for d in range(depth + 1):
        # one batched backward for the whole level's reconstructions
        paths = [n.path for n in pictures_of]
        pics = explorer.reconstructions(x, paths, rule, gain, scoring, zoom=zoom)
        for node, pic in zip(pictures_of, pics):
            node.picture = pic
        bar.update(len(pictures_of))
        if d == depth:
            break
        nxt = []
        for node in level:
            kids: list[Node] = explorer.children(x, node.path, k, rule, scoring, gain, sign)
            node.children = [
                TreeNode(c.unit, c.path, c.weight, c.sign, share=c.share) for c in kids
            ]
            if faithfulness and kids:
                node.faithfulness = explorer.faithfulness(
                    x, node.path, [c.unit for c in kids], draws, rule=rule, scoring=scoring
                )
            nxt.extend(node.children)
        level = pictures_of = nxt
        if not level:
            break
    bar.close()
    return top


def _data_uri(picture: np.ndarray, fmt: str = "jpeg") -> str:
    """``picture`` (H x W x 3 uint8) as a data: URI (JPEG keeps a deep tree small)."""
    if fmt == "png":
        data = png_bytes(picture)
    else:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(picture, dtype=np.uint8)).save(buf, "JPEG", quality=88)
        data = buf.getvalue()
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def _num(v: float) -> str:
    return f"{v:.3g}"


def _share_words(node: TreeNode) -> str:
    if node.weight is None:
        return "root"
    if node.share is None:
        return f"mean A·G = {node.weight:.3g}"
    how = "inhibits" if node.sign == "neg" else "carries"
    return f"{how} {100 * node.share:.1f}% of its parent's evidence"


def _breakable(label: str) -> str:
    """An escaped unit name that may wrap after its dots and colon, never inside a number."""
    return label.replace(".", ".<wbr>").replace(":", ":<wbr>")


def _node_html(node: TreeNode) -> str:
    esc = html.escape
    label = esc(str(node.unit))
    weight = esc(_share_words(node))
    if node.weight is not None:
        weight = f'<span title="mean A·G = {node.weight:.3g}">{weight}</span>'
    title = esc(format_path(node.path))
    kind = "neg" if node.sign == "neg" else "pos"
    pic = (
        f'<img src="{_data_uri(node.picture)}" alt="{label}" title="{title}">'
        if node.picture is not None
        else ""
    )
    f = node.faithfulness
    edge = ""
    if f:
        n = len(node.children)
        words = (
            f"Zeroing its {n} children takes {f['measure']} from {_num(f['value'])} to "
            f"{_num(f['zeroed'])}; zeroing {n} random channels of {f['layer']} instead takes it "
            f"to {_num(f['random_zeroed'])} on average ({f['draws']} draws)."
        )
        edge = (
            f'<div class="faith" title="{esc(words)}">{n} children zeroed: '
            f"<b>{_num(f['value'])} → {_num(f['zeroed'])}</b><br>"
            f"{n} random: → {_num(f['random_zeroed'])}</div>"
        )
    box = (
        f'<div class="node {kind}" data-path="{title}" tabindex="0">'
        f'<div class="u">{_breakable(label)}</div><div class="w">{weight}</div>{pic}{edge}</div>'
    )
    if not node.children:
        return f'<li class="leaf">{box}</li>'
    kids = "".join(_node_html(c) for c in node.children)
    return f'<li>{box}<div class="kids"><ul>{kids}</ul></div></li>'


_CSS = """
:root { --bg:#fafaf7; --fg:#222; --muted:#777; --pos:#2e7d32; --neg:#c62828; --line:#b9b9b0; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; gap: 16px; align-items: flex-start; padding: 12px 16px;
  border-bottom: 1px solid #ddd; background: #fff; position: sticky; left: 0; }
header img { width: 112px; height: 112px; border-radius: 4px; }
header h1 { font-size: 16px; margin: 0 0 4px; }
header table { border-collapse: collapse; }
header td { padding: 0 8px 0 0; }
.muted { color: var(--muted); }
main { padding: 16px; overflow: auto; }
ul { list-style: none; margin: 0; padding: 0; }
.tree li { display: flex; align-items: center; position: relative; padding: 4px 0 4px 24px; }
.tree > li { padding-left: 0; }
.tree ul > li::before { content: ""; position: absolute; left: 0; top: 50%; width: 24px;
  border-top: 1px solid var(--line); }
.tree ul > li::after { content: ""; position: absolute; left: 0; top: 0; bottom: 0;
  border-left: 1px solid var(--line); }
.tree ul > li:first-child::after { top: 50%; }
.tree ul > li:last-child::after { bottom: 50%; }
.tree ul > li:only-child::after { display: none; }
.kids { display: flex; flex-direction: column; padding-left: 24px; position: relative; }
.kids::before { content: ""; position: absolute; left: 0; top: 50%; width: 24px;
  border-top: 1px solid var(--line); }
.faith { font-size: 10.5px; color: var(--muted); margin-top: 3px; line-height: 1.25; }
.faith b { color: var(--fg); }
.node { background: #fff; border: 2px solid var(--pos); border-radius: 6px; padding: 4px;
  width: 168px; cursor: pointer; position: relative; z-index: 1; transition: transform .15s; }
.node.neg { border-color: var(--neg); border-style: dashed; }
.node img { width: 156px; height: 156px; display: block; image-rendering: auto; }
.node:hover { transform: scale(1.9); z-index: 10; box-shadow: 0 4px 16px rgba(0,0,0,.25); }
.u { font-weight: 600; font-size: 11px; line-height: 1.2; }
.w { color: var(--muted); font-size: 10.5px; margin-bottom: 2px; }
li.collapsed > .kids { display: none; }
li.collapsed > .node { box-shadow: 4px 4px 0 #ccc; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px -2px 8px;
  border: 2px solid var(--pos); }
.legend span.neg { border: 2px dashed var(--neg); }
"""

_JS = """
document.querySelectorAll('.tree li').forEach(function (li) {
  var node = li.querySelector(':scope > .node');
  if (!li.querySelector(':scope > .kids')) return;
  function toggle() { li.classList.toggle('collapsed'); }
  node.addEventListener('click', toggle);
  node.addEventListener('keydown', function (e) { if (e.key === 'Enter') toggle(); });
});
"""


def tree_html(
    tree: TreeNode,
    image: np.ndarray,
    predictions: list[dict],
    settings: dict,
    title: str = "cnnscope neuron tree",
) -> str:
    """The whole page: header (image, predictions, settings) and the tree.

    Examples
    --------
    >>> pic = np.zeros((8, 8, 3), np.uint8)
    >>> node = TreeNode(Unit("logits", 1), (Unit("logits", 1),), None, "pos", pic)
    >>> page = tree_html(node, pic, [], {"rule": "guided"})
    >>> page.count('class="node ')
    1
    """
    esc = html.escape
    preds = "".join(
        f"<tr><td>{100 * p['probability']:.1f}%</td><td>{esc(str(p['label']))}</td>"
        f"<td class=muted>{p['index']}</td></tr>"
        for p in predictions
    )
    opts = " · ".join(f"{esc(str(k))}: <b>{esc(str(v))}</b>" for k, v in settings.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body>
<header>
<img src="{_data_uri(image)}" alt="input image">
<div><h1>{esc(title)}</h1><div>{opts}</div>
<div class="legend muted">click a node to fold it · hover to zoom ·
<span></span>excitatory <span class="neg"></span>inhibitory</div>
<p class="muted">Each picture is the gradient of the root, conditioned on the path to the
node, at the input (grey = 0), zoomed on where the node carries its evidence (unless
exported with --no-zoom). "carries 12%": the node's share of its parent's evidence of the
same sign (mean A·G over the layer's channels). "children zeroed": the node's value, then
its value when its shown children are set to zero, and when as many random channels of
their layer are (hover for what was measured).</p></div>
<table>{preds}</table>
</header>
<main><ul class="tree">{_node_html(tree)}</ul></main>
<script>{_JS}</script>
</body></html>
"""


def count_nodes(tree: TreeNode) -> int:
    """Number of nodes in ``tree``."""
    return 1 + sum(count_nodes(c) for c in tree.children)
