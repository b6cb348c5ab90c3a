"""Layer views: activation mosaics, channel orderings, 3D volumes and weight gradients.

The CNN-VIS toolbox, for any layer of any model:

* :func:`mosaic`: every channel of a layer for one image, normalised jointly or per
  channel, numbered, with each tile's geometry (to make it clickable);
* :func:`order_channels`: k-means on one row slice (with cluster separators), PCA on
  one row slice, PCA over whole maps (principal-image scores); an :class:`Ordering`
  applies to mosaics and volumes;
* :func:`volume_figure` / :func:`volume_html`: the stacked maps as an interactive,
  offline 3D view with a slice slider; :func:`write_vox`, :func:`write_npy`,
  :func:`write_nrrd`, :func:`write_vtk` export it;
* :func:`weight_gradients`: ``d logit / d W`` of a conv layer for a list of images,
  as volumes played as a time series (:func:`series_frames`, :func:`save_gif`,
  :func:`weightgrad_figure`);
* :func:`filter_importance`, :func:`pruning_sweep`: gradient-norm importance of each
  filter for a class, and accuracy after zeroing the unimportant ones;
* :func:`filter_grid`: first-layer filters as RGB pictures.

Examples
--------
>>> from cnnscope.models import load_model
>>> from cnnscope.views import mosaic
>>> m = mosaic(load_model(), "chelsea", "blocks.4", order="kmeans")
>>> m.tiles[0].channel == int(m.permutation[0])
True
"""

from . import importance as _importance
from .filters import filter_grid
from .importance import (
    FilterImportance,
    PruningSweep,
    filter_importance,
    importance_grid,
    labelled_folder,
    plot_sweep,
    prune_filters,
    pruning_sweep,
    top1_predictions,
)
from .mosaic import (
    NORMALIZE_MODES,
    Mosaic,
    Tile,
    draw_grid,
    layer_activations,
    layer_stats,
    mosaic,
    render_mosaic,
)
from .ordering import (
    ORDER_METHODS,
    Ordering,
    apply_order,
    as_ordering,
    kmeans_slice,
    order_channels,
    pca_maps,
    pca_slice,
    slice_image,
)
from .volume import (
    figure_html,
    plotly_js,
    read_nrrd,
    read_vox,
    to_uint8_volume,
    volume_figure,
    volume_html,
    volume_series_figure,
    write_npy,
    write_nrrd,
    write_vox,
    write_vtk,
)
from .weightgrad import (
    REDUCTIONS,
    SCALES,
    WeightGradient,
    gradient_volume,
    iter_weight_gradients,
    save_gif,
    scale_volumes,
    series_frames,
    weight_gradients,
    weightgrad_figure,
)

__all__ = [
    "NORMALIZE_MODES",
    "ORDER_METHODS",
    "REDUCTIONS",
    "SCALES",
    "FilterImportance",
    "Mosaic",
    "Ordering",
    "PruningSweep",
    "Tile",
    "WeightGradient",
    "apply_order",
    "as_ordering",
    "draw_grid",
    "figure_html",
    "filter_grid",
    "filter_importance",
    "gradient_volume",
    "importance_grid",
    "iter_weight_gradients",
    "kmeans_slice",
    "labelled_folder",
    "layer_activations",
    "layer_stats",
    "mosaic",
    "order_channels",
    "pca_maps",
    "pca_slice",
    "plot_sweep",
    "plotly_js",
    "prune_filters",
    "pruning_sweep",
    "read_nrrd",
    "read_vox",
    "render_mosaic",
    "save_gif",
    "scale_volumes",
    "series_frames",
    "slice_image",
    "to_uint8_volume",
    "top1_predictions",
    "volume_figure",
    "volume_html",
    "volume_series_figure",
    "weight_gradients",
    "weightgrad_figure",
    "write_npy",
    "write_nrrd",
    "write_vox",
    "write_vtk",
]


def __getattr__(name: str):
    """``evaluate``: the old name of :func:`top1_predictions`, with a DeprecationWarning."""
    return _importance.__getattr__(name)
