"""Filter importance for a class, and pruning sweeps that zero the least important filters.

The importance of filter ``f`` of a conv layer for class neuron ``c`` is the norm of
``d logit_c / d W_f`` (over in-channels x kh x kw), averaged over images of the class
(CNN-VIS, report section 3.2.3; here divided by the actual number of images).
:func:`pruning_sweep` zeroes, on a private copy of the model, every filter whose
normalised importance is below a threshold, and measures the accuracy on a labelled
folder (one subfolder per class index) for a range of thresholds.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine import Engine
from ..errors import CnnscopeError, warn_renamed
from ._common import class_index, conv_weight, module_of, to_input
from .weightgrad import iter_weight_gradients

__all__ = [
    "FilterImportance",
    "PruningSweep",
    "filter_importance",
    "following_batchnorm",
    "importance_grid",
    "labelled_folder",
    "plot_sweep",
    "prune_filters",
    "pruning_sweep",
    "top1_predictions",
]

log = logging.getLogger(__name__)


@dataclass
class FilterImportance:
    """Mean gradient norm per filter of ``layer`` for class ``target``.

    Attributes
    ----------
    values : numpy.ndarray
        ``mean_i || d logit_target(image_i) / d W_f ||`` per filter ``f``.
    count : int
        Number of images averaged.
    """

    layer: str
    target: int
    values: np.ndarray
    count: int

    @property
    def normalized(self) -> np.ndarray:
        """Importance min-max normalised to [0, 1]."""
        v = self.values
        lo, hi = float(v.min()), float(v.max())
        return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)

    def ranking(self) -> np.ndarray:
        """Filters from the least to the most important."""
        return np.argsort(self.values, kind="stable")

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "layer": self.layer,
            "target": self.target,
            "images": self.count,
            "importance": [float(v) for v in self.values],
            "normalized": [float(v) for v in self.normalized],
        }


def filter_importance(
    model, images: Iterable, layer: str, target: int | str, *, progress: bool = True
) -> FilterImportance:
    """Per-filter importance of conv ``layer`` for class ``target`` over ``images``.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        The network.
    images : iterable
        PIL images, image paths, gallery names or preprocessed tensors.
    layer : str
        Conv module name (``stem``, ``blocks.N.expand_conv``, ``head_conv`` ...).
    target : int or str
        The class neuron.

    Returns
    -------
    FilterImportance

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    >>> imp = filter_importance(net, [torch.randn(1, 3, 2, 2)], "0", 0, progress=False)
    >>> imp.values.shape, imp.count
    ((2,), 1)
    """
    images = list(images)
    total: np.ndarray | None = None
    count = 0
    for g in iter_weight_gradients(model, images, layer, target, progress=progress):
        norms = g.filter_norms()
        total = norms if total is None else total + norms
        count += 1
    if total is None:
        raise CnnscopeError("no images to measure the filter importance on")
    return FilterImportance(layer, class_index(model, target), total / count, count)


def __getattr__(name: str):
    """``evaluate``: the old name of :func:`top1_predictions`, with a DeprecationWarning."""
    if name == "evaluate":
        warn_renamed("cnnscope.views evaluate", "top1_predictions", stacklevel=3)
        return top1_predictions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _grid_cols(n: int) -> int:
    """Columns of an importance grid: a divisor of ``n`` near a 8:3 layout when there is one."""
    target = math.sqrt(n * 8 / 3)
    divisors = [
        d for d in range(1, n + 1) if n % d == 0 and math.sqrt(n) <= d <= 2.5 * math.sqrt(n)
    ]
    if divisors:
        return min(divisors, key=lambda d: abs(d - target))
    return max(1, math.ceil(target))


def importance_grid(
    importance: FilterImportance,
    path: str | Path | None = None,
    *,
    cols: int | None = None,
    title: str = "",
    cmap: str = "magma",
):
    """Draw the normalised importance of every filter as a grid (filter numbers inside).

    96 filters give the 16 x 6 grid of CNN-VIS; empty cells are blank.

    Returns
    -------
    matplotlib.figure.Figure
        Also saved to ``path`` when given.

    Examples
    --------
    >>> imp = FilterImportance("conv1", 3, np.arange(96.0), 10)
    >>> fig = importance_grid(imp)
    >>> fig.axes[0].images[0].get_array().shape
    (6, 16)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = importance.normalized
    n = len(values)
    cols = cols or _grid_cols(n)
    rows = math.ceil(n / cols)
    cells = np.full(rows * cols, np.nan)
    cells[:n] = values
    grid = cells.reshape(rows, cols)
    fig, ax = plt.subplots(figsize=(min(16, 1.0 + 0.55 * cols), min(12, 1.3 + 0.55 * rows)))
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if n <= 400:
        for f in range(n):
            r, c = divmod(f, cols)
            ax.text(
                c,
                r,
                str(f),
                ha="center",
                va="center",
                fontsize=7 if n > 100 else 8,
                color="white" if values[f] < 0.6 else "black",
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        title
        or f"importance of {importance.layer} filters for class {importance.target} "
        f"({importance.count} images)",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="normalised mean |dlogit/dW_f|")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def labelled_folder(directory: str | Path, model=None) -> list[tuple[Path, int]]:
    """``(image path, class index)`` for every image of a folder with one subfolder per class.

    Subfolders are named by class index (``285/``); with a LoadedModel a class name that
    :meth:`~cnnscope.models.LoadedModel.class_index` understands also works.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "7").mkdir(); (d / "7" / "a.png").touch()
    >>> [(p.name, c) for p, c in labelled_folder(d)]
    [('a.png', 7)]
    """
    from ..images import iter_image_files

    root = Path(directory)
    if not root.is_dir():
        raise CnnscopeError(f"folder not found: {root}")
    samples = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name.isdigit():
            label = int(sub.name)
        elif model is not None and hasattr(model, "class_index"):
            label = model.class_index(sub.name)
        else:
            raise CnnscopeError(f"subfolder {sub.name!r} of {root} is not a class index")
        samples += [(path, label) for path in iter_image_files(sub)]
    if not samples:
        raise CnnscopeError(
            f"no images in class subfolders of {root} (expected {root}/<class index>/*.jpg)"
        )
    return samples


