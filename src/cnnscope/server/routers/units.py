"""``/api/units/{unit}``: what a unit is, and the slots for dataset examples and synthesis."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Path, Response

from ..refs import UnitRef
from ..schemas import ExampleOpenOut, ExampleOut, UnitOut, VisualizationOut
from ..service import ExplorerService
from .deps import ERRORS, checked_model, service, unit_path_ref, unit_url
from .images import CACHE, PNG

router = APIRouter(prefix="/api/units", tags=["units"], responses=ERRORS)

RankPath = Path(..., ge=1, le=100_000, description="1 for the strongest example", examples=[1])


@router.get("/{unit}", response_model=UnitOut, summary="One unit")
def unit_info(
    _model: str = Depends(checked_model),
    unit: UnitRef = Depends(unit_path_ref),
    svc: ExplorerService = Depends(service),
) -> UnitOut:
    """Layer, shape, receptive field and neighbours in the chain of a unit."""
    info = unit.info
    name = str(unit)
    return UnitOut(
        unit=name,
        layer=info.name,
        channel=unit.channel,
        kind=info.kind,
        shape=list(info.shape),
        label=svc.model.label(unit.channel) if svc.is_class_layer(info.name) else None,
        rf_size=[int(v) for v in info.field.size] if info.field else None,
        in_chain=info.name in svc.chain,
        layer_below=svc.chain_below(info.name),
        layer_above=svc.chain_above(info.name),
        examples=unit_url(name, "examples.png"),
        visualization=unit_url(name, "visualization.png"),
    )


@router.get("/{unit}/examples.png", responses=PNG, summary="Dataset examples of a unit")
async def examples(
    unit: UnitRef = Depends(unit_path_ref), svc: ExplorerService = Depends(service)
) -> Response:
    """The unit's top dataset patches; ``404 no index`` until the server has an index."""
    return Response(await svc.units.examples(unit), media_type="image/png", headers=CACHE)


@router.get(
    "/{unit}/examples", response_model=list[ExampleOut], summary="Dataset examples, one by one"
)
async def example_list(
    unit: UnitRef = Depends(unit_path_ref), svc: ExplorerService = Depends(service)
) -> list[ExampleOut]:
    """The unit's top dataset examples, strongest first: image, position, activation, and
    the URLs of its receptive-field patch and of its ``open`` action.

    ``404`` while there is no index (or it is being built) and for a layer it lacks.
    """
    out = []
    for ex in await svc.units.example_list(unit):
        channel = ex["unit"].split("@")[0]  # LAYER:CHANNEL, without the position
        out.append(
            ExampleOut(
                **ex,
                patch=unit_url(channel, f"examples/{ex['rank']}.png"),
                open=unit_url(channel, f"examples/{ex['rank']}/open"),
            )
        )
    return out


@router.get(
    "/{unit}/examples/{rank}.png", responses=PNG, summary="Receptive-field patch of an example"
)
async def example_patch(
    unit: UnitRef = Depends(unit_path_ref),
    rank: int = RankPath,
    svc: ExplorerService = Depends(service),
) -> Response:
    """The example image (as the model saw it) cut to the unit's receptive field at the
    example's position, clipped to the image; small fields scaled up by whole pixels."""
    return Response(
        await svc.units.example_patch(unit, rank), media_type="image/png", headers=CACHE
    )


@router.post(
    "/{unit}/examples/{rank}/open",
    response_model=ExampleOpenOut,
    summary="Open an example's image in the explorer",
)
async def open_example(
    unit: UnitRef = Depends(unit_path_ref),
    rank: int = RankPath,
    svc: ExplorerService = Depends(service),
    model: str = Depends(checked_model),
) -> ExampleOpenOut:
    """Store the example image (augmentation applied) like an upload (content-hash id) and
    answer the URL of its tree rooted at the unit at the example's position."""
    opened = await svc.units.open_example(unit, rank)
    params = urlencode({"model": model, "path": opened["path"]}, safe=":@,~")
    return ExampleOpenOut(
        image=opened["image"],
        name=opened["name"],
        created=opened["created"],
        unit=opened["unit"],
        tree=f"/images/{quote(opened['image'], safe='')}/tree?{params}",
    )


@router.get("/{unit}/visualization.png", responses=PNG, summary="Feature visualization of a unit")
async def visualization(
    unit: UnitRef = Depends(unit_path_ref), svc: ExplorerService = Depends(service)
) -> Response:
    """A synthesized image that excites the unit; ``404 not computed yet`` until rendered.

    Start the rendering with ``POST /api/units/{unit}/visualization``.
    """
    return Response(await svc.units.visualization(unit), media_type="image/png", headers=CACHE)


def _vis_out(state: dict) -> VisualizationOut:
    return VisualizationOut(**state, image=unit_url(state["unit"], "visualization.png"))


@router.get(
    "/{unit}/visualization", response_model=VisualizationOut, summary="Feature visualization state"
)
def visualization_state(
    unit: UnitRef = Depends(unit_path_ref), svc: ExplorerService = Depends(service)
) -> VisualizationOut:
    """Whether the unit's feature visualization is rendered, rendering (with progress) or not."""
    return _vis_out(svc.units.visualization_state(unit))


@router.post(
    "/{unit}/visualization",
    response_model=VisualizationOut,
    status_code=202,
    summary="Render a feature visualization",
)
def start_visualization(
    unit: UnitRef = Depends(unit_path_ref), svc: ExplorerService = Depends(service)
) -> VisualizationOut:
    """Queue the rendering in the background (once; cached in the data directory).

    It runs on the background lane, with its own copy of the model, so requests are not
    held meanwhile. At most 8 renderings wait (a new one drops the oldest), and one that
    nobody polls for 20 s is dropped (``state: none``, with the reason in ``detail``).
    Poll the state, then fetch the PNG.
    """
    return _vis_out(svc.units.start_visualization(unit))
