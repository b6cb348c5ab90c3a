"""Shared route dependencies and URL builders."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import Query, Request

from ..schemas import ErrorOut
from ..service import ExplorerService
from ..store import NotFoundError

#: Responses every route may give, for the OpenAPI schema.
ERRORS = {
    400: {"model": ErrorOut, "description": "malformed request"},
    404: {"model": ErrorOut, "description": "unknown image, layer, unit, path or model"},
}


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
