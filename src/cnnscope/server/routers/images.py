"""``/api/images``: the gallery, uploads, and per-image answers (predictions, overview, maps)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy

from fastapi import APIRouter, Depends, Path, Query, Request, Response

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
from ..store import BadRequestError, ImageRecord, ImageStore, TooLargeError
from .deps import ERRORS, checked_model, image_url, recon_url, service

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERRORS)

ImageId = Path(
    ...,
    max_length=64,
    description="image id from /api/images",
    examples=["chelsea"],
)
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
CACHE = {"Cache-Control": "public, max-age=3600"}
_MULTIPART_SLACK = 64 << 10


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


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file: raw bytes, or multipart/form-data with a field `file`",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post(
    "",
    response_model=UploadOut,
    status_code=201,
    summary="Upload an image",
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {"model": ERRORS[400]["model"], "description": "the upload is over the size limit"},
        415: {"model": ERRORS[400]["model"], "description": "the upload is not a readable image"},
    },
)
async def upload_image(
    request: Request,
    response: Response,
    name: str | None = Query(None, max_length=255, description="original file name"),
    model: str = Depends(checked_model),
) -> UploadOut:
    """Validate an image and add it to the gallery under the hash of its bytes.

    Send the file as the raw body (``curl --data-binary @cat.jpg``) or as a multipart
    form with a ``file`` field. The size limit is ``--max-upload-mb``.
    """
    store: ImageStore = request.app.state.store
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    body = await read_capped(request, store, _MULTIPART_SLACK if multipart else 0)
    if multipart:
        body, filename = file_from_multipart(body, content_type)
        name = name or filename
    record, created = await asyncio.to_thread(store.add, body, name)
    if not created:
        response.status_code = 200
    return UploadOut(**image_out(record, model).model_dump(), created=created)


async def read_capped(request: Request, store: ImageStore, slack: int) -> bytes:
    """The request body, refused as soon as it passes the upload limit."""
    limit = store.max_upload_bytes + slack
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLargeError(store.too_large_message(int(declared)))
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLargeError(store.too_large_message())
        chunks.append(chunk)
    return b"".join(chunks)


def file_from_multipart(body: bytes, content_type: str) -> tuple[bytes, str | None]:
    """The first file part of a multipart body (parsed in memory, nothing written)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if message.is_multipart():
        for part in message.iter_parts():
            disposition = part.get("content-disposition", "")
            if part.get_filename() is not None or 'name="file"' in str(disposition):
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    return payload, part.get_filename()
    raise BadRequestError("no file found in the multipart upload: send it in a field named 'file'")


@router.get("/{image_id}", response_model=ImageOut, summary="One image")
def get_image(
    request: Request, image_id: str = ImageId, model: str = Depends(checked_model)
) -> ImageOut:
    """Name, source and URLs of one image."""
    return image_out(request.app.state.store.get(image_id), model)


@router.get(
    "/{image_id}/thumbnail.jpg",
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="Thumbnail",
)
async def thumbnail(image_id: str = ImageId, svc: ExplorerService = Depends(service)) -> Response:
    """A JPEG thumbnail of the original image (at most 320 px)."""
    return Response(await svc.thumbnail(image_id), media_type="image/jpeg", headers=CACHE)


@router.get("/{image_id}/input.png", responses=PNG, summary="The image as the model sees it")
async def input_png(image_id: str = ImageId, svc: ExplorerService = Depends(service)) -> Response:
    """The image resized and cropped to the model's input size."""
    return Response(await svc.input_png(image_id), media_type="image/png", headers=CACHE)


@router.get("/{image_id}/predictions", response_model=PredictionsOut, summary="Top classes")
async def predictions(
    image_id: str = ImageId,
    k: int = Query(5, ge=1, le=20, description="how many classes"),
    svc: ExplorerService = Depends(service),
    _model: str = Depends(checked_model),
) -> PredictionsOut:
    """The model's top-``k`` classes with probabilities."""
    preds = await svc.predictions(image_id, k)
    return PredictionsOut(image=image_id, predictions=[Prediction(**p) for p in preds])


@router.get("/{image_id}/overview", response_model=OverviewOut, summary="Top units per chain layer")
async def overview(
    image_id: str = ImageId,
    per_layer: int = Query(8, ge=1, le=16, description="units per layer"),
    rule: Rule = Query("guided", description="backward rule of the reconstructions"),
    svc: ExplorerService = Depends(service),
    model: str = Depends(checked_model),
) -> OverviewOut:
    """For each chain layer, the units with the largest spatial-max activation.

    Each unit comes with the URL of its reconstruction; they are queued at once, in one
    batched backward per chunk.
    """
    layers = await svc.overview(image_id, per_layer)
    out = []
    for entry in layers:
        info = svc.layer_info(entry["layer"])
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
                    reconstruction=recon_url(
                        image_id, u["unit"].replace("#", "~"), rule, "auto", model
                    ),
                )
            )
        out.append(OverviewLayer(layer=info.name, shape=list(info.shape), units=units))
    svc.prefetch(
        image_id, [u.unit.replace("#", "~") for layer in out for u in layer.units], rule, "auto"
    )
    return OverviewOut(image=image_id, rule=rule, layers=out)


@router.get("/{image_id}/attribution.png", responses=PNG, summary="Attribution map")
async def attribution(
    response: Response,
    image_id: str = ImageId,
    method: str = Query(
        "grad_cam", max_length=64, description="see /api/models attribution_methods"
    ),
    target: int | None = Query(
        None, ge=0, le=1_000_000, description="class index (default: top class)"
    ),
    layer: str | None = Query(None, max_length=200, description="layer for CAM methods"),
    svc: ExplorerService = Depends(service),
    _model: str = Depends(checked_model),
) -> Response:
    """Why the model predicts ``target``: an attribution map over the model's view."""
    png, cls = await svc.attribution(image_id, method, target, layer)
    return Response(png, media_type="image/png", headers={**CACHE, "X-Target-Class": str(cls)})


@router.get("/{image_id}/activation.png", responses=PNG, summary="A unit's activation map")
async def activation(
    image_id: str = ImageId,
    unit: str = Query(..., max_length=200, description="LAYER:CHANNEL", examples=["blocks.15:120"]),
    svc: ExplorerService = Depends(service),
    _model: str = Depends(checked_model),
) -> Response:
    """Where on the image a unit fires, over the model's view."""
    return Response(await svc.activation(image_id, unit), media_type="image/png", headers=CACHE)
