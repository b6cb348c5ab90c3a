"""``/api/images/{id}/children|parents|faithfulness|reconstruction.png``: the neuron tree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from fastapi import APIRouter, Depends, Query, Response

from ...tree import Node
from ...tree.options import DEFAULT_GAIN, DEFAULT_SCORING
from ..refs import ImageRef, TreePathRef, UnitRef
from ..schemas import ChildrenOut, FaithfulnessOut, Gain, NodeOut, ParentsOut, Rule, Scoring, Sign
from ..service import ExplorerService
from ..services.models import DEFAULTS
from .deps import (
    ERRORS,
    checked_model,
    image_ref,
    recon_url,
    service,
    tree_path_ref,
    unit_query_ref,
)
from .images import CACHE, PNG

router = APIRouter(prefix="/api/images", tags=["tree"], responses=ERRORS)

# The defaults are the library's, as /api/vocabulary serves them (defaults).
K = Query(DEFAULTS["k"], ge=1, le=16, description="how many children")
RULE = Query(DEFAULTS["rule"], description="backward rule: see /api/vocabulary rules")
SCORING = Query(DEFAULTS["scoring"], description="how children are ranked: see scorings")
GAIN = Query(DEFAULTS["gain"], description="gain of each deeper node: see gains")
SIGN = Query(DEFAULTS["sign"], description="which children: see signs")


@dataclass
class Expansion:
    """How a node is expanded (query parameters shared by children and faithfulness)."""

    k: int = K
    rule: Rule = RULE
    scoring: Scoring = SCORING
    gain: Gain = GAIN
    sign: Sign = SIGN


def node_out(
    svc: ExplorerService,
    image: ImageRef,
    node: Node,
    rule: str,
    gain: str,
    model: str,
    alone: bool = False,
    scoring: str = DEFAULT_SCORING,
) -> NodeOut:
    """A tree node as JSON; ``alone``: its reconstruction as a root rather than along its path."""
    recon = TreePathRef.of(node.path[:1] if alone else node.path).text
    url = recon_url(image.id, recon, rule, gain, model)
    if scoring == "seed" and not alone:  # seed scoring's nodes have seeds of their own
        url += "&scoring=seed"
    if alone:  # a drill-up list's small picture: a low unit's few pixels, zoomed
        url += "&crop=support"
    label = svc.model.label(node.unit.channel) if svc.is_class_layer(node.unit.layer) else None
    return NodeOut.of(node, label=label, reconstruction=url)


@router.get("/{image_id}/children", response_model=ChildrenOut, summary="Expand a node")
async def children(
    model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    path: TreePathRef = Depends(tree_path_ref),
    how: Expansion = Depends(),
    svc: ExplorerService = Depends(service),
) -> ChildrenOut:
    """The top-``k`` units of the next lower chain layer that feed the last unit of ``path``.

    Scores are ``mean over positions of A_c * G_c`` with ``G`` the path-conditioned
    gradient (``scoring=path``), the node's own (``scoring=local``), or cnn_treevis's
    ``|mean(A_c * G_c)|`` with ``G`` taken through the child's rule (``scoring=seed``).
    ``share`` is a child's part of its parent's evidence of the same sign. Their
    reconstructions are queued at once, so the URLs given here are fast to fetch.
    Without children, ``reason`` says why (the bottom of the chain, or no unit of the
    sign asked for).
    """
    found = await svc.tree.children(image, path, **asdict(how))
    nodes = found.nodes
    return ChildrenOut(
        image=image.id,
        path=path.text,
        layer=nodes[0].unit.layer if nodes else svc.chain_below(path.last.layer),
        **asdict(how),
        children=[
            node_out(svc, image, n, how.rule, how.gain, model, scoring=how.scoring) for n in nodes
        ],
        reason=found.reason,
    )


@router.get("/{image_id}/parents", response_model=ParentsOut, summary="Drill up from a unit")
async def parents(
    model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    unit: UnitRef = Depends(unit_query_ref),
    k: int = K,
    rule: Rule = RULE,
    svc: ExplorerService = Depends(service),
) -> ParentsOut:
    """The units of the chain layer above ``unit`` that it feeds most.

    Each parent's ``path`` is ``PARENT/UNIT`` (re-rooting there keeps ``unit`` in view);
    its ``reconstruction`` is the parent's own, as a root.
    """
    nodes = await svc.tree.parents(image, unit, k=k, rule=rule)
    return ParentsOut(
        image=image.id,
        unit=str(unit),
        layer=nodes[0].unit.layer if nodes else svc.chain_above(unit.layer),
        parents=[node_out(svc, image, n, rule, DEFAULT_GAIN, model, alone=True) for n in nodes],
    )


@router.get("/{image_id}/faithfulness", response_model=FaithfulnessOut, summary="Edge faithfulness")
async def faithfulness(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    path: TreePathRef = Depends(tree_path_ref),
    how: Expansion = Depends(),
    svc: ExplorerService = Depends(service),
) -> FaithfulnessOut:
    """Zero the node's shown children and measure the node's drop, against random channels."""
    result = await svc.tree.faithfulness(image, path, **asdict(how))
    return FaithfulnessOut(image=image.id, path=path.text, **result)


@router.get("/{image_id}/reconstruction.png", responses=PNG, summary="A node's reconstruction")
async def reconstruction(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    path: TreePathRef = Depends(tree_path_ref),
    rule: Rule = RULE,
    gain: Gain = GAIN,
    crop: Literal["none", "support", "focus"] = Query(
        "none",
        description="support: zoom on the pixels the gradient reaches; "
        "focus: on the cells where the node carries its evidence",
    ),
    scoring: Scoring = Query(DEFAULTS["scoring"], description="seed: the seed of a node scored so"),
    svc: ExplorerService = Depends(service),
) -> Response:
    """The path-conditioned reconstruction of the last unit of ``path``, as PNG.

    Requests for the same image, rule and gain that arrive within a few milliseconds are
    answered by one batched backward.
    """
    png = await svc.tree.reconstruction(image, path, rule, gain, crop, scoring)
    return Response(png, media_type="image/png", headers=CACHE)
