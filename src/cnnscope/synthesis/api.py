"""High-level entry points: unit visualizations (batched, cached), class images, inversion, dreams."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..engine import INPUT, LOGITS, Engine, Unit, strength_layer
from ..errors import CnnscopeError
from ..models import as_loaded
from .config import SynthesisConfig
from .objectives import Neuron, unit_objective
from .outputs import run_record, write_png
from .render import SynthesisResult, synthesize

__all__ = [
    "CLASS_DEFAULTS",
    "DREAM_DEFAULTS",
    "INVERT_DEFAULTS",
    "VISUALIZE_DEFAULTS",
    "class_image",
    "deepdream",
    "driven_unit",
    "invert",
    "unit_visualization",
    "visualize_config",
    "visualize_units",
]

log = logging.getLogger(__name__)

#: Lucid-style settings for unit visualizations: Fourier parameterization with
#: decorrelated colour, Adam, random pad/jitter/scale/rotate, no explicit penalty.
VISUALIZE_DEFAULTS: dict = dict(
    param="fft",
    decorrelate=True,
    optimizer="adam",
    learning_rate=0.05,
    p_reg=0.0,
    tv_reg=0.0,
    tile=False,
    pad=8,
    jitter=8,
    scales=[0.92, 0.96, 1.0, 1.04, 1.08],
    angles=[-8.0, -4.0, 0.0, 4.0, 8.0],
    jitter2=4,
    learning_rate_decay_iter=1_000_000,
    output_iter=0,
)

#: Class images with seed 2's regularized variant's tricks (a Gaussian blur every few
#: steps, L2 decay, clipping of the gradient's norm) on Lucid's Fourier parameterization
#: with decorrelated colour and random transforms. (On EfficientNet-Lite0, plain pixels
#: with SGD give grey images with a few class fragments; see docs/synthesis.md.)
CLASS_DEFAULTS: dict = dict(
    VISUALIZE_DEFAULTS,
    blur_every=10,
    blur_sigma=0.5,
    l2_decay=3e-8,
    clip_grad_norm=1.0,
)

#: Inversion (Mahendran & Vedaldi): pixels, alpha-norm (alpha 6) and TV (beta 2) priors,
#: Adam with a halving learning rate. The representation barely constrains global
#: contrast, so the result is shown min-max stretched (``rescale_image``).
INVERT_DEFAULTS: dict = dict(
    param="pixel",
    optimizer="adam",
    learning_rate=12.0,
    alpha=6.0,
    p_scale=128.0,
    p_reg=4e-5,
    beta=2.0,
    tv_reg=2e-8,
    tv_reg_scale=1.0,
    learning_rate_decay_iter=80,
    learning_rate_decay_fraction=0.5,
    init_scale=10.0,
    init_blur=1.0,
    tile=False,
    clamp_pixels=True,
    rescale_image=True,
    output_iter=0,
)

#: DeepDream of a photo: octaves (geometric sizes up to the photo's size) that keep the
#: photo's detail (each octave starts from the photo at its size plus the upscaled dream),
#: 224x224 tiles in checkerboard order, RMSProp, jitter, a blur of the gradient. No prior:
#: the few steps per octave keep the photo (the mean-of-squares objective has tiny
#: gradients, so any p-norm or TV weight must be tiny too).
DREAM_DEFAULTS: dict = dict(
    param="pixel",
    optimizer="rmsprop",
    learning_rate=1.5,
    decay_rate=0.9,
    p_reg=0.0,
    p_reg_aux=0.0,
    tv_reg=0.0,
    keep_detail=True,
    jitter=16,
    grad_blur=1.0,
    tile=True,
    batch_size=8,
    use_pixel_learning_rates=True,
    output_iter=0,
)


def visualize_config(
    model,
    units: Sequence[Unit | str],
    steps: int = 128,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    **overrides,
) -> SynthesisConfig:
    """The :class:`SynthesisConfig` that :func:`visualize_units` runs.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> visualize_config(load_model(), ["blocks.5:3", "blocks.9:1"], steps=8).objective
    'blocks.5:3 | blocks.9:1'
    """
    if not units:
        raise CnnscopeError("give at least one unit to visualize")
    objs = [unit_objective(driven_unit(model, u)) for u in units]
    h, w = _size(size, model.preprocess_config.input_size)
    return _config(
        VISUALIZE_DEFAULTS,
        overrides,
        steps,
        seed,
        objective=" | ".join(o.spec for o in objs),
        batch=len(objs),
        initial_size=f"{h}x{w}",
    )


def driven_unit(model, unit: Unit | str) -> Unit:
    """``unit`` read where optimisation can drive it: at its layer's pre-activation.

    A unit of a ReLU-family layer that is off for the starting image has a zero gradient,
    and its picture would stay grey; as in Lucid ("pre_relu"), it is read at the
    activation's input, which rises with it and is never flat: where the engine measures
    and seeds every unit (:func:`cnnscope.engine.strength_layer`). Other units are
    returned as they are.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> str(driven_unit(load_model(), "head_act:3")), str(driven_unit(load_model(), "blocks.5:3"))
    ('head_bn:3', 'blocks.5:3')
    """
    u = unit if isinstance(unit, Unit) else Unit.parse(str(unit))
    if u.layer in (INPUT, LOGITS):
        return u
    param = next(model.module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    grey = torch.zeros(1, 3, *model.preprocess_config.input_size, device=device)
    fwd = Engine.for_module(model.module).forward(grey, grad=False)
    return Unit(strength_layer(fwd, u.layer), u.channel, u.pos)


def _config(defaults: dict, overrides: dict, steps: int, seed: int, **settings) -> SynthesisConfig:
    """``defaults``, then what the function sets (``steps``, ``seed`` and ``settings``), then
    the caller's ``overrides``."""
    settings.update(num_steps=int(steps), seed=int(seed))
    return SynthesisConfig(**{**defaults, **settings, **overrides})


