"""The synthesis loop: multiscale, tiled gradient ascent on an image through the engine.

One step at one size (cnn-vis's iteration, generalised):

1. For each set of regions (checkerboard *even* then *odd*, or the whole image when not
   tiling): render the image from its parameterization, crop the regions, apply the
   random transforms, convert to the model's input and run the engine's forward pass,
   recording only the layers the objective reads (and stopping there).
2. The objective's gradient at those layers (the seeds) goes back to the input through
   the engine (``Forward.grad_many``, rule ``gradient``), then through the input
   conversion, the transforms and the parameterization by autograd.
3. The descent direction is ``-dObjective/dx + (p_reg dP + p_reg_aux dPaux + tv_reg dTV) / std
   + l1_decay sign(x) + l2_decay x`` (``std`` the model's input std per channel, 1 with
   ``raw_priors`` or ``quirks``: :func:`prior_gain`), optionally clipped in norm, and each region takes a
   step of its own optimizer state (scaled per pixel by ``1/coverage`` if asked).
4. After both sets: ``tv_reg += tv_reg_step`` every ``tv_reg_step_iter`` steps,
   ``lr *= learning_rate_decay_fraction`` every ``learning_rate_decay_iter`` steps, a
   Gaussian blur every ``blur_every`` steps, and an optional clamp to valid pixels.

At each new size the image is resized (bicubic), and ``tv_reg``, the learning rate, the
optimizer states and the tiling are reset, as in cnn-vis.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..engine import Engine
from ..errors import CnnscopeError
from ..render.filters import gaussian_blur
from .config import SynthesisConfig
from .expression import Batch, ModelBinding, Objective, objective_seeds, parse_objective
from .optim import Optimizer
from .params import FourierParam, ImageSpace, PixelParam, make_param
from .regularizers import clip_grad_norm, l1_decay, l2_decay, pnorm, tv
from .schedule import parse_size, size_sequence
from .tiling import Region, Tiling, tiling
from .transforms import standard_transforms

__all__ = ["SynthesisResult", "prepare_image", "prior_gain", "synthesize"]

log = logging.getLogger(__name__)

#: cnn-vis multiplied the image by 1.2 on every conversion to uint8 (``--quirks``).
QUIRK_CONTRAST = 1.2


@dataclass
class SynthesisResult:
    """What a run produced.

    Attributes
    ----------
    image : torch.Tensor
        The final batch, N x 3 x H x W, in working units (pixels minus the mean colour).
    pictures : list of numpy.ndarray
        The final images as H x W x 3 uint8 arrays.
    values : list of list of float
        The objective of each image after each step (the sum over tiles when tiling).
    frames : list of (int, int, numpy.ndarray)
        ``(size index, step, N x H x W x 3 uint8)`` every ``output_iter`` steps, if kept.
    stats : list of dict
        Printed statistics every ``output_iter`` steps.
    sizes : list of (int, int)
        The size sequence.
    config : SynthesisConfig
        The options, complete: rerunning them gives the same pictures.
    objective : str
        The bound objective's text form.
    seconds : float
        Wall time of the optimisation.
    steps : int
        Steps taken in total.
    """

    image: torch.Tensor
    pictures: list[np.ndarray]
    values: list[list[float]]
    frames: list[tuple[int, int, np.ndarray]]
    stats: list[dict]
    sizes: list[tuple[int, int]]
    config: SynthesisConfig
    objective: str
    seconds: float = 0.0
    steps: int = 0
    pixel_history: list[list[float]] = field(default_factory=list)


def prepare_image(spec: str, size: tuple[int, int] | None = None) -> Image.Image:
    """Load an image file or gallery photo as RGB, optionally resized to ``size`` (H, W).

    Examples
    --------
    >>> prepare_image("coffee", (40, 60)).size
    (60, 40)
    """
    from ..images import resolve_image

    _, image = resolve_image(spec)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return image


def _pil_to_working(image: Image.Image, space: ImageSpace) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    return space.from_pixels(a)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    smaller = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=smaller)


def _quantize(x: torch.Tensor, space: ImageSpace) -> torch.Tensor:
    """cnn-vis's img_to_uint then uint_to_img: contrast x1.2, clip, round to uint8."""
    p = space.to_pixels(x * QUIRK_CONTRAST).round().clamp(0, 255)
    return space.from_pixels(p)


