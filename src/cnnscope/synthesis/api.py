"""High-level entry points: unit visualizations (batched, cached), class images, inversion, dreams."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..engine import INPUT, LOGITS, Engine, Unit, model_fingerprint, strength_layer
from ..errors import CnnscopeError
from ..models import as_loaded
from .config import SynthesisConfig
from .loop import SynthesisResult, synthesize
from .objectives import Neuron, unit_objective
from .outputs import run_record, write_with_record

__all__ = [
    "CLASS_DEFAULTS",
    "DREAM_DEFAULTS",
    "INVERT_DEFAULTS",
    "VISUALIZE_DEFAULTS",
    "class_image",
    "deepdream",
    "driven_unit",
    "invert",
    "QUICK_VISUALIZATION",
    "unit_visualization",
    "unit_visualizations",
    "visualization_stem",
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

#: Class images with the tricks of pytorch-cnn-visualizations' regularized class images
#: (Yosinski et al.: a Gaussian blur every few steps, L2 decay, clipping of the gradient's
#: norm) on Lucid's Fourier parameterization
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
    raw_priors=True,  # weights set for this model's gradients, not cnn-vis's units
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
    objs = [unit_objective(u) for u in _driven_units(model, units)]
    return _config(
        VISUALIZE_DEFAULTS,
        overrides,
        steps,
        seed,
        objective=" | ".join(o.spec for o in objs),
        **_visualize_settings(model, len(objs), size),
    )


def _visualize_settings(model, batch: int, size) -> dict:
    """The batch size and image size settings of a unit visualization."""
    h, w = _size(size, model.preprocess_config.input_size)
    return dict(batch=int(batch), initial_size=f"{h}x{w}")


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
    return _driven_units(model, [unit])[0]


def _driven_units(model, units: Sequence[Unit | str]) -> list[Unit]:
    """:func:`driven_unit` of each unit, from one forward pass."""
    parsed = [u if isinstance(u, Unit) else Unit.parse(str(u)) for u in units]
    if all(u.layer in (INPUT, LOGITS) for u in parsed):
        return parsed
    param = next(model.module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    grey = torch.zeros(1, 3, *model.preprocess_config.input_size, device=device)
    fwd = Engine.for_module(model.module).forward(grey, grad=False)
    return [
        u if u.layer in (INPUT, LOGITS) else Unit(strength_layer(fwd, u.layer), u.channel, u.pos)
        for u in parsed
    ]


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


#: The explorer's quick picture of a unit (:func:`unit_visualization`): 48 Adam steps at
#: twice the learning rate of :data:`VISUALIZE_DEFAULTS`, at 128 px. On EfficientNet-Lite0
#: it shows the same motifs as 128 steps at 160 px (docs/benchmarks.md, "Feature
#: visualizations in the explorer") in about a fifth of the time: a few seconds on one core.
QUICK_VISUALIZATION: dict = dict(steps=48, size=128, learning_rate=0.1)


def unit_visualization(
    model,
    unit: Unit | str,
    cache_dir: str | os.PathLike,
    *,
    steps: int = QUICK_VISUALIZATION["steps"],
    size: int | tuple[int, int] | None = QUICK_VISUALIZATION["size"],
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **overrides,
) -> Path:
    """The cached PNG of a unit's feature visualization, rendering it if needed.

    The file name hashes the model, the unit and the settings, so a changed setting
    renders anew. A unit with a position (``LAYER:C@Y,X``) is drawn as the channel's
    neuron at the centre of the synthesis grid (a convolution's neurons share weights, so
    all positions want the same picture, and the tree's positions refer to another size);
    without one, as the channel's mean. The PNG is written atomically (a reader never sees half a file) with
    the run's JSON record beside it. Safe to call from a background job. Several units at
    once, in one batch: :func:`unit_visualizations`.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model.
    unit : Unit or str
        ``LAYER:C`` or ``LAYER:C@Y,X``.
    cache_dir : path
        Folder of the cache (created if missing).
    steps, size, seed
        As in :func:`visualize_units` (defaults: :data:`QUICK_VISUALIZATION`).
    progress : callable, optional
        ``progress(done, total)`` after each step (e.g. to show progress in a page).
    **overrides
        Any :class:`SynthesisConfig` option; ``learning_rate`` is
        :data:`QUICK_VISUALIZATION`'s unless given.

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
    return unit_visualizations(
        model, [unit], cache_dir, steps=steps, size=size, seed=seed, progress=progress, **overrides
    )[0]


def unit_visualizations(
    model,
    units: Sequence[Unit | str],
    cache_dir: str | os.PathLike,
    *,
    steps: int = QUICK_VISUALIZATION["steps"],
    size: int | tuple[int, int] | None = QUICK_VISUALIZATION["size"],
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **overrides,
) -> list[Path]:
    """The cached PNGs of several units' visualizations; the missing ones in ONE batch.

    Each unit has the file :func:`unit_visualization` gives it (same name, so either finds
    the other's pictures); the units not cached yet are rendered together by
    :func:`visualize_units`, one image each, and written one file each with the batch's
    record beside it (its ``config`` and ``index`` reproduce the picture).

    A picture rendered in a batch is *not* bitwise the one rendered alone with the same
    seed: the batch draws its starting noise for all images at once and shares each
    step's random transform, so image *i* starts from other noise. It maximizes its unit
    as well as the picture rendered alone does (``tests/test_server_visualization_queue.py``
    checks both against the other units of the batch).

    Parameters
    ----------
    units : list of Unit or str
        ``LAYER:C`` or ``LAYER:C@Y,X``, best of one layer (the batch runs to its deepest).
    cache_dir, steps, size, seed, progress, **overrides
        As in :func:`unit_visualization`.

    Returns
    -------
    list of pathlib.Path
        One PNG per unit, in order.

    Examples
    --------
    >>> import tempfile
    >>> from cnnscope.models import load_model
    >>> folder = tempfile.mkdtemp()
    >>> a, b = unit_visualizations(load_model(), ["blocks.3:1", "blocks.3:2"], folder, steps=2, size=48)
    >>> a.name.split("-")[0], b.exists()
    ('blocks.3_1', True)
    """
    model = as_loaded(model)
    overrides.setdefault("learning_rate", QUICK_VISUALIZATION["learning_rate"])
    parsed = [u if isinstance(u, Unit) else Unit.parse(str(u)) for u in units]
    if not parsed:
        raise CnnscopeError("give at least one unit to visualize")
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    plans: dict[Path, tuple[Unit, str]] = {}  # one rendering per file
    paths = []
    for u, driven in zip(parsed, _driven_units(model, parsed)):
        objective = _cached_objective(u, driven)
        cfg = _config(VISUALIZE_DEFAULTS, {**overrides, "objective": objective}, steps, seed,
                      **_visualize_settings(model, 1, size))  # fmt: skip
        path = folder / f"{visualization_stem(u)}-{_cache_digest(model, cfg)}.png"
        paths.append(path)
        if not path.exists():
            plans.setdefault(path, (u, objective))
    if plans:
        objective = " | ".join(obj for _, obj in plans.values())
        cfg = _config(VISUALIZE_DEFAULTS, {**overrides, "objective": objective}, steps, seed,
                      **_visualize_settings(model, len(plans), size))  # fmt: skip
        result = synthesize(model, cfg, progress=progress if progress is not None else False)
        for i, (path, (u, _)) in enumerate(plans.items()):
            record = run_record(result, model, i, {"unit": str(u), "batch": len(plans)})
            write_with_record(path, result.pictures[i], record)
    return paths


def visualization_stem(unit: Unit | str) -> str:
    """The start of a unit's cached file name (before ``-DIGEST.png``).

    Every position of a channel shares one picture (its centre neuron).

    Examples
    --------
    >>> visualization_stem("blocks.4:7"), visualization_stem("blocks.4:7@2,3")
    ('blocks.4_7', 'blocks.4_7_centre')
    """
    u = unit if isinstance(unit, Unit) else Unit.parse(str(unit))
    label = f"{u.layer}:{u.channel}@centre" if u.pos is not None else str(u)
    return _safe_name(label)


def _cached_objective(u: Unit, driven: Unit) -> str:
    """The objective of ``u``'s cached picture (``driven`` is where it is read)."""
    if u.pos is not None:
        # Convolution shares a channel's weights across positions: every position's
        # neuron wants the same picture, drawn at the centre of the synthesis grid.
        return Neuron(driven.layer, driven.channel).spec
    return unit_objective(driven).spec


def _cache_digest(model, cfg: SynthesisConfig) -> str:
    key = {
        "model": getattr(model, "name", "?"),
        "params": model_fingerprint(model.module),
        "config": cfg.to_dict(),
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _safe_name(label: str) -> str:
    """``label`` as a file name: characters other than letters, digits, ``-_.`` become ``_``.

    Examples
    --------
    >>> _safe_name("blocks.4:7@2,3")
    'blocks.4_7_2_3'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


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