def following_batchnorm(module: nn.Module, layer: str) -> str | None:
    """The batch norm registered right after conv ``layer`` on its channels, if any.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    >>> following_batchnorm(net, "0")
    '1'
    """
    names = [(n, m) for n, m in module.named_modules() if n]
    index = next((k for k, (n, _) in enumerate(names) if n == layer), None)
    if index is None or index + 1 >= len(names):
        return None
    name, sub = names[index + 1]
    conv = names[index][1]
    if (
        isinstance(sub, nn.modules.batchnorm._BatchNorm)
        and sub.affine
        and sub.num_features == conv.weight.shape[0]
    ):
        return name
    return None


def prune_filters(
    module: nn.Module, layer: str, filters: Sequence[int], *, through_bn: bool = True
) -> nn.Module:
    """A deep copy of ``module`` with ``filters`` of conv ``layer`` zeroed.

    The filters' weights and biases are set to zero. With ``through_bn`` (default) the
    scale and shift of a batch norm registered right after the conv (``stem`` ->
    ``stem_bn``) are zeroed on those channels too, so the channels output exactly zero;
    otherwise the batch norm's shift would still pass a constant downstream. The
    caller's module is not touched.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3).eval())
    >>> pruned = prune_filters(net, "0", [1])
    >>> pruned[0].weight[1].abs().sum().item(), net[0].weight[1].abs().sum().item() > 0
    (0.0, True)
    >>> pruned(torch.randn(1, 1, 2, 2))[0, 1].abs().max().item()
    0.0
    """
    conv_weight(module, layer)  # one-line error for a bad name
    clone = copy.deepcopy(module)
    modules = dict(clone.named_modules())
    sub = modules[layer]
    index = torch.as_tensor(sorted({int(f) for f in filters}), dtype=torch.long)
    if len(index) and not (0 <= int(index.min()) and int(index.max()) < sub.weight.shape[0]):
        raise CnnscopeError(f"filter numbers must be in 0-{sub.weight.shape[0] - 1}")
    bn = following_batchnorm(clone, layer) if through_bn else None
    with torch.no_grad():
        sub.weight[index] = 0
        if getattr(sub, "bias", None) is not None:
            sub.bias[index] = 0
        if bn is not None:
            modules[bn].weight[index] = 0
            modules[bn].bias[index] = 0
    return clone


def _inputs(model, paths: Sequence) -> list[torch.Tensor]:
    return [to_input(model, str(p) if isinstance(p, Path) else p) for p in paths]


def top1_predictions(
    module: nn.Module, inputs: Sequence[torch.Tensor], batch: int = 16
) -> np.ndarray:
    """Top-1 predictions of ``module`` for ``1 x C x H x W`` inputs (in batches).

    (It was ``evaluate``, a name that :func:`cnnscope.attribution.evaluate` also has.)

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> top1_predictions(net, [torch.randn(1, 3, 2, 2) for _ in range(5)], batch=2).shape
    (5,)
    """
    engine = Engine(module)
    device = engine.device
    preds = []
    for start in range(0, len(inputs), batch):
        x = torch.cat(list(inputs[start : start + batch])).to(device)
        logits = engine.forward(x, cache=False, grad=False, layers=()).activation("logits")
        preds.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


@dataclass
class PruningSweep:
    """Accuracy after zeroing the filters whose normalised importance is below a threshold.

    ``accuracy`` is over all images of the labelled folder, ``target_accuracy`` over
    the images of the target class only (``None`` when there are none). ``single``
    holds the CNN-VIS direct analysis: the least / the most important filter alone zeroed.
    """

    layer: str
    target: int
    thresholds: list[float]
    pruned: list[int]
    accuracy: list[float]
    target_accuracy: list[float | None]
    images: int
    target_images: int
    importance: FilterImportance
    single: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "layer": self.layer,
            "target": self.target,
            "images": self.images,
            "target_images": self.target_images,
            "filters": len(self.importance.values),
            "rows": [
                {"threshold": t, "pruned": p, "accuracy": a, "target_accuracy": ta}
                for t, p, a, ta in zip(
                    self.thresholds, self.pruned, self.accuracy, self.target_accuracy
                )
            ],
            "single": self.single,
            "importance": self.importance.to_dict(),
        }