def _blur_noise(noise: torch.Tensor, sigma: float, space: ImageSpace, quirks: bool) -> torch.Tensor:
    if quirks:
        from scipy.ndimage import gaussian_filter  # scipy comes with scikit-image

        # cnn-vis: to uint8 (x1.2 + mean, clipped), blur over H, W *and* channels, back.
        out = []
        for img in noise:
            t = space.to_pixels(img[None] * QUIRK_CONTRAST).round().clamp(0, 255)[0]
            u = t.permute(1, 2, 0).numpy().astype(np.uint8)
            if sigma > 0:
                u = gaussian_filter(u, sigma)
            p = torch.from_numpy(u.astype(np.float32)).permute(2, 0, 1)[None]
            out.append(space.from_pixels(p))
        return torch.cat(out)
    return gaussian_blur(noise, sigma) if sigma > 0 else noise


class _Run:
    """State of one synthesis run (see :func:`synthesize`)."""

    def __init__(self, model, config: SynthesisConfig, objective: Objective | None):
        self.model = model
        self.cfg = config
        self.engine = Engine.for_module(model.module)
        self.device = self.engine.device
        self.space = ImageSpace.for_model(model)
        self.input_size = tuple(model.preprocess_config.input_size)
        self.gen = torch.Generator().manual_seed(int(config.seed))
        self.transform = standard_transforms(
            config.pad, config.jitter, config.scales, config.angles, config.jitter2, config.pad_mode
        )
        self.has_transforms = bool(
            config.pad or config.jitter or config.scales or config.angles or config.jitter2
        )
        raw = objective if objective is not None else parse_objective(config.objective)
        self.batch = len(raw.objectives) if isinstance(raw, Batch) else int(config.batch)
        self.raw_objective = raw
        self.objective: Objective | None = None
        self.initial: torch.Tensor | None = None  # the initial image at its own size
        self.window = (
            parse_size(config.tile_size, self.input_size) if config.tile_size else self.input_size
        )

    # ---------------------------------------------------------------- setup
    def bind(self, image_size: tuple[int, int]) -> None:
        where = ModelBinding(
            engine=self.engine,
            input_size=self.input_size,
            class_index=getattr(self.model, "class_index", None),
            prepare_image=self._model_input,
            image_size=image_size,
        )
        self.objective = self.raw_objective.bind(where)

    def _model_input(self, spec: str, size: tuple[int, int]) -> torch.Tensor:
        x = _pil_to_working(prepare_image(spec, size), self.space)
        return self.space.to_input(x).to(self.device)

    def sizes(self) -> list[tuple[int, int]]:
        cfg = self.cfg
        if cfg.initial_image is not None:
            w, h = prepare_image(cfg.initial_image).size
            base = (h, w)
        else:
            base = self.input_size
        first = parse_size(cfg.initial_size, base)
        last = parse_size(cfg.final_size, base) if cfg.final_size is not None else first
        return size_sequence(first, last, cfg.num_sizes, cfg.resize_type)

    def init_image(self, size: tuple[int, int]) -> torch.Tensor:
        cfg = self.cfg
        if cfg.initial_image is not None:
            self.initial = _pil_to_working(prepare_image(cfg.initial_image), self.space)
            img = _pil_to_working(prepare_image(cfg.initial_image, size), self.space)
            return img.expand(self.batch, -1, -1, -1).clone()
        noise = torch.randn((self.batch, 3, *size), generator=self.gen) * cfg.init_scale
        return _blur_noise(noise, cfg.init_blur, self.space, cfg.quirks)

    def target(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The p-norm target at ``size``: the initial image (bilinear), or None for noise."""
        if self.initial is None or self.cfg.initial_image is None:
            return None
        img = prepare_image(self.cfg.initial_image, size)
        return _pil_to_working(img, self.space).to(self.device)

    # ---------------------------------------------------------------- gradients
    def cnn_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective values (N,) and their gradient w.r.t. ``x`` (N x 3 x h x w, a leaf)."""
        assert self.objective is not None
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            t = self.transform(leaf, self.gen) if self.has_transforms else leaf
            inp = self.space.to_input(t)
        layers = sorted(self.objective.layers())
        try:
            fwd = self.engine.forward(inp.detach(), cache=False, layers=layers, truncate=True)
        except RuntimeError as exc:
            raise CnnscopeError(
                f"the model cannot run on a {tuple(inp.shape[-2:])} image: {str(exc).splitlines()[0]}"
            ) from None
        acts = {name: fwd.activation(name) for name in layers}
        values, seeds = objective_seeds(self.objective, acts)
        g_in = fwd.grad_many(seeds, to="input")
        if inp.grad_fn is None:
            grad = g_in.to(x) / self.space._vec(self.space.std, x)
        else:
            (grad,) = torch.autograd.grad(inp, leaf, g_in.to(inp))
        return values.to("cpu"), grad

    def reg_grad(
        self, x: torch.Tensor, target: torch.Tensor | None, tv_reg: float, stats: dict | None
    ) -> torch.Tensor:
        """Sum of the weighted regularizer gradients at ``x`` (N x 3 x h x w).

        cnn-vis's three priors (p-norm, aux p-norm, TV) are divided by the model's input
        std per channel unless the config keeps the raw numbers (:func:`prior_gain`).
        """
        cfg = self.cfg
        gain = prior_gain(self.space, x) if cfg.priors_scaled else None
        terms = []
        if cfg.p_reg:
            loss, g = pnorm(x, cfg.alpha, cfg.p_scale, target)
            terms.append(("p_grad", cfg.p_reg * g))
            if stats is not None:
                stats["p_loss"] = float(loss)
        if cfg.p_reg_aux:
            g = pnorm(x, cfg.alpha_aux, cfg.p_scale_aux)[1]
            terms.append(("p_aux_grad", cfg.p_reg_aux * g))
        if tv_reg:
            loss, g = tv(x, cfg.beta, cfg.tv_grad_operator, cfg.tv_reg_scale)
            terms.append(("tv_grad", tv_reg * g))
            if stats is not None:
                stats["tv_loss"] = float(loss)
        total = torch.zeros_like(x)
        for name, g in terms:
            g = g if gain is None else g * gain
            total += g
            if stats is not None:
                stats[name] = float(g.abs().mean())
        if cfg.l1_decay:
            total += cfg.l1_decay * l1_decay(x)[1]
        if cfg.l2_decay:
            total += cfg.l2_decay * l2_decay(x)[1]
        return total


def prior_gain(space: ImageSpace, like: torch.Tensor) -> torch.Tensor:
    """The factor on cnn-vis's prior gradients that puts them on this model's scale: ``1/std``.

    cnn-vis's Caffe networks read the image in pixel units (0..255 minus the mean), so
    its weights were set against a network gradient in those units. A model that reads
    ``x / std`` has a pixel gradient ``1/std`` times its input gradient; dividing the
    prior gradients by the same ``std`` (per channel) keeps the descent direction of
    cnn-vis's numbers, up to one factor per channel that RMSProp and Adam cancel.

    Examples
    --------
    >>> space = ImageSpace((127.0,) * 3, (128.0,) * 3)
    >>> prior_gain(space, torch.zeros(1, 3, 2, 2)).flatten().tolist()
    [0.0078125, 0.0078125, 0.0078125]
    """
    return 1.0 / space._vec(space.std, like)


def _region_sets(size, window, tile: bool) -> tuple[Tiling | None, list[list[Region]]]:
    if not tile:
        whole = Region(0, size[0], 0, size[1], 0, 0)
        return None, [[whole]]
    t = tiling(size, window)
    sets = [list(t.even)]
    if t.odd:
        sets.append(list(t.odd))
    return t, sets


def synthesize(
    model,
    config: SynthesisConfig,
    *,
    objective: Objective | None = None,
    progress: bool | Callable[[int, int], None] = True,
    callback: Callable[[dict], None] | None = None,
    keep_frames: bool = False,
    track_pixels: bool = False,
) -> SynthesisResult:
    """Run a synthesis: optimise an image (batch) so that the objective rises.

    Parameters
    ----------
    model : cnnscope.models.LoadedModel
        The model (any PyTorch CNN loaded by :func:`cnnscope.load_model`).
    config : SynthesisConfig
        Every option; validated first (one-line :class:`CnnscopeError` on a bad one).
    objective : Objective, optional
        Use this objective instead of parsing ``config.objective`` (for objectives
        without a text form, e.g. an inversion of a raw activation tensor).
    progress : bool or callable
        Show a tqdm bar, or call ``progress(done, total)`` after each step.
    callback : callable, optional
        Called every ``output_iter`` steps with a dict: ``size_index``, ``step``,
        ``image`` (working units), ``stats``.
    keep_frames : bool
        Keep a picture every ``output_iter`` steps (for saved frames and GIFs).
    track_pixels : bool
        Record a few pixels' values each step (cnn-vis ``plot_pix``).

    Returns
    -------
    SynthesisResult

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> cfg = SynthesisConfig(objective="blocks.3:0", num_steps=2, initial_size="64x64")
    >>> result = synthesize(load_model(), cfg, progress=False)
    >>> result.pictures[0].shape, result.pictures[0].dtype
    ((64, 64, 3), dtype('uint8'))
    """
    cfg = config.validate()
    run = _Run(model, cfg, objective)
    sizes = run.sizes()
    run.bind(sizes[0])
    space = run.space
    device = run.device
    tile = cfg.tile and cfg.param == "pixel" and run.batch == 1
    if cfg.use_pixel_learning_rates and not tile:
        log.info("use_pixel_learning_rates has no effect without tiling")
    init = run.init_image(sizes[0]).to(device)
    param = make_param(
        cfg.param,
        init,
        space,
        decorrelate=cfg.decorrelate,
        decay=cfg.fft_decay,
        generator=run.gen,
        random_init=cfg.initial_image is None,
    )
    if isinstance(param, FourierParam) and cfg.initial_image is None and cfg.init_scale != 1.0:
        with torch.no_grad():
            param.tensor.mul_(cfg.init_scale)
    opt = Optimizer(
        cfg.optimizer, decay_rate=cfg.decay_rate, betas=cfg.betas, momentum=cfg.momentum
    )
    total_steps = cfg.num_steps * len(sizes)
    bar = None
    if progress is True:
        bar = tqdm(total=total_steps, desc="synthesis", unit="step", leave=False)
    values: list[list[float]] = []
    frames: list[tuple[int, int, np.ndarray]] = []
    stats_log: list[dict] = []
    pixel_history: list[list[float]] = []
    contrast = QUIRK_CONTRAST if cfg.quirks else 1.0
    done = 0
    target = None
    start = time.perf_counter()
    try:
        for si, size in enumerate(sizes):
            if si > 0:
                old = param.image().cpu()
                photo = run.target(size) if cfg.keep_detail and target is not None else None
                if target is not None and photo is not None:
                    # DeepDream octaves: the photo at the new size plus the upscaled dream.
                    img = photo.cpu() + _resize(old - target.cpu(), size)
                else:
                    img = _resize(old, size)
                if cfg.quirks:
                    img = _quantize(img, space)
                param.set_image(img.to(device))
                run.bind(size)
            target = run.target(size)
            tv_reg = cfg.tv_reg
            lr = cfg.learning_rate
            opt.reset()
            tiles, sets = _region_sets(size, run.window, tile)
            pix_lr = (
                tiles.pixel_learning_rates().to(device)
                if (tiles and cfg.use_pixel_learning_rates)
                else None
            )
            for t in range(cfg.num_steps):
                want_stats = cfg.output_iter and (t + 1) % cfg.output_iter == 0
                stats: dict | None = {} if want_stats else None
                step_values = torch.zeros(run.batch)
                for regions in sets:
                    if isinstance(param, PixelParam) and tile:
                        step_values += _tiled_update(
                            run, param, regions, target, tv_reg, lr, pix_lr, opt, stats
                        )
                    else:
                        step_values += _whole_update(run, param, target, tv_reg, lr, opt, stats)
                values.append(step_values.tolist())
                if (t + 1) % cfg.tv_reg_step_iter == 0:
                    tv_reg += cfg.tv_reg_step
                if (t + 1) % cfg.learning_rate_decay_iter == 0:
                    lr *= cfg.learning_rate_decay_fraction
                if cfg.blur_every and (t + 1) % cfg.blur_every == 0 and cfg.blur_sigma > 0:
                    _blur_param(param, cfg.blur_sigma)
                if cfg.clamp_pixels and isinstance(param, PixelParam):
                    lo, hi = space.pixel_bounds(param.tensor)
                    with torch.no_grad():
                        param.tensor.copy_(torch.maximum(torch.minimum(param.tensor, hi), lo))
                if track_pixels:
                    pixel_history.append(_probe_pixels(param.image()))
                done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        size=f"{size[0]}x{size[1]}", objective=f"{float(step_values.mean()):.4g}"
                    )
                elif callable(progress):
                    progress(done, total_steps)
                if want_stats:
                    image = param.image()
                    assert stats is not None
                    stats.update(
                        size_index=si,
                        step=t + 1,
                        objective=float(step_values.mean()),
                        image_mean=float(image.mean()),
                        image_std=float(image.std()),
                        learning_rate=lr,
                        tv_reg=tv_reg,
                    )
                    stats_log.append(stats)
                    log.info(
                        "size %d/%d step %d/%d: %s",
                        si + 1,
                        len(sizes),
                        t + 1,
                        cfg.num_steps,
                        ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if isinstance(v, float)),
                    )
                    if keep_frames:
                        frames.append(
                            (si, t + 1, space.to_uint8(image, cfg.rescale_image, contrast))
                        )
                    if callback is not None:
                        callback({"size_index": si, "step": t + 1, "image": image, "stats": stats})
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    final = param.image().cpu()
    pictures = list(space.to_uint8(final, cfg.rescale_image, contrast))
    return SynthesisResult(
        image=final,
        pictures=pictures,
        values=values,
        frames=frames,
        stats=stats_log,
        sizes=sizes,
        config=cfg,
        objective=_spec_or(run.objective, cfg.objective),
        seconds=seconds,
        steps=done,
        pixel_history=pixel_history,
    )


