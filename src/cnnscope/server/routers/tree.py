"""``/api/images/{id}/children|parents|faithfulness|reconstruction.png``: the neuron tree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from fastapi import APIRouter, Depends, Query, Response

from ..schemas import ChildrenOut, FaithfulnessOut, Gain, NodeOut, ParentsOut, Rule, Scoring, Sign
from ..service import ExplorerService
from .deps import ERRORS, PATH_PATTERN, UNIT_PATTERN, checked_model, recon_url, service
from .images import CACHE, PNG, ImageId

router = APIRouter(prefix="/api/images", tags=["tree"], responses=ERRORS)

PathQuery = Query(
    ...,
    min_length=1,
    max_length=2000,
    description="tree path, root first, units joined by '/' (a layer's call K is written ~K)",
    examples=["logits:285/head_act:254"],
    json_schema_extra={"pattern": PATH_PATTERN},
)
K = Query(5, ge=1, le=16, description="how many children")
RULE = Query("guided", description="backward rule: gradient, deconvnet, guided or guided_neg")
SCORING = Query(
    "path",
    description="path: conditioned on the path (default); local: own max; "
    "seed: cnn_treevis's formula (G after the child's rule, |mean(A*G)|)",
)
GAIN = Query("auto", description="gain of each deeper node: auto (L1 mass), fixed or none")
SIGN = Query(
    "pos",
    description="pos: children with the rule's polarity (what it passes); neg: against it",
)


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
    image_id: str,
    node: dict,
    rule: str,
    gain: str,
    model: str,
    alone: bool = False,
    scoring: str = "path",
) -> NodeOut:
    """A node as JSON; ``alone``: its reconstruction as a root rather than along its path."""
    label = svc.model.label(node["channel"]) if svc.is_class_layer(node["layer"]) else None
    recon = node["path"].split("/")[0] if alone else node["path"]
    url = recon_url(image_id, recon, rule, gain, model)
    if scoring == "seed" and not alone:  # seed scoring's nodes have seeds of their own
        url += "&scoring=seed"
    if alone:  # a drill-up list's small picture: a low unit's few pixels, zoomed
        url += "&crop=support"
    return NodeOut(**node, label=label, reconstruction=url)


@router.get("/{image_id}/children", response_model=ChildrenOut, summary="Expand a node")
async def children(
    image_id: str = ImageId,
    path: str = PathQuery,
    how: Expansion = Depends(),
    svc: ExplorerService = Depends(service),
    model: str = Depends(checked_model),
) -> ChildrenOut:
    """The top-``k`` units of the next lower chain layer that feed the last unit of ``path``.

    Scores are ``mean over positions of A_c * G_c`` with ``G`` the path-conditioned
    gradient (``scoring=path``), the node's own (``scoring=local``), or cnn_treevis's
    ``|mean(A_c * G_c)|`` with ``G`` taken through the child's rule (``scoring=seed``).
    ``share`` is a child's part of its parent's evidence of the same sign. Their
    reconstructions are queued at once, so the URLs given here are fast to fetch.
    """
    nodes = await svc.children(image_id, path, **asdict(how))
    units, canonical = svc.check_path(path)
    return ChildrenOut(
        image=image_id,
        path=canonical,
        layer=nodes[0]["layer"] if nodes else svc.chain_below(units[-1].layer),
        **asdict(how),
        children=[
            node_out(svc, image_id, n, how.rule, how.gain, model, scoring=how.scoring)
            for n in nodes
        ],
    )


@router.get("/{image_id}/parents", response_model=ParentsOut, summary="Drill up from a unit")
async def parents(
    image_id: str = ImageId,
    unit: str = Query(
        ...,
        min_length=3,
        max_length=200,
        description="LAYER:CHANNEL",
        examples=["blocks.11:33"],
        json_schema_extra={"pattern": UNIT_PATTERN},
    ),
    k: int = K,
    rule: Rule = RULE,
    svc: ExplorerService = Depends(service),
    model: str = Depends(checked_model),
) -> ParentsOut:
    """The units of the chain layer above ``unit`` that it feeds most.

    Each parent's ``path`` is ``PARENT/UNIT`` (re-rooting there keeps ``unit`` in view);
    its ``reconstruction`` is the parent's own, as a root.
    """
    nodes = await svc.parents(image_id, unit, k=k, rule=rule)
    parsed = svc.check_unit(unit)
    return ParentsOut(
        image=image_id,
        unit=str(parsed),
        layer=nodes[0]["layer"] if nodes else svc.chain_above(parsed.layer),
        parents=[node_out(svc, image_id, n, rule, "auto", model, alone=True) for n in nodes],
    )


@router.get("/{image_id}/faithfulness", response_model=FaithfulnessOut, summary="Edge faithfulness")
async def faithfulness(
    image_id: str = ImageId,
    path: str = PathQuery,
    how: Expansion = Depends(),
    svc: ExplorerService = Depends(service),
    _model: str = Depends(checked_model),
) -> FaithfulnessOut:
    """Zero the node's shown children and measure the node's drop, against random channels."""
    result = await svc.faithfulness(image_id, path, **asdict(how))
    _, canonical = svc.check_path(path)
    return FaithfulnessOut(image=image_id, path=canonical, **result)


@router.get("/{image_id}/reconstruction.png", responses=PNG, summary="A node's reconstruction")
async def reconstruction(
    image_id: str = ImageId,
    path: str = PathQuery,
    rule: Rule = RULE,
    gain: Gain = GAIN,
    crop: Literal["none", "support", "focus"] = Query(
        "none",
        description="support: zoom on the pixels the gradient reaches; "
        "focus: on the cells where the node carries its evidence",
    ),
    scoring: Scoring = Query("path", description="seed: the seed of a node scored so"),
    svc: ExplorerService = Depends(service),
    _model: str = Depends(checked_model),
) -> Response:
    """The path-conditioned reconstruction of the last unit of ``path``, as PNG.

    Requests for the same image, rule and gain that arrive within a few milliseconds are
    answered by one batched backward.
    """
    png = await svc.reconstruction(image_id, path, rule, gain, crop, scoring)
    return Response(png, media_type="image/png", headers=CACHE)
