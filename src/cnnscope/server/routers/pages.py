"""The HTML pages: one shell that the JavaScript modules fill in (not part of the API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


def shell(request: Request, status_code: int = 200) -> HTMLResponse:
    """The page shell; the route is read by ``static/js/main.js``."""
    return HTMLResponse(
        request.app.state.shell, status_code=status_code, headers={"Cache-Control": "no-cache"}
    )


@router.get("/", response_class=HTMLResponse)
def gallery_page(request: Request) -> HTMLResponse:
    return shell(request)


@router.get("/images/{image_id}", response_class=HTMLResponse)
def image_page(request: Request, image_id: str) -> HTMLResponse:
    return shell(request)


@router.get("/images/{image_id}/tree", response_class=HTMLResponse)
def tree_page(request: Request, image_id: str) -> HTMLResponse:
    return shell(request)


@router.get("/units/{unit}", response_class=HTMLResponse)
def unit_page(request: Request, unit: str) -> HTMLResponse:
    return shell(request)


@router.get("/images/{image_id}/layers", response_class=HTMLResponse)
def layers_page(request: Request, image_id: str) -> HTMLResponse:
    return shell(request)
