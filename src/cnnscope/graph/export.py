"""A class graph as one self-contained HTML file: no server, no network, opens from file://.

The page draws the graph with the explorer's own module (``static/js/graph/draw.js``): the
ES modules it imports are read from the installed package and inlined into one
``<script type="module">``, the graph's JSON goes into a ``<script type="application/json">``
with ``<``, ``>`` and ``&`` escaped (so no layer name can close the element), and the CSS
is inlined. Pictures are included only where the graph's dict already carries them as
``data:`` URIs (a node's ``visualization``, an example's ``thumbnail``); nothing is computed.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_write
from ..errors import CnnscopeError
from .result import ClassGraph

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = ["bundle_modules", "export_graph_html", "graph_html", "script_json"]

log = logging.getLogger(__name__)

#: The page's ES module (under the package's ``server/static``) and its stylesheet.
ENTRY = "js/graph/standalone.js"
STYLESHEET = "css/graph.css"

_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"(\.{1,2}/[^"]+)";[ \t]*$', re.M)
_ANY_IMPORT = re.compile(r"^\s*import\b", re.M)
_EXPORT = re.compile(
    r"^export\s+(?:async\s+)?(?:function\*?|class|const|let|var)\s+([A-Za-z_$][\w$]*)", re.M
)
_OTHER_EXPORT = re.compile(r"^export\s+(?:default\b|\{|\*)", re.M)

_PAGE_CSS = """
body { margin: 0; font: 14px/1.5 var(--font, system-ui, -apple-system, "Segoe UI", Roboto,
  Arial, sans-serif); color: #151b26; background: #f5f6f8; }
header { padding: 16px 24px 4px; }
header h1 { font-size: 1.4rem; margin: 0 0 2px; }
header p { margin: 0; color: #6b7585; }
.page { display: flex; gap: 16px; align-items: flex-start; padding: 8px 24px 24px; }
#cg-graph { flex: 1 1 auto; min-width: 0; background: #fff; border: 1px solid #e3e6ec;
  border-radius: 12px; padding: 14px; }
#cg-panel { flex: 0 0 300px; background: #fff; border: 1px solid #e3e6ec; border-radius: 12px;
  padding: 14px; position: sticky; top: 12px; max-height: calc(100vh - 24px); overflow: auto; }
