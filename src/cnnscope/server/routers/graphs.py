"""``/api/graphs``: class-level attribution graphs (:mod:`cnnscope.graph`), served and built.

The graphs are the folders of ``cnnscope serve --graphs DIR``; ``POST`` builds one over
the explorer's images on the background lane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Response

from ...errors import CnnscopeError
from ...graph.export import graph_html
from ...render.files import safe_file_name
from ..refs import ClassRef, TreePathRef
from ..schemas import GraphBuildOut, GraphOpenOut, GraphOut, GraphsOut, GraphSummaryOut
from ..service import ExplorerService
from .deps import ERRORS, checked_model, class_ref, image_url, service, tree_path_ref, unit_url
from .pages import page_url

router = APIRouter(prefix="/api/graphs", tags=["graphs"], responses=ERRORS)


@dataclass(frozen=True)
class Pruning:
    """How a graph is pruned (:func:`cnnscope.graph.class_graph`'s settings)."""

    units: int
    edges: int
    min_share: float

    @property
    def query(self) -> str:
        return urlencode({"units": self.units, "edges": self.edges, "min_share": self.min_share})


def pruning(
    units: int = Query(6, ge=1, le=64, description="nodes kept per layer (largest importance)"),
    edges: int = Query(3, ge=1, le=32, description="edges kept per node into the layer below"),
    min_share: float = Query(
        0.05,
        ge=0,
        lt=1,
        description="smallest edge kept, as a share of the strongest edge between kept nodes "
        "of the same two layers",
    ),
) -> Pruning:
    """The pruning of ``?units=&edges=&min_share=`` (422 out of bounds)."""
    return Pruning(units, edges, min_share)


def _summary(entry: dict) -> GraphSummaryOut:
    return GraphSummaryOut(**entry, page=page_url("graph", **{"class": entry["index"]}))


@router.get("", response_model=GraphsOut, summary="The classes that have a graph")
def graphs(svc: ExplorerService = Depends(service)) -> GraphsOut:
    """The graph folders of ``--graphs`` made with this model, one per class (the folder
    with most images when a class has several); bad folders are skipped."""
    return GraphsOut(
        folder=str(svc.graphs.dir), classes=[_summary(e) for e in svc.graphs.available()]
    )


def _graph(svc: ExplorerService, cls: ClassRef, prune: Pruning):
    data = svc.graphs.graph(cls, prune.units, prune.edges, prune.min_share)
    model = svc.model.name
    class_node = f"logits:{cls.index}"
    for node in data["nodes"]:
        node["page"] = page_url("unit", unit=node["id"])
        vis = _rendered_visualization(svc, node["id"])
        if vis is not None:
            node["visualization"] = vis
        spatial = (
            len(svc.layers[node["layer"]].shape) == 3 if node["layer"] in svc.layers else False
        )
        for ex in node["examples"]:
            ex["path"] = node["id"]
            if node["id"] != class_node and spatial:
                ex["path"] += "@{},{}".format(*ex["position"])
            if ex.get("image_id") is not None:
                ex["tree"] = _tree_page(ex["image_id"], ex["path"], model)
                ex["thumbnail"] = image_url(ex["image_id"], "thumbnail.jpg")
    return data


def _rendered_visualization(svc: ExplorerService, unit: str) -> str | None:
    """URL of a unit's feature visualization if it is already rendered (never starts one)."""
    try:
        ref = svc.refs.unit(unit)
    except CnnscopeError:  # a node the explorer cannot name as a unit
        return None
    if svc.units.visualization_state(ref)["state"] != "done":
        return None
    return unit_url(str(ref.unit), "visualization.png")


def _tree_page(image_id: str, path: str, model: str) -> str:
    params = urlencode({"model": model, "path": path}, safe=":@,~")
    return page_url("tree", image=image_id) + f"?{params}"


@router.get("/{class}", response_model=GraphOut, summary="The attribution graph of a class")
def class_graph(
    cls: ClassRef = Depends(class_ref),
    prune: Pruning = Depends(pruning),
    svc: ExplorerService = Depends(service),
) -> GraphOut:
    """Top units per layer and their strongest edges (``ClassGraph.to_dict()``), each
    example image with its tree page when the explorer has the image; ``404`` until the
    class has a graph (``POST`` builds one)."""
    data = _graph(svc, cls, prune)
    data["source"] = _summary({**data["source"], "index": cls.index, "label": cls.label})
    data["export"] = f"/api/graphs/{cls.index}/export.html?{prune.query}"
    return GraphOut.model_validate(data)


@router.get(
    "/{class}/export.html",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the page, as a download"}},
    summary="The static HTML export of a class graph",
)
def export(
    cls: ClassRef = Depends(class_ref),
    prune: Pruning = Depends(pruning),
    svc: ExplorerService = Depends(service),
) -> Response:
    """One self-contained HTML file (``cnnscope.graph.export``), offline, as an attachment."""
    data = svc.graphs.graph(cls, prune.units, prune.edges, prune.min_share)
    name = safe_file_name(f"class-graph-{cls.index}-{cls.label.split(',')[0]}", "graph") + ".html"
    return Response(
        graph_html(data, title=f"class graph of {cls.label}"),
        media_type="text/html; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/{class}/examples/open",
    response_model=GraphOpenOut,
    summary="Open an example image of a class graph in the explorer",
)
def open_example(
    cls: ClassRef = Depends(class_ref),
    image: str = Query(
        ..., min_length=1, max_length=1000, description="the example's image, as the graph names it"
    ),
    path: TreePathRef = Depends(tree_path_ref),
    model: str = Depends(checked_model),
    svc: ExplorerService = Depends(service),
) -> GraphOpenOut:
    """Store an image of the graph's folder like an upload (content-hash id) and answer
    the URL of its tree rooted at ``path`` (the example's ``path``). Only images the graph
    summed can be opened; ``404`` for any other."""
    record, created = svc.graphs.open_example(cls, image)
    return GraphOpenOut(
        image=record.id, created=created, tree=_tree_page(record.id, path.text, model)
    )


def _build_out(state: dict) -> GraphBuildOut:
    return GraphBuildOut(**state, graph=f"/api/graphs/{state['index']}")


@router.get("/{class}/build", response_model=GraphBuildOut, summary="State of a graph build")
def build_state(
    cls: ClassRef = Depends(class_ref), svc: ExplorerService = Depends(service)
) -> GraphBuildOut:
    """Whether the explorer is building the class's graph, with progress in images."""
    return _build_out(svc.graphs.build_state(cls))


@router.post(
    "/{class}",
    response_model=GraphBuildOut,
    status_code=202,
    summary="Build the graph of a class over the explorer's images",
)
def start_build(
    cls: ClassRef = Depends(class_ref),
    select: Literal["all", "predicted"] = Query(
        "all", description="sum every image, or only those predicted as the class"
    ),
    _model: str = Depends(checked_model),
    svc: ExplorerService = Depends(service),
) -> GraphBuildOut:
    """Queue the pass (:func:`cnnscope.graph.build_graph`) on the background lane over the
    gallery's images and uploads (or the dataset index's source folder, if it has one);
    a rebuild adds only new images. Poll ``GET /api/graphs/{class}/build``."""
    return _build_out(svc.graphs.start(cls, select))
