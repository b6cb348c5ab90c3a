"""Shared route dependencies and URL builders."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import Query, Request

from ...tree.paths import _MAX_DEPTH
from ..schemas import ErrorOut
from ..service import ExplorerService
from ..store import NotFoundError

_HOST = "a Host this server does not answer to"

#: Responses of every API route: the guard of app.py gives them before any route runs.
GUARDED = {
    400: {"model": ErrorOut, "description": _HOST},
    403: {"model": ErrorOut, "description": "a cross-origin request (Origin, Sec-Fetch-Site)"},
}

#: Responses every route with parameters may give, for the OpenAPI schema.
ERRORS = {
    **GUARDED,
    400: {
        "model": ErrorOut,
        "description": f"malformed request (e.g. a path not down the chain), or {_HOST}",
    },
    404: {"model": ErrorOut, "description": "unknown image, layer, unit, path or model"},
}

# What the routes accept, as the schema says (the service answers 400 to anything else):
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


def image_url(image_id: str, what: str, **params) -> str:
    """``/api/images/{id}/{what}?params`` with values URL-encoded."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"/api/images/{quote(image_id, safe='')}/{what}" + (f"?{query}" if query else "")


def recon_url(image_id: str, path: str, rule: str, gain: str, model: str) -> str:
    """URL of a reconstruction PNG."""
    return image_url(image_id, "reconstruction.png", path=path, rule=rule, gain=gain, model=model)


def unit_url(unit: str, what: str) -> str:
    """``/api/units/{unit}/{what}``."""
    return f"/api/units/{quote(unit.replace('#', '~'), safe=':@,~')}/{what}"
