"""The explorer's FastAPI application.

:func:`create_app` wires one model, one image store and one
:class:`~cnnscope.server.service.ExplorerService` (which owns the worker thread) into an
app with the JSON API under ``/api``, the static front end under ``/static`` and the HTML
pages. Every user error becomes a 4xx JSON answer ``{"detail": "..."}``.

:class:`LocalGuard` keeps other web sites out (the server runs on the user's laptop while
they browse): a request must name one of the server's own host names (no DNS rebinding),
and the API answers only the server's own pages (no cross-site requests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import CnnscopeError, ImageError, UnitSpecError, UnknownLayerError
from ..models import LoadedModel, load_model
from .routers import graphs, images, models, pages, tree, units
from .routers import layers as layer_views
from .service import ExplorerService
from .store import (
    BadRequestError,
    ImageStore,
    NotFoundError,
    TooLargeError,
    UnsupportedImageError,
    UploadTimeoutError,
)

__all__ = ["LOOPBACK_HOSTS", "LocalGuard", "create_app", "default_data_dir"]

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("cnnscope.server") / "static"))

_STATUS = (
    (NotFoundError, 404),
    (UnknownLayerError, 404),
    (TooLargeError, 413),
    (UnsupportedImageError, 415),
    (UploadTimeoutError, 408),
    (BadRequestError, 400),
    (UnitSpecError, 400),
    (ImageError, 400),
)

_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


#: The host names every explorer answers to.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def default_data_dir() -> Path:
    """Where uploads go by default: ``$XDG_CACHE_HOME/cnnscope/explorer``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnscope" / "explorer"