def _synthesize(model, cfg: SynthesisConfig, progress) -> SynthesisResult:
    """Run ``cfg``, keeping a snapshot every ``output_iter`` steps when it is set (> 0).

    The snapshots land in ``result.frames``; ``save_result(..., behaviors={"save"})``
    writes them as ``STEM_SIZE_STEP.png``, as ``dream`` does.
    """
    return synthesize(model, cfg, progress=progress, keep_frames=cfg.output_iter > 0)


def _size(size, default) -> tuple[int, int]:
    if size is None:
        return int(default[0]), int(default[1])
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise CnnscopeError(f"bad size {size!r}: give N or (H, W)")
    return int(size[0]), int(size[1])


def visualize_units(
    model,
    units: Sequence[Unit | str],
    steps: int = 128,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    *,
    progress: bool | Callable[[int, int], None] = False,
    return_result: bool = False,
    **overrides,
) -> list[np.ndarray] | tuple[list[np.ndarray], SynthesisResult]:
    """Feature visualizations of several units, rendered together in one batch.

    Each image of the batch maximizes one unit: ``LAYER:C`` (the channel's mean) or
    ``LAYER:C@Y,X`` (one neuron). Lucid-style settings (:data:`VISUALIZE_DEFAULTS`);
    any :class:`SynthesisConfig` option can be overridden by keyword.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model.
    units : list of Unit or str
        The units, one image each.
    steps : int
        Optimisation steps.
    size : int or (int, int), optional
        Image size; the model's input size by default.
    seed : int
        Random seed: the same seed gives bitwise the same images (same device/threads).
    progress : bool or callable
        tqdm bar, or ``progress(done, total)`` after each step.
    return_result : bool
        Also return the :class:`SynthesisResult` (values, config; with
        ``output_iter=N``, a snapshot every N steps in ``frames``).
    **overrides
        Any :class:`SynthesisConfig` option (see :data:`VISUALIZE_DEFAULTS`).

    Returns
    -------
    list of numpy.ndarray
        One H x W x 3 uint8 image per unit.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> imgs = visualize_units(load_model(), ["blocks.3:1", "blocks.3:2"], steps=2, size=64)
    >>> len(imgs), imgs[0].shape
    (2, (64, 64, 3))
    """
    model = as_loaded(model)
    cfg = visualize_config(model, units, steps, size, seed, **overrides)
    result = _synthesize(model, cfg, progress)
    return (result.pictures, result) if return_result else result.pictures


