"""``/api/models``: the model this server runs, its chain and what the explorer offers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..schemas import IndexOut, LayerOut, ModelOut, ModelsOut
from ..service import GAINS, RULES, ExplorerService
from .deps import GUARDED, service

router = APIRouter(prefix="/api", tags=["models"], responses=GUARDED)


def layer_out(svc: ExplorerService, name: str) -> LayerOut:
    info = svc.layer_info(name)
    field = info.field
    return LayerOut(
        name=info.name,
        kind=info.kind,
        shape=list(info.shape),
        channels=int(info.shape[0]) if info.shape else 1,
        rf_size=[int(v) for v in field.size] if field else None,
        rf_stride=[int(v) for v in field.stride] if field else None,
    )


def model_out(svc: ExplorerService) -> ModelOut:
    from .. import service as service_module

    return ModelOut(
        name=svc.model.name,
        input_size=list(svc.input_size),
        num_classes=svc.model.num_classes,
        logits_layer=svc.model.logits_layer,
        chain=[layer_out(svc, name) for name in svc.chain],
        rules=list(RULES),
        gains=list(GAINS),
        attribution_methods=svc.attribution_methods,
        attribution_source="engine" if service_module._attribute is None else "attribution",
        index=svc.index_available,
        index_state=svc.index_state()["state"],
        synthesis=svc.synthesis_available,
    )


@router.get("/models", response_model=ModelsOut, summary="The model this server runs")
def models(request: Request, svc: ExplorerService = Depends(service)) -> ModelsOut:
    """One model per server (``cnnscope serve --model``): its chain, rules and capabilities."""
    return ModelsOut(
        current=svc.model.name,
        models=[model_out(svc)],
        max_upload_mb=request.app.state.store.max_upload_bytes / (1 << 20),
    )


@router.get("/index", response_model=IndexOut, tags=["units"], summary="The dataset index")
def index_state(svc: ExplorerService = Depends(service)) -> IndexOut:
    """Whether dataset examples are ready; while the gallery's default index is built in
    the background (on the first start), how many images are done."""
    return IndexOut(**svc.index_state())


@router.get("/stats", tags=["system"], summary="Cache and worker counters")
def stats(svc: ExplorerService = Depends(service)) -> dict:
    """Memory held by the caches and how many batches the worker ran."""
    return svc.stats()
