"""Pydantic models of the explorer's JSON API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Rule = Literal["gradient", "deconvnet", "guided", "guided_neg"]
Gain = Literal["auto", "fixed", "none"]
Scoring = Literal["path", "local", "seed"]
Sign = Literal["pos", "neg"]


class ErrorOut(BaseModel):
    """Every 4xx answer: one readable line."""

    detail: str = Field(description="what is wrong and what to do", examples=["unknown image 'x'"])


class LayerOut(BaseModel):
    name: str
    kind: str = Field(description="module type, e.g. ReLU6")
    shape: list[int] = Field(description="activation shape without the batch: C[, H, W]")
    channels: int
    rf_size: list[int] | None = Field(None, description="receptive field size (y, x) in pixels")
    rf_stride: list[int] | None = None


class ModelOut(BaseModel):
    name: str
    input_size: list[int] = Field(description="(H, W) of the model input")
    num_classes: int
    logits_layer: str | None
    chain: list[LayerOut] = Field(description="the tree's layers, top (logits) first")
    rules: list[str]
    gains: list[str]
    attribution_methods: dict[str, str] = Field(description="method id -> display name")
    attribution_source: Literal["attribution", "engine"] = Field(
        description="the attribution package, or the built-in guided backprop / Grad-CAM"
    )
    index: bool = Field(description="whether dataset examples are available now")
    index_state: Literal["ready", "building", "failed", "none"] = Field(
        description="the dataset index: ready, being built in the background, failed or none"
    )
    synthesis: bool = Field(description="whether feature visualizations are available")


class ModelsOut(BaseModel):
    current: str = Field(description="the one model this server runs")
    models: list[ModelOut]
    max_upload_mb: float


class ImageOut(BaseModel):
    id: str = Field(description="URL-safe id: a gallery name or d-/u- plus a content hash")
    name: str
    description: str
    source: Literal["builtin", "folder", "upload"]
    thumbnail: str = Field(description="URL of a JPEG thumbnail")
    input: str = Field(description="URL of the image as the model sees it")
    page: str = Field(description="URL of the image page")


class GalleryOut(BaseModel):
    images: list[ImageOut]
    max_upload_mb: float


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class PredictionsOut(BaseModel):
    image: str
    predictions: list[Prediction]


class OverviewUnit(BaseModel):
    unit: str = Field(examples=["blocks.15:120"])
    channel: int
    score: float = Field(description="spatial max of the activation")
    label: str | None = Field(None, description="class name for logit units")
    reconstruction: str = Field(
        description="URL of its picture (PNG): its reconstruction; for class units, the "
        "class's gradient x image (the layer's picture field says which)"
    )


class OverviewLayer(BaseModel):
    layer: str
    shape: list[int]
    units: list[OverviewUnit]
    picture: str = Field(
        "reconstruction",
        description="what the units' pictures show: the method that drew them",
        examples=["reconstruction (guided)", "gradient × image (masked saliency)"],
    )


class OverviewOut(BaseModel):
    image: str
    rule: Rule
    layers: list[OverviewLayer]


class NodeOut(BaseModel):
    unit: str
    layer: str
    channel: int
    weight: float = Field(
        description="contribution score to the parent (children) or child (parents)"
    )
    sign: Sign
    share: float | None = Field(
        None, description="|weight| as a fraction of the parent's evidence of the same sign"
    )
    path: str = Field(description="the node's tree path, root first, units joined by '/'")
    label: str | None = Field(None, description="class name for logit units")
    reconstruction: str = Field(description="URL of its path-conditioned reconstruction (PNG)")


class ChildrenOut(BaseModel):
    image: str
    path: str
    layer: str | None = Field(
        description="the chain layer the children come from; null at the bottom"
    )
    k: int
    rule: Rule
    scoring: Scoring
    gain: Gain
    sign: Sign
    children: list[NodeOut]


class ParentsOut(BaseModel):
    image: str
    unit: str
    layer: str | None = Field(description="the chain layer above; null at the top")
    parents: list[NodeOut]


class FaithfulnessOut(BaseModel):
    image: str
    path: str
    children: list[str] = Field(description="the units that were zeroed")
    drop: float = Field(description="relative drop of the node when its shown children are zeroed")
    random_drop: float = Field(
        description="mean relative drop when as many random channels are zeroed"
    )
    random_std: float
    measure: str = Field("", description="what was measured, in words")
    value: float | None = Field(None, description="the measured value, nothing zeroed")
    zeroed: float | None = Field(None, description="the value with the children zeroed")
    random_zeroed: float | None = Field(
        None, description="its mean value with as many random channels zeroed"
    )


class UnitOut(BaseModel):
    unit: str
    layer: str
    channel: int
    kind: str
    shape: list[int]
    label: str | None = None
    rf_size: list[int] | None = None
    in_chain: bool
    layer_below: str | None
    layer_above: str | None
    examples: str = Field(description="URL of its dataset examples (404 until an index exists)")
    visualization: str = Field(description="URL of its feature visualization (404 until computed)")


class UploadOut(ImageOut):
    created: bool = Field(description="false when the same image was uploaded before")


class VisualizationOut(BaseModel):
    unit: str
    state: Literal["none", "queued", "running", "done", "failed"]
    progress: float = Field(description="fraction of the optimisation steps done")
    detail: str | None = Field(
        None, description="why it failed, or why a waiting rendering was dropped"
    )
    image: str = Field(description="URL of the PNG (404 until done)")


class IndexOut(BaseModel):
    state: Literal["ready", "building", "failed", "none"]
    done: int = Field(description="images indexed so far, while building")
    total: int = Field(description="images to index (0 until known), while building")
    detail: str | None = Field(
        None, description="the index folder when ready; why not, when failed or none"
    )
    images: int | None = Field(
        None, description="images indexed (augmented copies count), when ready"
    )
    photos: int | None = Field(None, description="distinct source photos among them, when ready")
    source: str | None = Field(
        None, description="'gallery' (the built-in photos) or the indexed folder, when ready"
    )
    layers: list[str] | None = Field(None, description="the layers the index covers, when ready")


class ExampleOut(BaseModel):
    rank: int = Field(description="1 for the strongest example")
    unit: str = Field(
        description="the unit at the example's position", examples=["blocks.5.expand_act:3@4,7"]
    )
    image: str = Field(description="display name: the gallery name or the file name")
    id: str = Field(description="the index's item id (relative path or gallery name, |recipe)")
    augmentation: str | None = Field(None, description="the augmentation recipe, if any")
    y: int = Field(description="row of the unit's maximum in the feature map")
    x: int = Field(description="column of the unit's maximum in the feature map")
    activation: float | None = Field(description="the unit's activation there, as indexed")
    patch: str = Field(description="URL of the image cut to the unit's receptive field (PNG)")
    open: str = Field(description="URL to POST to open the image's tree at this example")


class ExampleOpenOut(BaseModel):
    image: str = Field(description="id of the example image in the explorer's image store")
    name: str
    created: bool = Field(description="false when the image was in the store already")
    unit: str = Field(description="the tree's root: the unit at the example's position")
    tree: str = Field(description="URL of the tree page of the image rooted at that unit")