def _spec_or(obj: Objective | None, default: str) -> str:
    """``obj``'s text form, or ``default`` for an objective without one."""
    try:
        return obj.spec if obj is not None else default
    except CnnscopeError:
        return default


def _probe_pixels(image: torch.Tensor) -> list[float]:
    """cnn-vis ``plot_pix``: pixels (100,100), (200,200), (100,200), (200,100), 3 channels."""
    h, w = image.shape[-2:]
    out: list[float] = []
    for y, x in ((100, 100), (200, 200), (100, 200), (200, 100)):
        yy, xx = min(y, h - 1), min(x, w - 1)
        out.extend(float(v) for v in image[0, :, yy, xx])
    return out


def _blur_param(param, sigma: float) -> None:
    with torch.no_grad():
        if isinstance(param, PixelParam):
            param.tensor.copy_(gaussian_blur(param.tensor, sigma))
        else:
            # Blurring the (pre-sigmoid) image is a product with the Gaussian's transfer
            # function in the frequency domain: exp(-2 pi^2 sigma^2 f^2).
            _, _, h, w = param.shape
            fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
            fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
            gain = torch.exp(-2.0 * math.pi**2 * sigma**2 * (fy * fy + fx * fx))
            param.tensor.mul_(gain.to(param.tensor)[None, None, :, :, None])


