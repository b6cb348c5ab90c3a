"""``/api/models``: the model this server runs, its chain and what the explorer offers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...engine.rules import RULES
from ...tree.options import GAINS
from ..schemas import IndexOut, LayerOut, ModelOut, ModelsOut, VocabularyOut
from ..service import ExplorerService
from ..services.models import picker_methods
from ..services.models import vocabulary as vocabulary_lists
from .deps import GUARDED, service
from .pages import page_urls

router = APIRouter(prefix="/api", tags=["models"], responses=GUARDED)


def layer_out(svc: ExplorerService, name: str) -> LayerOut:
    info = svc.layers[name]  # a chain layer: the library's own name
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
    return ModelOut(
        name=svc.model.name,
        input_size=list(svc.input_size),
        num_classes=svc.model.num_classes,
        logits_layer=svc.model.logits_layer,
        chain=[layer_out(svc, name) for name in svc.chain],
        rules=list(RULES),
        gains=list(GAINS),
        attribution_methods={
            m.name: m.title + (" (slow)" if m.slow else "") for m in picker_methods()
        },
        attribution_source="attribution",
        index=svc.index.available,
        index_state=svc.index.state()["state"],
        synthesis=svc.units.synthesis_available,
    )


@router.get("/models", response_model=ModelsOut, summary="The model this server runs")
def models(request: Request, svc: ExplorerService = Depends(service)) -> ModelsOut:
    """One model per server (``cnnscope serve --model``): its chain, rules and capabilities."""
    return ModelsOut(
        current=svc.model.name,
        models=[model_out(svc)],
        max_upload_mb=request.app.state.store.max_upload_bytes / (1 << 20),
    )


@router.get("/vocabulary", response_model=VocabularyOut, summary="Every list of choices")
def vocabulary() -> VocabularyOut:
    """The choices the pages offer, with titles and help, as the library owns them:
    backward rules, gains, scorings, signs, attribution methods (with their cost), the
    call suffix of layer names (``#`` in names, ``~`` in URLs) and every page's URL."""
    return VocabularyOut(**vocabulary_lists(page_urls()))


@router.get("/index", response_model=IndexOut, tags=["units"], summary="The dataset index")
def index_state(svc: ExplorerService = Depends(service)) -> IndexOut:
    """Whether dataset examples are ready; while the gallery's default index is built in
    the background (on the first start), how many images are done."""
    return IndexOut(**svc.index.state())


@router.get("/stats", tags=["system"], summary="Cache and worker counters")
def stats(svc: ExplorerService = Depends(service)) -> dict:
    """Memory held by the caches and how many batches the worker ran."""
    return svc.stats()
