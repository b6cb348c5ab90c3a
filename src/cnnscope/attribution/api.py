"""The verb: :func:`attribute` runs one registered method and wraps its maps."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..engine.rules import warn_once
from ..errors import CnnscopeError, warn_renamed
from ..models import LoadedModel
from .context import Context
from .inputs import prepare_input
from .registry import Method, MethodOutput, get_method
from .result import Attribution

log = logging.getLogger(__name__)

__all__ = ["attribute"]


def attribute(
    model: LoadedModel | nn.Module,
    image,
    method: str = "guided_backprop",
    target=None,
    layer: str | Sequence[str] | None = None,
    *,
    quirks: bool = False,
    legacy: bool | None = None,
    batch_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
    **options,
) -> Attribution:
    """Explain what a model's output (or one unit) owes to each input pixel.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        A model from :func:`cnnscope.load_model`, or a bare module (then ``image``
        must be a preprocessed tensor and targets class indices or units).
    image : PIL image, list of PIL images, path, array, or tensor
        One image (``3 x H x W`` tensor or a picture) or a batch (list, or an
        ``N x 3 x H x W`` tensor, already preprocessed).
    method : str
        A name from :data:`~cnnscope.attribution.METHODS` (``cnnscope attribute --list``), e.g.
        ``gradient``, ``guided_backprop``, ``integrated_gradients``, ``smoothgrad``,
        ``grad_cam``, ``score_cam``, ``lrp``.
    target : int, str, Unit, or list
        ``None``: each image's top-1 class. A class index or name. A unit
        ``LAYER:CHANNEL`` (the sum of that channel's map) or ``LAYER:CHANNEL@Y,X``
        (one neuron). A list gives one target per image.
    layer : str or list of str, optional
        The layer of CAM methods (default: the last layer with a spatial map larger
        than 1 x 1), several for fused CAMs, or the layer where LRP relevance is read.
    quirks : bool
        Reproduce pytorch-cnn-visualizations' quirks: Grad-CAM and Score-CAM
        start from ones, SmoothGrad's noise std is ``(4 / (max - min))**2``, IG uses
        101 Riemann points from a zero baseline and is not multiplied by the input.
    legacy : bool, optional
        Deprecated spelling of ``quirks`` (a ``DeprecationWarning``).
    batch_size : int, optional
        Rows per forward/backward chunk of inner samples (IG steps, noise samples,
        Score-CAM masks). By default as many as fit ``max_memory`` (capped).
    max_memory : int, optional
        Memory budget in bytes of one chunk (default 2 GiB).
    progress : bool
        Show a progress bar over chunks.
    **options
        Method options, e.g. ``steps=64`` for IG, ``samples=25`` for SmoothGrad,
        ``composite="epsilon_gamma_box"`` for LRP (see ``METHODS[name].options``).

    Returns
    -------
    Attribution

    Raises
    ------
    CnnscopeError
        For an unknown method, option, layer or target, or an unusable input
        (one line, with suggestions).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> model = load_model()
    >>> attr = attribute(model, load_gallery_image("chelsea"), "integrated_gradients", steps=16)
    >>> attr.array.shape, attr.target.label
    ((3, 224, 224), 'Egyptian cat')
    """
    if legacy is not None:
        warn_renamed("attribute(legacy=...)", "attribute(quirks=...)")
        quirks = quirks or bool(legacy)
    spec = get_method(method)
    _check_call(spec, options, layer)
    module, loaded, x, single, pictures = prepare_input(model, image)
    if x.shape[1] != 3 and spec.family in ("path", "noise"):
        log.debug("input with %d channels", x.shape[1])
    ctx = Context(
        module,
        x,
        target,
        loaded=loaded,
        quirks=quirks,
        batch_size=batch_size,
        max_memory=max_memory,
        progress=progress,
    )
    out = _run(spec, ctx, {**spec.fixed, **options}, layer)
    return Attribution(
        _finite_maps(out.maps, spec.name),
        spec,
        ctx.targets,
        ctx.scores,
        single=single,
        pictures=pictures,
        layer=out.layer,
        meta=out.meta,
        options={**options, "quirks": quirks} if quirks else dict(options),
    )


def _check_call(spec: Method, options: dict, layer) -> None:
    """One-line errors for options the method does not take, or a layer it ignores."""
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "none"
        raise CnnscopeError(f"method {spec.name!r} has no option {unknown[0]!r} (options: {known})")
    if layer is not None and not spec.uses_layer:
        raise CnnscopeError(f"method {spec.name!r} takes no layer (it explains the input pixels)")


def _run(spec: Method, ctx: Context, kwargs: dict, layer) -> MethodOutput:
    """Call the method function, with each rule warning once and GPU memory errors in one line."""
    if spec.uses_layer:
        kwargs["layer"] = layer
    try:
        with warn_once():  # a rule's warning once per call, not once per forward
            return spec.fn(ctx, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise CnnscopeError(
            "out of GPU memory: pass a smaller batch_size (--batch-size) or max_memory"
        ) from None


def _finite_maps(maps: torch.Tensor, name: str) -> torch.Tensor:
    """N x C x H x W maps (a channel axis added to N x H x W), non-finite values set to 0."""
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if not torch.isfinite(maps).all():
        log.warning("%s produced non-finite values; they are set to 0", name)
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return maps