def _smooth(run: _Run, grad: torch.Tensor) -> torch.Tensor:
    """Gaussian-blur the objective's image gradient (``grad_blur``), against grid artifacts."""
    return gaussian_blur(grad, run.cfg.grad_blur) if run.cfg.grad_blur > 0 else grad


def _finish_grad(run: _Run, grad: torch.Tensor) -> torch.Tensor:
    if run.cfg.clip_grad_norm:
        grad = clip_grad_norm(grad, run.cfg.clip_grad_norm)
    return grad


def _tiled_update(run, param, regions, target, tv_reg, lr, pix_lr, opt, stats) -> torch.Tensor:
    """One checkerboard set: CNN gradients of its tiles (batched), then one step per tile."""
    cfg = run.cfg
    img = param.tensor.data
    quirky = cfg.quirks
    reg_full = None if quirky else run.reg_grad(img, target, tv_reg, stats)
    total = torch.zeros(1)
    grads: dict[Region, torch.Tensor] = {}
    for start in range(0, len(regions), cfg.batch_size):
        chunk = regions[start : start + cfg.batch_size]
        crops = torch.cat([img[(slice(None), slice(None)) + r.slices] for r in chunk])
        vals, g = run.cnn_grad(crops)
        total += vals.sum()
        for k, r in enumerate(chunk):
            grads[r] = g[k : k + 1]
    for r in regions:
        sl = (slice(None), slice(None)) + r.slices
        view = img[sl]
        if quirky:  # cnn-vis: regularizers on the tile alone
            tgt = None if target is None else target[sl]
            reg = run.reg_grad(view, tgt, tv_reg, stats)
        else:
            assert reg_full is not None
            reg = reg_full[sl]
        d = _finish_grad(run, _smooth(run, -grads[r]) + reg)
        rate = lr if pix_lr is None else lr * pix_lr[r.slices]
        step = opt.step(r.key, view, d, rate)
        if stats is not None:
            stats["cnn_grad"] = float(grads[r].abs().mean())
            stats["step_abs_mean"] = float(step.abs().mean())
            stats["step_rel"] = float(step.abs().mean() / view.abs().mean().clamp_min(1e-12))
    return total


def _whole_update(run, param, target, tv_reg, lr, opt, stats) -> torch.Tensor:
    """The whole batch at once (Fourier parameterization, or several images)."""
    with torch.enable_grad():
        x = param()
    xd = x.detach()
    vals, g = run.cnn_grad(xd)
    reg = run.reg_grad(xd, target, tv_reg, stats)
    d_img = _smooth(run, -g) + reg
    if isinstance(param, PixelParam):
        d = d_img
    else:
        (d,) = torch.autograd.grad(x, param.tensor, d_img)
    d = _finish_grad(run, d)
    step = opt.step("param", param.tensor.data, d, lr)
    if stats is not None:
        stats["cnn_grad"] = float(g.abs().mean())
        stats["step_abs_mean"] = float(step.abs().mean())
    return vals
