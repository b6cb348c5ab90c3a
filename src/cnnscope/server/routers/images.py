"""``/api/images``: the gallery, uploads, and per-image answers (predictions, overview, maps)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.requests import ClientDisconnect

from ...attribution import Method
from ...attribution.figures import STYLES
from ...tree.options import DEFAULT_GAIN
from ...vocabulary import url_form
from ..refs import ImageRef, LayerRef, UnitRef
from ..schemas import (
    GalleryOut,
    ImageOut,
    OverviewLayer,
    OverviewOut,
    OverviewUnit,
    Prediction,
    PredictionsOut,
    Rule,
    UploadOut,
)
from ..service import ExplorerService
from ..services.models import DEFAULTS
from ..store import (
    BadRequestError,
    ImageRecord,
    ImageStore,
    TooLargeError,
    UnsupportedImageError,
    UploadTimeoutError,
)
from .deps import (
    ERRORS,
    Responses,
    cam_layer_ref,
    checked_model,
    image_ref,
    image_url,
    map_unit_query_ref,
    method_ref,
    recon_url,
    service,
    target_class,
)

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERRORS)

PNG: Responses = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
JPEG: Responses = {200: {"content": {"image/jpeg": {}}, "description": "a JPEG image"}}
CACHE = {"Cache-Control": "public, max-age=3600"}


def image_out(record: ImageRecord, model: str) -> ImageOut:
    return ImageOut(
        id=record.id,
        name=record.name,
        description=record.description,
        source=record.source,
        thumbnail=image_url(record.id, "thumbnail.jpg"),
        input=image_url(record.id, "input.png"),
        page=f"/images/{record.id}?model={model}",
    )


@router.get("", response_model=GalleryOut, summary="The gallery")
def list_images(request: Request, model: str = Depends(checked_model)) -> GalleryOut:
    """Built-in photos, the ``--gallery`` folder and uploads."""
    store: ImageStore = request.app.state.store
    return GalleryOut(
        images=[image_out(r, model) for r in store.list()],
        max_upload_mb=store.max_upload_bytes / (1 << 20),
    )


#: An upload's content types: neither can be sent by a cross-site form or a no-cors
#: fetch without a CORS preflight, which this server never grants. The bytes decide the
#: format (one of cnnscope.images.IMAGE_FORMATS), not the type.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file's bytes as they are (no form, no multipart)",
        "content": {"image/*": _BINARY, "application/octet-stream": _BINARY},
    }
}


def _error(description: str) -> dict:
    return {"model": ERRORS[400]["model"], "description": description}


@router.post(
    "",
    response_model=UploadOut,
    status_code=201,
    summary="Upload an image",
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"model": UploadOut, "description": "the same bytes were uploaded before"},
        408: _error("the body did not arrive within the upload timeout"),
        413: _error("over --max-upload-mb or 40 Mpx, or the data directory is full"),
        415: _error("not an image the server reads, or sent as a form or multipart"),
    },
)
async def upload_image(
    request: Request,
    response: Response,
    name: str | None = Query(None, max_length=255, description="original file name"),
    model: str = Depends(checked_model),
) -> UploadOut:
    """Validate an image and add it to the gallery under the hash of its bytes.

    Send the file's bytes as the body, with ``Content-Type: image/...`` or
    ``application/octet-stream`` (``curl --data-binary @cat.jpg -H 'Content-Type:
    image/jpeg'``); forms and multipart bodies are refused (415), so that no other web
    site can upload. The size limit is ``--max-upload-mb``.
    """
    store: ImageStore = request.app.state.store
    check_upload_type(request.headers.get("content-type", ""))
    body = await read_capped(request, store, request.app.state.upload_timeout_s)
    record, created = await asyncio.to_thread(store.add, body, name)
    if not created:
        response.status_code = 200
    return UploadOut(**image_out(record, model).model_dump(), created=created)


def check_upload_type(content_type: str) -> None:
    """Refuse any content type but ``image/*`` and ``application/octet-stream`` (415)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/octet-stream" or (media.startswith("image/") and len(media) > 6):
        return
    raise UnsupportedImageError(
        f"Content-Type {media or 'none'!r} is not an image type: send the file's bytes as the "
        "body with Content-Type image/jpeg, image/png, ... or application/octet-stream "
        "(forms and multipart uploads are refused)"
    )


async def read_capped(request: Request, store: ImageStore, timeout_s: float) -> bytes:
    """The request body, refused as soon as it passes the upload limit or ``timeout_s``."""
    limit = store.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLargeError(store.too_large_message(int(declared)))

    async def read() -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise TooLargeError(store.too_large_message())
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise UploadTimeoutError(
            f"the upload did not arrive within {timeout_s:g} s: send it again"
        ) from None
    except ClientDisconnect:
        raise BadRequestError("the upload was cut off before its end") from None


@router.get("/{image_id}", response_model=ImageOut, summary="One image")
def get_image(
    model: str = Depends(checked_model), image: ImageRef = Depends(image_ref)
) -> ImageOut:
    """Name, source and URLs of one image."""
    return image_out(image.record, model)


@router.get(
    "/{image_id}/thumbnail.jpg",
    responses=JPEG,
    summary="Thumbnail",
)
async def thumbnail(
    image: ImageRef = Depends(image_ref), svc: ExplorerService = Depends(service)
) -> Response:
    """A JPEG thumbnail of the original image (at most 320 px)."""
    return Response(await svc.images.thumbnail(image), media_type="image/jpeg", headers=CACHE)


@router.get("/{image_id}/input.png", responses=PNG, summary="The image as the model sees it")
async def input_png(
    image: ImageRef = Depends(image_ref), svc: ExplorerService = Depends(service)
) -> Response:
    """The image resized and cropped to the model's input size."""
    return Response(await svc.images.input_png(image), media_type="image/png", headers=CACHE)


@router.get("/{image_id}/predictions", response_model=PredictionsOut, summary="Top classes")
async def predictions(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    k: int = Query(5, ge=1, le=20, description="how many classes"),
    svc: ExplorerService = Depends(service),
) -> PredictionsOut:
    """The model's top-``k`` classes with probabilities."""
    preds = await svc.images.predictions(image, k)
    return PredictionsOut(image=image.id, predictions=[Prediction(**p) for p in preds])


@router.get("/{image_id}/overview", response_model=OverviewOut, summary="Top units per chain layer")
async def overview(
    model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    per_layer: int = Query(8, ge=1, le=16, description="units per layer"),
    rule: Rule = Query(DEFAULTS["rule"], description="backward rule of the reconstructions"),
    svc: ExplorerService = Depends(service),
) -> OverviewOut:
    """For each chain layer, its strongest units (`cnnscope.engine.strength`: the maximum,
    read before a ReLU-family activation so that units clipped at 6 do not tie).

    Each unit comes with the URL of its reconstruction; they are queued at once, in one
    batched backward per chunk.
    """
    image_id = image.id
    out = []
    for entry in await svc.images.overview(image, per_layer):
        info = svc.layers[entry["layer"]]  # the library's own names: nothing to check
        is_class = svc.is_class_layer(info.name)
        units = []
        for u in entry["units"]:
            channel = int(u["unit"].rsplit(":", 1)[1].split("@")[0])
            units.append(
                OverviewUnit(
                    unit=u["unit"],
                    channel=channel,
                    score=u["score"],
                    label=svc.model.label(channel) if is_class else None,
                    reconstruction=class_picture_url(image_id, channel, model)
                    if is_class
                    else recon_url(image_id, url_form(u["unit"]), rule, DEFAULT_GAIN, model),
                )
            )
        picture = CLASS_PICTURE if is_class else f"reconstruction ({rule})"
        out.append(
            OverviewLayer(layer=info.name, shape=list(info.shape), units=units, picture=picture)
        )
    drawn = [u.unit for layer in out if layer.picture != CLASS_PICTURE for u in layer.units]
    svc.compute.prefetch(image_id, [url_form(u) for u in drawn], rule, DEFAULT_GAIN)
    return OverviewOut(image=image_id, rule=rule, layers=out)


#: The overview's picture of a class: every rule's reconstruction of a top class is
#: nearly the same picture of the image's edges (guided: mean pairwise correlation 1.00
#: over the gallery's top six, bench/tree.py --classes); the class's plain gradient,
#: drawn as the image weighted by its smoothed |gradient|, differs from class to class.
CLASS_PICTURE = "gradient × image (masked saliency)"


def class_picture_url(image_id: str, channel: int, model: str) -> str:
    """URL of the overview's picture of class ``channel`` (see :data:`CLASS_PICTURE`)."""
    return image_url(
        image_id, "attribution.png", method="gradient", target=channel, style="masked", model=model
    )


@router.get("/{image_id}/attribution.png", responses=PNG, summary="Attribution map")
async def attribution(
    response: Response,
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    method: Method = Depends(method_ref),
    target: int | None = Depends(target_class),
    layer: LayerRef | None = Depends(cam_layer_ref),
    style: str | None = Query(
        None,
        max_length=32,
        description="rendering: colored, grayscale, ..., masked (default: the method's own)",
        json_schema_extra={"enum": list(STYLES)},
    ),
    svc: ExplorerService = Depends(service),
) -> Response:
    """Why the model predicts ``target``: an attribution map over the model's view."""
    if style is not None and style not in STYLES:
        raise BadRequestError(f"unknown style {style!r}: choose one of {', '.join(STYLES)}")
    png, cls = await svc.images.attribution(image, method, target, layer, style)
    return Response(png, media_type="image/png", headers={**CACHE, "X-Target-Class": str(cls)})


@router.get("/{image_id}/activation.png", responses=PNG, summary="A unit's activation map")
async def activation(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    unit: UnitRef = Depends(map_unit_query_ref),
    svc: ExplorerService = Depends(service),
) -> Response:
    """Where on the image a unit fires, over the model's view."""
    png = await svc.images.activation(image, unit)
    return Response(png, media_type="image/png", headers=CACHE)
