"""The HTML pages: one shell that the JavaScript modules fill in (not part of the API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

#: Every page's URL; ``static/js/main.js`` routes them to their module.
PAGES = (
    "/",
    "/images/{image_id}",
    "/images/{image_id}/tree",
    "/images/{image_id}/layers",
    "/units/{unit}",
)


def shell(request: Request, status_code: int = 200) -> HTMLResponse:
    """The page shell; the route is read by ``static/js/main.js``."""
    return HTMLResponse(
        request.app.state.shell, status_code=status_code, headers={"Cache-Control": "no-cache"}
    )


def page(request: Request) -> HTMLResponse:
    """Any page: the shell (the path parameters are read by the front end)."""
    return shell(request)


for _url in PAGES:
    router.add_api_route(_url, page, methods=["GET"], response_class=HTMLResponse)
