"""Shared route dependencies: every argument a request names is checked here, once.

Each dependency turns the text of one parameter into a reference of
:mod:`cnnscope.server.refs` (an image, a unit, a tree path, a layer, a method) with the
app's :class:`~cnnscope.server.refs.References`; routes pass the references to their
service, which never checks them again. FastAPI runs a dependency once per request,
however many others use it. The URL builders are here too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Path, Query, Request

from ...attribution import Method
from ...tree.paths import _MAX_DEPTH
from ...vocabulary import url_form
from ..refs import ClassRef, ImageRef, LayerRef, References, TreePathRef, UnitRef
from ..schemas import ErrorOut
from ..service import ExplorerService
from ..services.models import DEFAULTS
from ..store import ID_PATTERN, NotFoundError

_HOST = "a Host this server does not answer to"

#: An OpenAPI ``responses`` table: status -> its model and description.
Responses = dict[int | str, dict[str, Any]]

#: Responses of every API route: the guard of app.py gives them before any route runs.
GUARDED: Responses = {
    400: {"model": ErrorOut, "description": _HOST},
    403: {"model": ErrorOut, "description": "a cross-origin request (Origin, Sec-Fetch-Site)"},
}

#: Responses every route with parameters may give, for the OpenAPI schema.
ERRORS: Responses = {
    **GUARDED,
    400: {
        "model": ErrorOut,
        "description": f"malformed request (e.g. a path not down the chain), or {_HOST}",
    },
    404: {"model": ErrorOut, "description": "unknown image, layer, unit, path or model"},
}

# What the routes accept, as the schema says (the references answer 400 to anything else):
# layer names as PyTorch writes them (a layer's call K written ~K), units LAYER:CHANNEL
# with an optional @Y,X, tree paths of units joined by '/' (a position on the root only).
_LAYER = r"[A-Za-z0-9_.~-]+"
_CHANNEL = rf"{_LAYER}:[0-9]+"
LAYER_PATTERN = rf"^{_LAYER}$"
UNIT_PATTERN = rf"^{_CHANNEL}(?:@[0-9]+,[0-9]+)?$"
PATH_PATTERN = rf"^{_CHANNEL}(?:@[0-9]+,[0-9]+)?(?:/{_CHANNEL}){{0,{_MAX_DEPTH - 1}}}$"


def service(request: Request) -> ExplorerService:
    """The app's service (one per app; it holds no per-user state)."""
    return request.app.state.service


def references(request: Request) -> References:
    """The app's checks of what requests name."""
    return request.app.state.service.refs


def checked_model(
    request: Request,
    model: str | None = Query(
        None,
        max_length=200,
        description="model the link was made for; must be the one this server runs",
    ),
) -> str:
    """The served model's name; a link made for another model is a 404."""
    name = request.app.state.service.model.name
    if model is not None and model != name:
        raise NotFoundError(
            f"this server runs model {name!r}, not {model[:80]!r}: "
            "restart it with --model to explore that one"
        )
    return name


# -- references: one dependency per kind of argument ---------------------------------------


def image_ref(
    image_id: str = Path(
        ...,
        max_length=64,
        description="image id from /api/images",
        examples=["chelsea"],
        json_schema_extra={"pattern": ID_PATTERN},  # checked by the store: 400 otherwise
    ),
    refs: References = Depends(references),
) -> ImageRef:
    """The image of the ``{image_id}`` in the URL (404 if unknown)."""
    return refs.image(image_id)


def tree_path_ref(
    path: str = Query(
        ...,
        min_length=1,
        max_length=2000,
        description="tree path, root first, units joined by '/' (a layer's call K is written ~K)",
        examples=["logits:285/head_act:254"],
        json_schema_extra={"pattern": PATH_PATTERN},
    ),
    refs: References = Depends(references),
) -> TreePathRef:
    """The tree path of ``?path=``."""
    return refs.path(path)