def status_of(exc: CnnscopeError) -> int:
    """The HTTP status of a user error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def create_app(
    model: LoadedModel | str | None = None,
    *,
    gallery_dir: str | os.PathLike | None = None,
    layers: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    max_upload_mb: float = 10,
    max_data_mb: float = 1024,
    upload_timeout_s: float = 30,
    allowed_hosts: Iterable[str] = (),
    index: str | None = None,
    default_index: bool = False,
    examples_from: str | os.PathLike | None = None,
    cache_mb: float = 1024,
    results_mb: float = 128,
    window_ms: float = 4.0,
    synthesis_steps: int = 48,
    synthesis_size: int = 128,
    threads: int | None = None,
    graphs_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """Build the explorer app.

    Parameters
    ----------
    model
        A loaded model or a model spec (default: the built-in EfficientNet-Lite0).
    gallery_dir
        A folder of the user's own images, shown after the built-in ones.
    layers
        The tree's chain of layers, top first (default: the model's default chain).
    data_dir
        The only folder the server writes to (uploads); see :func:`default_data_dir`.
    max_upload_mb
        Largest accepted upload.
    max_data_mb
        Largest size of ``data_dir``; uploads that would pass it are refused (413).
    upload_timeout_s
        Longest time an upload's body may take to arrive (then 408).
    allowed_hosts
        Host names the server answers to besides :data:`LOOPBACK_HOSTS` and the address a
        request came in on (``cnnscope serve`` adds ``--host`` and ``--allow-host``);
        requests for any other ``Host`` are refused (400), against DNS rebinding.
    index
        A dataset index (``cnnscope index``) for the dataset examples of each unit.
    default_index
        Without ``index``, build the gallery's default index in the background on the
        first start (kept beside ``data_dir``'s uploads when ``data_dir`` is given, else
        where ``cnnscope index`` puts it) and use it once ready. ``cnnscope serve`` does.
    examples_from
        Without ``index``, build that index from this folder of the user's images instead
        of the gallery (``cnnscope serve --examples-from DIR``).
    cache_mb
        Memory bound of the per-image forward cache (the engine's LRU).
    results_mb
        Memory bound of the cache of finished answers (PNGs and JSON).
    window_ms
        How long the worker waits to merge concurrent requests into one batch.
    synthesis_steps, synthesis_size
        Optimisation steps and picture size of feature visualizations (rendered on
        request, cached in ``data_dir/visualizations``).
    threads
        Torch threads of the model's worker thread (default: the calling thread's). The
        server's other threads run torch single-threaded (:mod:`cnnscope.server.threads`).
    graphs_dir
        The folder of class graphs (``cnnscope graph ... --out DIR/NAME``) the class pages
        show, where the graphs the explorer builds go too (default: ``DATA_DIR/graphs``).

    Returns
    -------
    fastapi.FastAPI
        The app; run it with uvicorn (``cnnscope serve`` does).

    Examples
    --------
    >>> from fastapi.testclient import TestClient
    >>> with TestClient(create_app()) as client:  # doctest: +SKIP
    ...     client.get("/api/models").json()["current"]
    'efficientnet_lite0'
    """
    if model is None or isinstance(model, str):
        model = load_model(model or "efficientnet_lite0")
    for flag, value in (("max-upload-mb", max_upload_mb), ("max-data-mb", max_data_mb)):
        if not value > 0:
            raise CnnscopeError(f"--{flag} must be positive, got {value:g}")
    store = ImageStore(
        data_dir or default_data_dir(),
        gallery_dir,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        max_side=max(1024, 2 * max(model.preprocess_config.input_size)),
        max_data_bytes=int(max_data_mb * (1 << 20)),
    )
    service = ExplorerService(
        model,
        store,
        chain=layers,
        cache_mb=cache_mb,
        results_mb=results_mb,
        window_ms=window_ms,
        index=index,
        default_index=default_index,
        index_dir=data_dir,
        index_images=examples_from,
        synthesis_steps=synthesis_steps,
        synthesis_size=synthesis_size,
        threads=threads,
        graphs_dir=graphs_dir,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="cnnscope explorer",
        version="0.1.0",
        summary="One image's feature hierarchy as a neuron tree, for any PyTorch CNN.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their code from a CDN: not offline
        redoc_url=None,
        openapi_tags=[
            {"name": "models", "description": "the model this server runs"},
            {"name": "images", "description": "gallery, uploads, predictions, overview, maps"},
            {"name": "tree", "description": "children, parents, faithfulness, reconstructions"},
            {"name": "units", "description": "units, dataset examples, feature visualizations"},
            {"name": "layers", "description": "activation mosaics, channel orderings, 3D volumes"},
            {"name": "graphs", "description": "class-level attribution graphs, served and built"},
            {"name": "system", "description": "caches and worker"},
        ],
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented override
    app.state.service = service
    app.state.store = store
    app.state.upload_timeout_s = float(upload_timeout_s)
    app.state.shell = (STATIC / "index.html").read_text("utf-8")
    _add_error_handlers(app)
    app.add_middleware(LocalGuard, hosts=(*LOOPBACK_HOSTS, *allowed_hosts))
    app.middleware("http")(_security_headers)  # added last: it wraps the guard's answers too
    for module in (models, images, tree, units, layer_views, graphs, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the 422 answers described as they are: ``{"detail": str}``."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                answer = operation.get("responses", {}).get("422")
                if answer:
                    answer["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                    }
        app.openapi_schema = schema
    return app.openapi_schema


class LocalGuard:
    """ASGI middleware that answers only the server's own host names and pages.

    * ``Host`` must be one of ``hosts`` (any port) or the address the request came in on:
      a page of another site that rebinds its DNS name to 127.0.0.1 gets a 400.
    * A request that a browser marks as coming from another origin (an ``Origin`` other
      than the server's own, or ``Sec-Fetch-Site: cross-site`` / ``same-site``) gets a 403
      if it changes anything (any method but GET, HEAD, OPTIONS) or asks the API (every
      ``/api`` route runs the model). Pages and static files stay open to links from
      anywhere; clients that are not browsers (curl, scripts) send neither header.

    Parameters
    ----------
    app
        The ASGI app to guard.
    hosts
        The host names the server answers to, e.g. :data:`LOOPBACK_HOSTS`.

    Examples
    --------
    >>> from starlette.applications import Starlette
    >>> guarded = LocalGuard(Starlette(), hosts=LOOPBACK_HOSTS)
    >>> sorted(guarded.hosts)
    ['127.0.0.1', '::1', 'localhost']
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(_bare(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, detail = refusal
                log.info("%s %s -> %d: %s", scope["method"], scope["path"], status, detail)
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, detail)`` if the request must be refused, else ``None``."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = _host_of(host)
        server = (scope.get("server") or ("",))[0]  # the address the request came in on
        if not name or (name not in self.hosts and name != _bare(str(server))):
            return 400, (
                f"unknown host {host[:100]!r}: this server answers to "
                f"{', '.join(sorted(self.hosts))} (cnnscope serve --allow-host NAME adds one)"
            )
        path = scope["path"]
        asks_api = path == "/api" or path.startswith("/api/")
        if (asks_api or scope["method"] not in _SAFE_METHODS) and _foreign(scope, headers, host):
            return 403, (
                "cross-origin request refused: the explorer's API answers only its own pages "
                f"(Origin {headers.get('origin', 'not sent')[:100]!r}, "
                f"Sec-Fetch-Site {headers.get('sec-fetch-site', 'not sent')[:30]!r})"
            )
        return None


def _bare(name: str) -> str:
    """A host name as compared: lower case, no IPv6 brackets, no trailing dot, and an
    IPv4 address as itself (a dual-stack socket reports ``::ffff:192.168.1.5``)."""
    name = name.strip("[]").lower().rstrip(".")
    return name.removeprefix("::ffff:") if "." in name else name


def _host_of(netloc: str) -> str:
    """The host name of a ``Host`` header (``localhost:8000``, ``[::1]:8000``)."""
    name = netloc[1:].partition("]")[0] if netloc.startswith("[") else netloc.partition(":")[0]
    return _bare(name)


def _origin_of(scheme: str, netloc: str) -> str:
    """``scheme://netloc`` as a browser writes an ``Origin``: lower case, no default port."""
    netloc = netloc.lower().removesuffix(":443" if scheme == "https" else ":80")
    return f"{scheme}://{netloc}"


def _foreign(scope: Scope, headers: Headers, host: str) -> bool:
    """Whether a browser says the request comes from a page of another origin."""
    if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    scheme, _, netloc = origin.lower().partition("://")
    return _origin_of(scheme, netloc) != _origin_of(str(scope.get("scheme", "http")), host)


async def _security_headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.headers.get("content-type", "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", _CSP)
    return response


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _methods_at(request: Request) -> list[str]:
    """Every method that some route of the request's path answers."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.routes
        )
    ]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CnnscopeError)
    async def user_error(request: Request, exc: CnnscopeError) -> JSONResponse:
        status = status_of(exc)
        detail = " ".join(str(exc).split())  # one line, whatever the user sent
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        wants_page = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and wants_page and not path.startswith(("/api/", "/static/")):
            return pages.shell(request, status_code=404)
        detail = exc.detail if exc.status_code != 404 else f"not found: {path[:200]}"
        headers = exc.headers
        methods = _methods_at(request) if exc.status_code == 405 else []
        if methods:  # Starlette names the methods of only one route of the path
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of problems, plus one readable line the pages can show.
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)
