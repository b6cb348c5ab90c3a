"""Pydantic models of the explorer's JSON API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

from pydantic import BaseModel, Field

from ..engine.rules import RULES
from ..tree import Node, format_path
from ..tree.options import EXPLORER_SIGNS, GAINS, SCORINGS
from .store import SOURCES

# The choices the routes accept are the library's lists (one vocabulary).
if TYPE_CHECKING:
    Rule: TypeAlias = str
    Gain: TypeAlias = str
    Scoring: TypeAlias = str
    Sign: TypeAlias = str
    Source: TypeAlias = str
else:
    Rule = Literal[RULES]
    Gain = Literal[GAINS]
    Scoring = Literal[SCORINGS]
    Sign = Literal[EXPLORER_SIGNS]
    Source = Literal[SOURCES]


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
        description="always 'attribution' (the library's registry); 'engine' is no longer given"
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
    source: Source = Field(description="see /api/vocabulary sources")
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

    @classmethod
    def of(cls, node: Node, *, label: str | None, reconstruction: str) -> NodeOut:
        """The JSON of a tree's :class:`~cnnscope.tree.Node`, with its label and picture.

        Examples
        --------
        >>> from cnnscope.engine import Unit
        >>> node = Node(Unit("head_act", 7), 0.5, (Unit("logits", 1), Unit("head_act", 7)), "pos")
        >>> NodeOut.of(node, label=None, reconstruction="/x.png").path
        'logits:1/head_act:7'
        """
        return cls(
            unit=str(node.unit),
            layer=node.unit.layer,
            channel=node.unit.channel,
            weight=float(node.weight),
            sign=node.sign,
            share=node.share,
            path=format_path(node.path),
            label=label,
            reconstruction=reconstruction,
        )


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
    reason: str | None = Field(
        None, description="why there are no children (one line); null when there are some"
    )


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


class TermOut(BaseModel):
    """One choice of an option, as the library names it (:class:`cnnscope.vocabulary.Term`)."""

    name: str = Field(description="what the routes take", examples=["guided_neg"])
    title: str = Field(description="what a picker shows", examples=["Guided neg"])
    help: str = Field(description="one sentence on what it does")


class MethodTermOut(TermOut):
    """An attribution method of the registry (:class:`cnnscope.attribution.Method`)."""

    slow: bool = Field(description="many passes: it runs on the slow lane (seconds)")


class CallSuffixOut(BaseModel):
    name: str = Field(description="what separates a layer from its call number in names")
    url: str = Field(description="the same in URLs (the name's one is a URL fragment)")


class DefaultsOut(BaseModel):
    """What each option is where a request names none (the library's defaults)."""

    rule: str = Field(description="a name of rules", examples=["guided"])
    gain: str = Field(description="a name of gains", examples=["auto"])
    scoring: str = Field(description="a name of scorings", examples=["path"])
    sign: str = Field(description="a name of signs", examples=["pos"])
    k: int = Field(description="how many children a node shows", examples=[5])
    method: str = Field(description="a name of methods: the picker's first", examples=["grad_cam"])
    order: str = Field(description="a name of orders", examples=["none"])
    normalize: str = Field(description="a name of normalizations", examples=["joint"])
    clusters: int = Field(description="k-means clusters of the kmeans order", examples=[6])


class VocabularyOut(BaseModel):
    """Every list of choices the pages offer, and every page's URL, from the library."""

    rules: list[TermOut] = Field(description="backward rules (cnnscope.engine.rules)")
    gains: list[TermOut] = Field(description="gains of kept channels (cnnscope.tree.options)")
    scorings: list[TermOut] = Field(description="how children are ranked")
    signs: list[TermOut] = Field(description="which children: the signs the explorer asks for")
    methods: list[MethodTermOut] = Field(description="attribution methods, the picker's order")
    orders: list[TermOut] = Field(description="channel orderings of the layer views")
    normalizations: list[TermOut] = Field(description="colour scales of a layer's mosaic")
    sources: list[TermOut] = Field(description="where images come from: the gallery's sections")
    defaults: DefaultsOut
    call_suffix: CallSuffixOut
    pages: dict[str, str] = Field(
        description="page name -> URL template with {placeholders}",
        examples=[{"gallery": "/", "image": "/images/{image}"}],
    )


class GraphSummaryOut(BaseModel):
    index: int = Field(description="class index")
    label: str
    folder: str = Field(description="the graph folder's name, under the server's --graphs folder")
    images: int = Field(description="images the class's sums include")
    total: int = Field(description="images of the folder the graph was built over")
    select: Literal["all", "predicted"] = Field(
        description="every image, or only those predicted as the class"
    )
    covers: str = Field(
        description="one line on what the graph covers",
        examples=["from 8 images of the explorer's gallery predicted as tabby"],
    )
    page: str = Field(description="URL of the class page")


class GraphsOut(BaseModel):
    folder: str = Field(description="where the server looks for graph folders (--graphs)")
    classes: list[GraphSummaryOut] = Field(description="the classes that have a graph")


class GraphExampleOut(BaseModel):
    image: str = Field(description="the image, as the graph names it (path in its folder)")
    influence: float = Field(description="the unit's influence on the class score there")
    position: list[int] = Field(description="(y, x) of the unit's strongest cell")
    image_id: str | None = Field(None, description="its id in the explorer, if it has it")
    path: str = Field(description="the tree path rooted at the unit there (LAYER:C@Y,X)")
    tree: str | None = Field(
        None, description="URL of the image's tree page rooted at the unit, if in the explorer"
    )
    thumbnail: str | None = Field(
        None, description="URL of the image's JPEG thumbnail, if in the explorer"
    )


class GraphNodeOut(BaseModel):
    id: str = Field(description="LAYER:CHANNEL (the class node: logits:CLASS)")
    layer: str
    channel: int
    importance: float = Field(description="mean influence on the class score per image")
    activation: float = Field(description="mean strength per image")
    top_count: int = Field(description="images where it was among its layer's edge_k top units")
    examples: list[GraphExampleOut] = Field(description="images where it matters most")
    page: str = Field(description="URL of its unit page")
    visualization: str | None = Field(
        None, description="URL of its feature visualization PNG, only once it is rendered"
    )


class GraphEdgeOut(BaseModel):
    source: str = Field(description="the lower unit")
    target: str = Field(description="the upper unit (or the class node)")
    weight: float = Field(description="mean influence of source on target's part of the score")
    count: int = Field(description="images that contributed a term")


class GraphClassOut(BaseModel):
    index: int
    label: str


class GraphOut(BaseModel):
    """A class's pruned attribution graph (:meth:`cnnscope.graph.ClassGraph.to_dict`)."""

    model_config = {"populate_by_name": True}

    class_: GraphClassOut = Field(alias="class", serialization_alias="class")
    images: int = Field(description="images the sums include")
    layers: list[str] = Field(description="the graph's layers, top (logits) first")
    nodes: list[GraphNodeOut] = Field(description="the class node first, then by layer")
    edges: list[GraphEdgeOut]
    thresholds: dict = Field(description="the pruning settings and the cut-offs they gave")
    meta: dict = Field(description="model, selection, rule, source and image counts")
    source: GraphSummaryOut = Field(description="what the graph covers")
    export: str = Field(description="URL of the static HTML export (a download)")


class GraphBuildOut(BaseModel):
    index: int = Field(description="class index")
    label: str
    state: Literal["none", "queued", "running", "done", "failed", "dropped"]
    done: int = Field(description="images added so far")
    total: int = Field(description="images to add (0 until known)")
    detail: str | None = Field(None, description="why it failed, or what to do")
    graph: str = Field(description="URL of the graph (404 until one is built)")


class GraphOpenOut(BaseModel):
    image: str = Field(description="id of the image in the explorer's image store")
    created: bool = Field(description="false when the image was in the store already")
    tree: str = Field(description="URL of the image's tree page rooted at the path")