def _name(where, description: str, example: str, pattern: str, min_length: int = 1):
    """A required ``Query``/``Path`` name parameter: bounded length, the schema's pattern."""
    return where(
        ...,
        min_length=min_length,
        max_length=200,
        description=description,
        examples=[example],
        json_schema_extra={"pattern": pattern},
    )


def _unit_query(description: str, example: str, min_length: int = 1):
    return _name(Query, description, example, UNIT_PATTERN, min_length)


def unit_query_ref(
    unit: str = _unit_query("LAYER:CHANNEL", "blocks.11:33", min_length=3),
    refs: References = Depends(references),
) -> UnitRef:
    """The unit of ``?unit=``."""
    return refs.unit(unit)


def map_unit_query_ref(
    unit: str = _unit_query("LAYER:CHANNEL", "blocks.15:120"),
    refs: References = Depends(references),
) -> UnitRef:
    """The unit of ``?unit=``, of a layer with spatial maps (400 otherwise)."""
    return refs.map_unit(unit)


def unit_path_ref(
    unit: str = _name(
        Path, "LAYER:CHANNEL (a layer's call K is written ~K)", "blocks.15:120", UNIT_PATTERN, 3
    ),
    refs: References = Depends(references),
) -> UnitRef:
    """The unit of ``/api/units/{unit}``."""
    return refs.unit(unit)


def maps_layer_ref(
    layer: str = _name(
        Path, "layer name (a layer's call K is written ~K)", "blocks.5.expand_act", LAYER_PATTERN
    ),
    refs: References = Depends(references),
) -> LayerRef:
    """The layer of ``.../layers/{layer}/...``: one with ``C x H x W`` maps."""
    return refs.maps_layer(layer)


def cam_layer_ref(
    layer: str | None = Query(
        None,
        max_length=200,
        description="layer for CAM methods",
        json_schema_extra={"pattern": LAYER_PATTERN},
    ),
    refs: References = Depends(references),
) -> LayerRef | None:
    """The layer of ``?layer=`` (a CAM method's), or ``None``."""
    return refs.layer(layer) if layer else None


def class_ref(
    class_name: str = Path(
        ...,
        alias="class",
        min_length=1,
        max_length=200,
        description="class index or name (a label, one of its synonyms or a unique prefix)",
        examples=["281", "tabby"],
    ),
    refs: References = Depends(references),
) -> ClassRef:
    """The class of ``{class}`` (404 with close names if unknown, 400 if ambiguous)."""
    return refs.class_ref(class_name)


def method_ref(
    method: str = Query(
        DEFAULTS["method"], max_length=64, description="see /api/vocabulary methods"
    ),
    refs: References = Depends(references),
) -> Method:
    """The attribution method of ``?method=`` (aliases accepted)."""
    return refs.method(method)


def target_class(
    target: int | None = Query(
        None, ge=0, le=1_000_000, description="class index (default: top class)"
    ),
    refs: References = Depends(references),
) -> int | None:
    """The class of ``?target=`` (``None``: the top class)."""
    return refs.target(target)


# -- URL builders --------------------------------------------------------------------------


def image_url(image_id: str, what: str, **params) -> str:
    """``/api/images/{id}/{what}?params`` with values URL-encoded."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"/api/images/{quote(image_id, safe='')}/{what}" + (f"?{query}" if query else "")


def recon_url(image_id: str, path: str, rule: str, gain: str, model: str) -> str:
    """URL of a reconstruction PNG (``path`` in its text form)."""
    return image_url(image_id, "reconstruction.png", path=path, rule=rule, gain=gain, model=model)


def unit_url(unit: str, what: str) -> str:
    """``/api/units/{unit}/{what}``, the unit's call suffix in its URL form."""
    return f"/api/units/{quote(url_form(unit), safe=':@,~')}/{what}"


def layer_url(image_id: str, layer: str, what: str, **params) -> str:
    """``/api/images/{id}/layers/{layer}/{what}?params``."""
    return image_url(image_id, f"layers/{quote(url_form(layer), safe='~')}/{what}", **params)
