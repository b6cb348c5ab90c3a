"""The HTML pages: one shell that the JavaScript modules fill in (not part of the API).

:data:`PAGES` names every page and its URL; the routes are made from it, and
``/api/vocabulary`` serves them back from the routes (:func:`page_urls`), so that the
front end builds its links from the server's own list.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from ...vocabulary import url_form

router = APIRouter(include_in_schema=False)

#: Every page: its name and URL (placeholders in braces); ``static/js/main.js`` routes them.
PAGES: dict[str, str] = {
    "gallery": "/",
    "image": "/images/{image}",
    "tree": "/images/{image}/tree",
    "layers": "/images/{image}/layers",
    "unit": "/units/{unit}",
    "graph": "/classes/{class}",
}


def shell(request: Request, status_code: int = 200) -> HTMLResponse:
    """The page shell; the route is read by ``static/js/main.js``."""
    return HTMLResponse(
        request.app.state.shell, status_code=status_code, headers={"Cache-Control": "no-cache"}
    )


def page(request: Request) -> HTMLResponse:
    """Any page: the shell (the path parameters are read by the front end)."""
    return shell(request)


for _name, _url in PAGES.items():
    router.add_api_route(_url, page, methods=["GET"], name=_name, response_class=HTMLResponse)


def page_urls() -> dict[str, str]:
    """``{page name: URL template}`` of every page route, read from the routes.

    Examples
    --------
    >>> page_urls()["tree"]
    '/images/{image}/tree'
    """
    return {route.name: route.path for route in router.routes if isinstance(route, APIRoute)}


def page_url(name: str, **fill: object) -> str:
    """The URL of page ``name`` with its placeholders filled (a unit in its URL form).

    Examples
    --------
    >>> page_url("unit", unit="blocks.1:3#2"), page_url("graph", **{"class": 281})
    ('/units/blocks.1:3~2', '/classes/281')
    """

    def value(key: str, text: object) -> str:
        return (
            quote(url_form(str(text)), safe=":@,~") if key == "unit" else quote(str(text), safe="")
        )

    url = PAGES[name]
    for key, text in fill.items():
        url = url.replace("{" + key + "}", value(key, text))
    return url