def unit_visualization(
    model,
    unit: Unit | str,
    cache_dir: str | os.PathLike,
    *,
    steps: int = 128,
    size: int | tuple[int, int] | None = 160,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The cached PNG of a unit's feature visualization, rendering it if needed.

    The file name hashes the model, the unit and the settings, so a changed setting
    renders anew. A unit with a position (``LAYER:C@Y,X``) is drawn as the channel's
    neuron at the centre of the synthesis grid (a convolution's neurons share weights, so
    all positions want the same picture, and the tree's positions refer to another size);
    without one, as the channel's mean. The PNG is written atomically (a reader never sees half a file) with
    the run's JSON record beside it. Safe to call from a background job.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model.
    unit : Unit or str
        ``LAYER:C`` or ``LAYER:C@Y,X``.
    cache_dir : path
        Folder of the cache (created if missing).
    steps, size, seed
        As in :func:`visualize_units`.
    progress : callable, optional
        ``progress(done, total)`` after each step (e.g. to show progress in a page).

    Returns
    -------
    pathlib.Path
        The PNG.

    Examples
    --------
    >>> import tempfile
    >>> from cnnscope.models import load_model
    >>> p = unit_visualization(load_model(), "blocks.3:1", tempfile.mkdtemp(), steps=2, size=48)
    >>> p.suffix, p.exists()
    ('.png', True)
    """
    u = unit if isinstance(unit, Unit) else Unit.parse(str(unit))
    driven = driven_unit(model, u)
    if u.pos is not None:
        # Convolution shares a channel's weights across positions: every position's
        # neuron wants the same picture, drawn at the centre of the synthesis grid.
        objective = Neuron(driven.layer, driven.channel).spec
        label = f"{u.layer}:{u.channel}@centre"
    else:
        objective, label = unit_objective(driven).spec, str(u)
    cfg = visualize_config(model, [u], steps, size, seed, objective=objective)
    key = json.dumps(
        {
            "model": getattr(model, "name", "?"),
            "params": _param_digest(model),
            "config": cfg.to_dict(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe_name(label)}-{digest}.png"
    if path.exists():
        return path
    result = synthesize(model, cfg, progress=progress if progress is not None else False)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        write_png(result.pictures[0], tmp)
        record = run_record(result, model, 0, {"unit": str(u)})
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _safe_name(label: str) -> str:
    """``label`` as a file name: characters other than letters, digits, ``-_.`` become ``_``.

    Examples
    --------
    >>> _safe_name("blocks.4:7@2,3")
    'blocks.4_7_2_3'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _param_digest(model) -> str:
    """A cheap fingerprint of the weights (a few values of each tensor)."""
    h = hashlib.sha1()
    for name, t in list(model.module.state_dict().items())[
        :: max(1, len(model.module.state_dict()) // 16)
    ]:
        flat = t.detach().flatten()
        h.update(name.encode())
        h.update(flat[: min(8, flat.numel())].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def class_image(
    model,
    cls: int | str,
    steps: int = 200,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    *,
    progress: bool | Callable[[int, int], None] = False,
    **overrides,
) -> SynthesisResult:
    """An image that maximizes a class logit, with blur, L2 decay and clipping.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model.
    cls : int or str
        Class index or name (``"tabby"``, ``285``).
    steps, size, seed
        Optimisation steps, image size (model input by default), random seed.
    **overrides
        Any :class:`SynthesisConfig` option (see :data:`CLASS_DEFAULTS`).
        ``output_iter=N`` keeps a snapshot every N steps in ``result.frames``.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> r = class_image(load_model(), "tabby", steps=2, size=64)
    >>> r.objective, r.pictures[0].shape
    ('class(281)', (64, 64, 3))
    """
    h, w = _size(size, model.preprocess_config.input_size)
    cfg = _config(
        CLASS_DEFAULTS, overrides, steps, seed, objective=f"class({cls})", initial_size=f"{h}x{w}"
    )
    return _synthesize(model, cfg, progress)


def invert(
    model,
    image: str,
    layer: str,
    steps: int = 200,
    seed: int = 0,
    *,
    progress: bool | Callable[[int, int], None] = False,
    **overrides,
) -> SynthesisResult:
    """Reconstruct an image from one layer's representation (Mahendran & Vedaldi).

    Minimises ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + p_reg |x / p_scale|_alpha^alpha
    + tv_reg TV_beta(x)`` from noise, at the model's input size.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model.
    image : str
        Image file or gallery name (resized to the model's input size, squashed).
    layer : str
        The layer whose representation is inverted.
    steps, seed
        Optimisation steps and random seed.
    **overrides
        Any :class:`SynthesisConfig` option (see :data:`INVERT_DEFAULTS`).
        ``output_iter=N`` keeps a snapshot every N steps in ``result.frames``.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> r = invert(load_model(), "coffee", "blocks.2", steps=2)
    >>> r.objective
    'invert(blocks.2, coffee)'
    """
    if "," in image or "(" in image or ")" in image:
        raise CnnscopeError(f"image name {image!r} must not contain commas or parentheses")
    h, w = model.preprocess_config.input_size
    objective = f"invert({layer}, {image})"
    cfg = _config(
        INVERT_DEFAULTS, overrides, steps, seed, objective=objective, initial_size=f"{h}x{w}"
    )
    return _synthesize(model, cfg, progress)


def deepdream(
    model,
    image: str,
    layer: str,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    *,
    progress: bool | Callable[[int, int], None] = False,
    **overrides,
) -> SynthesisResult:
    """DeepDream a photo: maximize the mean square of a layer, over octaves, tiled.

    The last octave has the photo's size (or ``size``, H x W); each earlier one is
    ``octave_scale`` times smaller.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> r = deepdream(load_model(), "coffee", "blocks.4", octaves=2, steps=1, size=(60, 90))
    >>> r.sizes, r.pictures[0].shape
    ([(43, 64), (60, 90)], (60, 90, 3))
    """
    if octaves < 1 or octave_scale <= 0:
        raise CnnscopeError("octaves must be >= 1 and octave_scale > 0")
    final = f"{size[0]}x{size[1]}" if size else "x1"
    if size:
        first = (
            round(size[0] / octave_scale ** (octaves - 1)),
            round(size[1] / octave_scale ** (octaves - 1)),
        )
        initial = f"{int(first[0])}x{int(first[1])}"
    else:
        initial = f"x{1.0 / octave_scale ** (octaves - 1):.6f}"
    cfg = _config(
        DREAM_DEFAULTS,
        overrides,
        steps,
        seed,
        objective=f"deepdream({layer})",
        initial_image=image,
        initial_size=initial,
        final_size=final,
        num_sizes=int(octaves),
    )
    return synthesize(model, cfg, progress=progress)
