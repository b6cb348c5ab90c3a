"""The explorer's FastAPI application.

:func:`create_app` wires one model, one image store and one
:class:`~cnnscope.server.service.ExplorerService` (which owns the worker thread) into an
app with the JSON API under ``/api``, the static front end under ``/static`` and the HTML
pages. Every user error becomes a 4xx JSON answer ``{"detail": "..."}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CnnscopeError, ImageError, UnitSpecError, UnknownLayerError
from ..models import LoadedModel, load_model
from .routers import images, models, pages, tree, units
from .routers import layers as layer_views
from .service import ExplorerService
from .store import BadRequestError, ImageStore, NotFoundError, TooLargeError, UnsupportedImageError

__all__ = ["create_app", "default_data_dir"]

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("cnnscope.server") / "static"))

_STATUS = (
    (NotFoundError, 404),
    (UnknownLayerError, 404),
    (TooLargeError, 413),
    (UnsupportedImageError, 415),
    (BadRequestError, 400),
    (UnitSpecError, 400),
    (ImageError, 400),
)

_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


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
    index: str | None = None,
    default_index: bool = False,
    cache_mb: float = 1024,
    results_mb: float = 128,
    window_ms: float = 4.0,
    synthesis_steps: int = 128,
    synthesis_size: int = 160,
    threads: int | None = None,
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
    index
        A dataset index (``cnnscope index``) for the dataset examples of each unit.
    default_index
        Without ``index``, build the gallery's default index in the background on the
        first start (kept beside ``data_dir``'s uploads when ``data_dir`` is given, else
        where ``cnnscope index`` puts it) and use it once ready. ``cnnscope serve`` does.
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
    if max_upload_mb <= 0:
        raise CnnscopeError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    store = ImageStore(
        data_dir or default_data_dir(),
        gallery_dir,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
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
        synthesis_steps=synthesis_steps,
        synthesis_size=synthesis_size,
        threads=threads,
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
            {"name": "system", "description": "caches and worker"},
        ],
    )
    app.openapi = lambda: _openapi(app)
    app.state.service = service
    app.state.store = store
    app.state.shell = (STATIC / "index.html").read_text("utf-8")
    _add_error_handlers(app)
    app.middleware("http")(_security_headers)
    for module in (models, images, tree, units, layer_views, pages):
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


async def _security_headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.headers.get("content-type", "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", _CSP)
    return response


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CnnscopeError)
    async def user_error(request: Request, exc: CnnscopeError) -> JSONResponse:
        status = status_of(exc)
        detail = " ".join(str(exc).split())  # one line, whatever the user sent
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        wants_page = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 404 and wants_page and not path.startswith(("/api/", "/static/")):
            return pages.shell(request, status_code=404)
        detail = exc.detail if exc.status_code != 404 else f"not found: {path[:200]}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of problems, plus one readable line the pages can show.
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)