def pruning_sweep(
    model,
    directory: str | Path,
    layer: str,
    target: int | str,
    *,
    thresholds: Sequence[float] | None = None,
    importance: FilterImportance | None = None,
    importance_dir: str | Path | None = None,
    batch: int = 16,
    through_bn: bool = True,
    progress: bool = True,
) -> PruningSweep:
    """Zero the filters of ``layer`` below importance thresholds; measure the accuracy.

    Parameters
    ----------
    model : LoadedModel
        The network and its preprocessing (never modified: pruning works on copies).
    directory : path
        Labelled folder, one subfolder per class index (``DIR/285/*.jpg``).
    layer : str
        Conv module name.
    target : int or str
        The class whose importance ranks the filters.
    thresholds : sequence of float, optional
        Thresholds on the normalised importance in [0, 1]; a filter is zeroed when its
        importance is strictly below. By default the 0, 10, ..., 90 % quantiles.
    importance : FilterImportance, optional
        Precomputed importance; otherwise measured on ``importance_dir`` (all images) or
        on ``directory/<target>/``.
    through_bn : bool
        Also zero the following batch norm on the pruned channels (see
        :func:`prune_filters`), so that they output exactly zero.

    Returns
    -------
    PruningSweep
    """
    from tqdm.auto import tqdm

    module = module_of(model)
    conv_weight(module, layer)
    target = class_index(model, target)
    samples = labelled_folder(directory, model)
    labels = np.array([c for _, c in samples])
    if importance is None:
        if importance_dir is not None:
            from ..images import iter_image_files

            imp_images = list(iter_image_files(importance_dir))
        else:
            imp_images = [p for p, c in samples if c == target]
        if not imp_images:
            raise CnnscopeError(
                f"no images of class {target} to measure the importance on "
                f"(add {Path(directory) / str(target)}/ or give an importance folder)"
            )
        importance = filter_importance(
            model, [str(p) for p in imp_images], layer, target, progress=progress
        )
    norm = importance.normalized
    if thresholds is None:
        thresholds = sorted({float(np.quantile(norm, q)) for q in np.linspace(0, 0.9, 10)})
    thresholds = [float(t) for t in thresholds]
    inputs = _inputs(model, [p for p, _ in samples])
    is_target = labels == target

    def score(filters) -> tuple[float, float | None]:
        pred = top1_predictions(
            prune_filters(module, layer, filters, through_bn=through_bn), inputs, batch
        )
        ok = pred == labels
        return float(ok.mean()), (float(ok[is_target].mean()) if is_target.any() else None)

    accuracy, target_acc, pruned = [], [], []
    for t in tqdm(thresholds, desc="pruning sweep", disable=not progress, leave=False):
        filters = np.flatnonzero(norm < t)
        a, ta = score(filters)
        accuracy.append(a)
        target_acc.append(ta)
        pruned.append(int(len(filters)))
    rank = importance.ranking()
    single = {}
    for key, f in (("least", int(rank[0])), ("most", int(rank[-1]))):
        a, ta = score([f])
        single[key] = {"filter": f, "accuracy": a, "target_accuracy": ta}
    return PruningSweep(
        layer=layer,
        target=target,
        thresholds=thresholds,
        pruned=pruned,
        accuracy=accuracy,
        target_accuracy=target_acc,
        images=len(samples),
        target_images=int(is_target.sum()),
        importance=importance,
        single=single,
    )


def plot_sweep(sweep: PruningSweep, path: str | Path | None = None, title: str = ""):
    """Accuracy against the importance threshold (matplotlib); saved to ``path`` if given.

    Examples
    --------
    >>> imp = FilterImportance("stem", 1, np.arange(4.0), 2)
    >>> sweep = PruningSweep("stem", 1, [0.0, 0.5], [0, 2], [0.9, 0.5], [1.0, 0.25], 10, 4, imp)
    >>> len(plot_sweep(sweep).axes[0].lines)
    2
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    t = np.array(sweep.thresholds)
    ax.plot(t, 100 * np.array(sweep.accuracy), "o-", label=f"all images ({sweep.images})")
    if sweep.target_images:
        ax.plot(
            t,
            [np.nan if v is None else 100 * v for v in sweep.target_accuracy],
            "s--",
            label=f"class {sweep.target} ({sweep.target_images})",
        )
    for x, p, a in zip(t, sweep.pruned, sweep.accuracy):
        ax.annotate(
            str(p), (x, 100 * a), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center"
        )
    ax.set_xlabel("importance threshold (normalised); numbers: filters zeroed")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    n = len(sweep.importance.values)
    ax.set_title(
        title
        or f"zeroing {sweep.layer} filters by importance for class {sweep.target} ({n} filters)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
