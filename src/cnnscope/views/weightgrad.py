"""Gradients of a class logit with respect to a conv layer's weights, as volumes.

For a class neuron ``c`` (the logit, before softmax) and a conv layer with weights
``W`` (``filters x in x kh x kw``), :func:`weight_gradients` computes ``d logit_c / dW``
for each image of a list through the engine. :func:`gradient_volume` turns one gradient
into a ``filters x kh x kw`` volume (summed over input channels as in CNN-VIS, or
their norm), :func:`scale_volumes` maps a series of volumes to 0..255 on one joint scale
(or to the CNN-VIS binary 0/1 threshold), and :func:`series_frames` /
:func:`save_gif` / :func:`weightgrad_figure` play them as a time series, one image per
step: reference class, similar class, dissimilar class, each correct and wrong.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import render
from ..engine import Engine
from ..errors import CnnscopeError, UnitSpecError
from ._common import class_index, class_label, grad_ready, module_of, to_input
from .mosaic import draw_grid

__all__ = [
    "FRAME_MS",
    "REDUCTIONS",
    "SCALES",
    "WeightGradient",
    "gradient_volume",
    "iter_weight_gradients",
    "save_gif",
    "scale_volumes",
    "series_frames",
    "weight_gradients",
    "weightgrad_figure",
]

#: Milliseconds each image of a weight-gradient series shows in its GIF.
FRAME_MS = 1200


log = logging.getLogger(__name__)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = FRAME_MS) -> Path:
    """:func:`cnnscope.render.save_gif` with the weight-gradient frame time as default.

    Examples
    --------
    >>> import tempfile, os
    >>> p = save_gif([np.zeros((4, 4, 3), np.uint8)] * 2, os.path.join(tempfile.mkdtemp(), "w.gif"))
    >>> p.suffix
    '.gif'
    """
    return render.save_gif(frames, path, duration_ms)


#: How a filter's in-channels are folded into one ``kh x kw`` slab.
REDUCTIONS = ("sum", "l2", "abs", "none")
#: ``minmax``: 0..255; ``binary``: the CNN-VIS 0/1 threshold at mid-range;
#: ``symmetric``: 0..255 with a zero gradient at 127.5.
SCALES = ("minmax", "binary", "symmetric")


@dataclass
class WeightGradient:
    """``d logit[target] / d W`` of one image.

    Attributes
    ----------
    name : str
        The image's display name.
    gradient : numpy.ndarray
        Same shape as the weight: ``filters x in/groups x kh x kw`` (float64).
    target : int
        The class neuron differentiated.
    logit : float
        Its value for this image.
    predicted : int
        The model's top class for this image.
    layer : str
        The conv layer.
    """

    name: str
    gradient: np.ndarray
    target: int
    logit: float
    predicted: int
    layer: str

    @property
    def correct(self) -> bool:
        """Whether the image is classified as the target class."""
        return self.predicted == self.target

    @property
    def norm(self) -> float:
        """Frobenius norm of the whole gradient."""
        return float(np.linalg.norm(self.gradient))

    def filter_norms(self) -> np.ndarray:
        """The gradient norm of each filter (over in-channels x kh x kw)."""
        return np.linalg.norm(self.gradient.reshape(len(self.gradient), -1), axis=1)


def _names(images, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(images):
            raise CnnscopeError("give one name per image")
        return [str(n) for n in names]
    out = []
    for k, img in enumerate(images):
        if isinstance(img, (str, Path)):
            out.append(Path(str(img)).name)
        else:
            out.append(f"image {k}")
    return out


def iter_weight_gradients(
    model,
    images: Sequence,
    layer: str,
    target: int | str,
    *,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Iterator[WeightGradient]:
    """:func:`weight_gradients`, one image at a time (for folders of many images).

    The forwards bypass the engine's cache: a cached graph would go stale if the weights
    were edited in place between two calls.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    >>> [g.name for g in iter_weight_gradients(net, [torch.randn(1, 3, 2, 2)] * 2, "0", 0)]
    ['image 0', 'image 1']
    """
    from tqdm.auto import tqdm

    module = module_of(model)
    images = list(images)
    if not images:
        raise CnnscopeError("give at least one image")
    target = class_index(model, target)
    work, weight, copied = grad_ready(module, layer)
    engine = Engine(work) if copied else Engine.for_module(module)
    labels = _names(images, names)
    for name, image in tqdm(
        list(zip(labels, images)), desc="weight gradients", disable=not progress, leave=False
    ):
        x = to_input(model, image)
        # only the logits are read: record no layer (faster, and no memory for them)
        fwd = engine.forward(x[:1].to(dtype=weight.dtype), cache=False, layers=())
        logits = fwd.activation("logits")
        if logits.dim() != 2:
            raise CnnscopeError(
                f"the model output has shape {tuple(logits.shape)}, not N x classes"
            )
        if not 0 <= target < logits.shape[1]:
            raise UnitSpecError(f"class {target} is out of range 0-{logits.shape[1] - 1}")
        seed = torch.zeros_like(logits)
        seed[0, target] = 1.0
        grad = fwd.grad("logits", seed, to=weight)
        yield WeightGradient(
            name=name,
            gradient=grad.detach().cpu().double().numpy(),
            target=target,
            logit=float(logits[0, target]),
            predicted=int(logits[0].argmax()),
            layer=layer,
        )


def weight_gradients(
    model,
    images: Sequence,
    layer: str,
    target: int | str,
    *,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> list[WeightGradient]:
    """The gradient of the ``target`` logit with respect to ``layer``'s weights, per image.

    One recorded forward per image (through the engine) and one backward from the
    one-hot logit seed to the weight tensor. When the weight does not require grad (a
    frozen model), a private ``copy.deepcopy`` of the module is differentiated; the
    caller's model is never changed.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        The network.
    images : sequence
        PIL images, paths, gallery names or preprocessed tensors (one image each).
    layer : str
        A conv module name (``stem``, ``blocks.3.depthwise_conv`` ...).
    target : int or str
        The class neuron (index, or class name for a LoadedModel).
    names : sequence of str, optional
        Display names of the images.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of WeightGradient

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(18, 4))
    >>> g = weight_gradients(net, [torch.randn(1, 3, 5, 5)], "0", 1)[0]
    >>> g.gradient.shape
    (2, 3, 3, 3)
    """
    return list(iter_weight_gradients(model, images, layer, target, names=names, progress=progress))


def gradient_volume(gradient, reduce: str = "sum") -> np.ndarray:
    """A ``filters x kh x kw`` volume from a ``filters x in x kh x kw`` weight gradient.

    Parameters
    ----------
    gradient : array
        The weight gradient (or a :class:`WeightGradient`).
    reduce : {"sum", "l2", "abs", "none"}
        ``sum``: sum over input channels (CNN-VIS); ``l2``: their Euclidean norm;
        ``abs``: sum of absolute values; ``none``: input channels stacked along ``y``
        (``filters x (in * kh) x kw``, useful for 1x1 convolutions).

    Examples
    --------
    >>> g = np.arange(8.0).reshape(2, 2, 1, 2)
    >>> gradient_volume(g).tolist()
    [[[2.0, 4.0]], [[10.0, 12.0]]]
    >>> gradient_volume(g, "none").shape
    (2, 2, 2)
    """
    if isinstance(gradient, WeightGradient):
        gradient = gradient.gradient
    g = np.asarray(gradient, dtype=np.float64)
    if g.ndim != 4:
        raise CnnscopeError(f"expected a conv weight gradient F x C x kh x kw, got {g.shape}")
    if reduce == "sum":
        return g.sum(axis=1)
    if reduce == "l2":
        return np.sqrt((g**2).sum(axis=1))
    if reduce == "abs":
        return np.abs(g).sum(axis=1)
    if reduce == "none":
        f, c, kh, kw = g.shape
        return g.reshape(f, c * kh, kw)
    raise CnnscopeError(f"unknown reduction {reduce!r}: use {', '.join(REDUCTIONS)}")


def scale_volumes(
    volumes: Sequence[np.ndarray], mode: str = "minmax", joint: bool = True
) -> list[np.ndarray]:
    """Map volumes to uint8: 0..255 (``minmax``, ``symmetric``) or 0/1 (``binary``).

    ``minmax`` is ``rint(255 (v - min) / (max - min))``; ``binary`` is
    ``rint((v - min) / (max - min))``, the CNN-VIS files' mid-range threshold;
    ``symmetric`` is ``rint(127.5 + 127.5 v / max|v|)`` so that zero stays mid-grey.
    With ``joint`` the min / max are taken over all volumes, so a series shares one scale.

    Examples
    --------
    >>> v = [np.array([[[-1.0, 0.0, 3.0]]]), np.array([[[1.5, 1.5, 1.5]]])]
    >>> [a.ravel().tolist() for a in scale_volumes(v)]
    [[0, 64, 255], [159, 159, 159]]
    >>> [a.ravel().tolist() for a in scale_volumes(v, "binary")]
    [[0, 0, 1], [1, 1, 1]]
    """
    if mode not in SCALES:
        raise CnnscopeError(f"unknown scaling {mode!r}: use {', '.join(SCALES)}")
    vols = [np.asarray(v, dtype=np.float64) for v in volumes]
    groups = [vols] if joint else [[v] for v in vols]
    out = []
    for group in groups:
        lo = min(float(v.min()) for v in group)
        hi = max(float(v.max()) for v in group)
        peak = max(float(np.abs(v).max()) for v in group)
        for v in group:
            if mode == "symmetric":
                s = 127.5 + 127.5 * v / peak if peak > 0 else np.full_like(v, 127.5)
            else:
                s = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
                s = s * 255.0 if mode == "minmax" else s
            out.append(np.rint(s).astype(np.uint8))
    return out


def _caption(model, g: WeightGradient) -> str:
    verdict = "= target, correct" if g.correct else f"not the target {g.target}, wrong"
    return (
        f"{g.name}: predicted {class_label(model, g.predicted)} ({g.predicted}, {verdict}); "
        f"logit[{g.target}] {g.logit:.2f}; |grad| {g.norm:.3g}"
    )


def series_frames(
    results: Sequence[WeightGradient],
    model=None,
    *,
    reduce: str = "sum",
    scale: str = "minmax",
    cmap: str | None = None,
    joint: bool = True,
    min_tile: int = 48,
) -> list[np.ndarray]:
    """One picture per image: every filter's ``kh x kw`` gradient slab.

    With ``joint`` (default) all pictures share one scale, so that the gradient
    magnitudes of the images compare; otherwise each is stretched alone.
    Tiles are numbered by filter; each picture is captioned with the image, its
    predicted class, whether it is the target class, the logit and the gradient norm.
    ``cmap`` defaults to ``gray`` for ``minmax``/``binary`` and ``RdBu_r`` for
    ``symmetric``. All frames have the same size.

    Examples
    --------
    >>> g = [WeightGradient(n, np.random.randn(8, 3, 3, 3), 1, 0.0, 1, "stem") for n in "ab"]
    >>> frames = series_frames(g)
    >>> len(frames), frames[0].shape == frames[1].shape
    (2, True)
    """
    from ..render import colorize

    if not results:
        raise CnnscopeError("no gradients to draw")
    vols = [gradient_volume(g, reduce) for g in results]
    scaled = scale_volumes(vols, scale, joint=joint)
    top = 1.0 if scale == "binary" else 255.0
    cmap = cmap or ("RdBu_r" if scale == "symmetric" else "gray")
    frames = []
    for g, vol in zip(results, scaled):
        tiles = [colorize(slab / top, cmap) for slab in vol.astype(np.float32)]
        image, _ = draw_grid(
            tiles,
            [str(f) for f in range(len(tiles))],
            min_tile=min_tile,
            title=_caption(model, g),
            outline=(160, 160, 160),
        )
        frames.append(image)
    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    padded = []
    for f in frames:
        canvas = np.full((height, width, 3), 255, np.uint8)
        canvas[: f.shape[0], : f.shape[1]] = f
        padded.append(canvas)
    return padded


def weightgrad_figure(
    results: Sequence[WeightGradient], model=None, *, reduce: str = "sum", title: str = ""
):
    """The gradient volumes (``filters x ky x kx``) of a list of images as a plotly
    animation: one frame per image, with play button and slider, on one symmetric scale.

    Examples
    --------
    >>> g = WeightGradient("a", np.ones((4, 3, 3, 3)), 1, 0.5, 1, "stem")
    >>> len(weightgrad_figure([g, g]).frames)
    2
    """
    from .volume import volume_series_figure

    if not results:
        raise CnnscopeError("no gradients to show")
    vols = [gradient_volume(g, reduce) for g in results]
    names = [
        f"{k + 1}. {g.name} ({'correct' if g.correct else 'wrong'})" for k, g in enumerate(results)
    ]
    head = title or f"d logit[{results[0].target}] / d {results[0].layer}.weight"
    return volume_series_figure(
        vols,
        names,
        captions=[
            f"{html.escape(head)}<br><sub>{html.escape(_caption(model, g))}</sub>" for g in results
        ],
        axis_titles=("kx", "ky" if reduce != "none" else "in x ky", "filter"),
    )