#cg-panel .hint { color: #6b7585; margin: 0; }
@media (max-width: 1100px) { .page { flex-direction: column; align-items: stretch; }
  #cg-panel { flex-basis: auto; position: static; max-height: none; } }
"""


def _static() -> Traversable:
    # files("cnnscope"), not files("cnnscope.server"): no FastAPI import for an export
    return resources.files("cnnscope") / "server" / "static"


def _read(root: Traversable, rel: str) -> str:
    node = root
    for part in rel.split("/"):
        node = node / part
    try:
        return node.read_text(encoding="utf-8")
    except OSError as exc:
        raise CnnscopeError(f"cannot read the explorer's {rel}: {exc}") from None


def _join(base: str, rel: str) -> str:
    parts = base.split("/")[:-1]
    for part in rel.split("/"):
        if part == "..":
            if not parts:
                raise CnnscopeError(f"import {rel!r} from {base} leaves the static folder")
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def bundle_modules(entry: str = ENTRY, root: Traversable | None = None) -> str:
    """One ES module's source with every relative module it imports inlined.

    Each module becomes a function scope run once, in dependency order, whose exports
    the modules importing it destructure (``import { a, b as c } from "./x.js"`` becomes
    ``const { a, b: c } = __cnnscope_N;``), so equal private names cannot clash.

    Parameters
    ----------
    entry : str
        The entry module, relative to ``root``.
    root : Traversable, optional
        The static folder (default: the installed package's ``server/static``).

    Returns
    -------
    str
        JavaScript for one ``<script type="module">``.

    Examples
    --------
    >>> js = bundle_modules("js/graph/draw.js")
    >>> "function drawClassGraph" in js and "import " not in js
    True
    """
    root = _static() if root is None else root
    order: list[str] = []
    sources: dict[str, str] = {}
    visiting: set[str] = set()

    def visit(rel: str) -> None:
        if rel in sources:
            return
        if rel in visiting:
            raise CnnscopeError(f"circular import of {rel}")
        visiting.add(rel)
        text = _read(root, rel)
        for _, target in _IMPORT.findall(text):
            visit(_join(rel, target))
        visiting.discard(rel)
        sources[rel] = text
        order.append(rel)

    visit(entry)
    ids = {rel: f"__cnnscope_{i}" for i, rel in enumerate(order)}
    out = []
    for rel in order:
        text = sources[rel]

        def local(m: re.Match, rel: str = rel) -> str:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
            fields = ", ".join(n.replace(" as ", ": ") for n in names)
            return f"const {{ {fields} }} = {ids[_join(rel, m.group(2))]};"

        body = _IMPORT.sub(local, text)
        if _ANY_IMPORT.search(body) or _OTHER_EXPORT.search(body):
            raise CnnscopeError(
                f"{rel}: only `import {{...}} from` and named exports can be inlined"
            )
        names = _EXPORT.findall(body)
        body = re.sub(r"^export\s+", "", body, flags=re.M)
        out.append(
            f"// ---- {rel}\nconst {ids[rel]} = (() => {{\n{body}\n"
            f"return {{ {', '.join(names)} }};\n}})();\n"
        )
    js = "\n".join(out)
    if re.search(r"</script|<!--", js, re.I):
        raise CnnscopeError("the explorer's JavaScript cannot be inlined: it contains </script")
    return js


def _clean(value):
    """JSON-safe: non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def script_json(data: object) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element.

    ``<``, ``>`` and ``&`` become ``\\u003c``, ``\\u003e``, ``\\u0026`` (JSON.parse reads them
    back unchanged), so no string can end the element or open a comment; non-finite floats
    become ``null``.

    Examples
    --------
    >>> script_json({"layer": "</script><b>"})
    '{"layer": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    >>> json.loads(script_json({"layer": "</script>"}))["layer"]
    '</script>'
    """
    text = json.dumps(_clean(data), ensure_ascii=False, allow_nan=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _pictures_inline(data: dict) -> dict:
    """Keep a node's ``visualization`` and an example's ``thumbnail`` only as data: URIs."""

    def inline(value) -> bool:
        return isinstance(value, str) and value.startswith("data:image/")

    nodes = []
    for node in data.get("nodes", []):
        node = dict(node)
        if "visualization" in node and not inline(node["visualization"]):
            log.debug("export: %s's visualization is not a data: URI, left out", node.get("id"))
            del node["visualization"]
        examples = []
        for ex in node.get("examples") or []:
            ex = dict(ex)
            if "thumbnail" in ex and not inline(ex["thumbnail"]):
                del ex["thumbnail"]
            examples.append(ex)
        node["examples"] = examples
        nodes.append(node)
    return {**data, "nodes": nodes}


def _fact(value: object) -> str:
    """A meta entry in a few words: a dict by its name (or kind and root), else as text.

    Examples
    --------
    >>> _fact({"name": "resnet18", "fingerprint": "ab12"}), _fact({"kind": "folder", "root": "x/"})
    ('resnet18', 'folder x/')
    """
    if isinstance(value, dict):
        if "name" in value:
            return str(value["name"])
        return " ".join(str(value[k]) for k in ("kind", "root") if k in value) or json.dumps(value)
    return str(value)


def graph_html(graph: ClassGraph | dict, title: str | None = None) -> str:
    """The export's page for ``graph`` (a :class:`ClassGraph` or its ``to_dict()``).

    Examples
    --------
    >>> from cnnscope.graph import GraphNode
    >>> g = ClassGraph(3, "cat", 2, ["logits", "conv"],
    ...                [GraphNode("logits", 3, 1.5), GraphNode("conv", 0, 0.5)], [], {})
    >>> page = graph_html(g)
    >>> page.startswith("<!DOCTYPE html>") and '<script type="module">' in page
    True
    """
    data = graph.to_dict() if isinstance(graph, ClassGraph) else dict(graph)
    for key in ("class", "layers", "nodes", "edges"):
        if key not in data:
            raise CnnscopeError(f"not a class graph: no {key!r} in it")
    data = _pictures_inline(data)
    label = str(data["class"].get("label", data["class"].get("index", "")))
    title = title or f"cnnscope class graph: {label}"
    meta = data.get("meta") or {}
    facts = [f"class {data['class'].get('index')} ({label})", f"{data.get('images', 0)} images"]
    facts += [f"{k}: {_fact(meta[k])}" for k in ("model", "select", "rule", "source") if k in meta]
    esc = html.escape
    css = _read(_static(), STYLESHEET)
    if re.search(r"</style", css, re.I):
        raise CnnscopeError(f"{STYLESHEET} cannot be inlined: it contains </style")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_PAGE_CSS}
{css}</style></head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(" · ".join(str(f) for f in facts))}</p>
<p>Hover a node for its numbers and to light its edges; click it for the full list.</p></header>
<div class="page">
<main id="cg-graph"><noscript>This page draws the graph with JavaScript.</noscript></main>
<aside id="cg-panel"><p class="hint">Click a node to see its numbers, its strongest edges
and the images where it matters most.</p></aside>
</div>
<script type="application/json" id="cg-data">{script_json(data)}</script>
<script type="module">
{bundle_modules(ENTRY)}
</script>
</body></html>
"""


def export_graph_html(
    graph: ClassGraph | dict, path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Write ``graph`` as one self-contained HTML file and return its path.

    Parameters
    ----------
    graph : ClassGraph or dict
        A graph from :func:`~cnnscope.graph.class_graph`, or its ``to_dict()``.
    path : path
        The HTML file to write (replaced atomically; its folder must exist).
    title : str, optional
        The page's title (default: ``cnnscope class graph: LABEL``).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from cnnscope.graph import GraphEdge, GraphNode
    >>> nodes = [GraphNode("logits", 3, 1.5), GraphNode("conv", 0, 0.5, 0.2, 2)]
    >>> g = ClassGraph(3, "cat", 2, ["logits", "conv"], nodes,
    ...                [GraphEdge("conv:0", "logits:3", 0.5, 2)], {"units_per_layer": 1})
    >>> out = export_graph_html(g, Path(tempfile.mkdtemp()) / "cat.html")
    >>> out.name, "<link" in out.read_text()
    ('cat.html', False)
    """
    path = Path(path)
    page = graph_html(graph, title)
    if not path.parent.is_dir():
        raise CnnscopeError(f"cannot write {path}: folder {path.parent} not found")
    try:
        atomic_write(path, page.encode("utf-8"))
    except OSError as exc:
        raise CnnscopeError(f"cannot write {path}: {exc.strerror or exc}") from None
    log.info("class graph page written to %s", path)
    return path
