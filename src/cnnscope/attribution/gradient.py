"""Gradient methods: plain and rule-modified backprop, Integrated Gradients, noise tunnels.

Every gradient comes from the engine (:meth:`cnnscope.engine.Forward.grad`) under one of
its backward rules, over chunks of rows built by :class:`~.context.Context`: images for
the single-pass methods, images x steps for IG, images x samples for SmoothGrad.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import CnnscopeError
from ..render.filters import gaussian_blur
from .context import Context
from .registry import MethodOutput, check_positive, get_method, register

__all__ = ["BASELINES", "INTEGRATION", "path_points"]

# ---------------------------------------------------------------------------------------
# Single pass


def _rule_gradient(ctx: Context, rule: str) -> torch.Tensor:
    return ctx.single_pass(rule)


@register(
    "gradient",
    title="Gradient",
    family="gradient",
    style="grayscale",
    aliases=("vanilla", "vanilla_gradient", "vanilla_backprop", "saliency", "backprop"),
    summary="the gradient of the target with respect to the input pixels",
    reference="Simonyan et al. 2014, Deep inside convolutional networks",
)
def gradient(ctx: Context) -> MethodOutput:
    """The gradient of the target with respect to the input."""
    return MethodOutput(_rule_gradient(ctx, "gradient"))


@register(
    "gradient_x_input",
    title="Gradient × Input",
    family="gradient",
    style="grayscale",
    signed=True,
    aliases=("input_x_gradient", "grad_x_input", "gradient_times_input", "grad_times_image"),
    summary="gradient times the (normalised) input",
    reference="Shrikumar et al. 2016, Not just a black box",
)
def gradient_x_input(ctx: Context) -> MethodOutput:
    """Gradient times input."""
    return MethodOutput(_rule_gradient(ctx, "gradient") * ctx.x)


@register(
    "deconvnet",
    title="Deconvnet",
    family="gradient",
    style="colored",
    aliases=("deconvolution", "deconv"),
    summary="backprop where every ReLU passes only positive gradients, whatever its input",
    reference="Zeiler & Fergus 2014, Visualizing and understanding convolutional networks",
)
def deconvnet(ctx: Context) -> MethodOutput:
    """Deconvnet: ReLUs pass positive gradients regardless of the forward input."""
    return MethodOutput(_rule_gradient(ctx, "deconvnet"))


@register(
    "guided_backprop",
    title="Guided Backprop",
    family="gradient",
    style="colored",
    aliases=("guided", "gbp", "guided_backpropagation"),
    summary="backprop where ReLUs pass gradients that are positive and had a positive input",
    reference="Springenberg et al. 2015, Striving for simplicity",
)
def guided_backprop(ctx: Context) -> MethodOutput:
    """Guided backprop."""
    return MethodOutput(_rule_gradient(ctx, "guided"))


@register(
    "guided_neg",
    title="Guided Backprop (negative)",
    family="gradient",
    style="colored",
    aliases=("guided_negative", "negative_guided_backprop"),
    summary="guided backprop of the negative gradients (what speaks against the target)",
    reference="Cogswell, cnn_treevis (GUIDED_NEG rule)",
)
def guided_neg(ctx: Context) -> MethodOutput:
    """Guided backprop keeping negative gradients (cnn_treevis's GUIDED_NEG)."""
    return MethodOutput(_rule_gradient(ctx, "guided_neg"))


@register(
    "guided_x_input",
    title="Guided Backprop × Input",
    family="gradient",
    style="grayscale",
    signed=True,
    aliases=("guided_grad_x_image", "guided_gradient_x_input", "guided_backprop_x_input"),
    summary="guided backprop times the (normalised) input",
    reference="pytorch-cnn-visualizations' Guided-Grad x Image; Springenberg et al. 2015",
)
def guided_x_input(ctx: Context) -> MethodOutput:
    """Guided backprop times input (pytorch-cnn-visualizations' "Guided-Grad x Image")."""
    return MethodOutput(_rule_gradient(ctx, "guided") * ctx.x)


#: Gradient-family methods a noise tunnel can wrap: name -> (rule, multiply by input).
_BASES = {
    "gradient": ("gradient", False),
    "gradient_x_input": ("gradient", True),
    "guided_x_input": ("guided", True),
    "deconvnet": ("deconvnet", False),
    "guided_backprop": ("guided", False),
    "guided_neg": ("guided_neg", False),
}

# ---------------------------------------------------------------------------------------
# Integrated Gradients

INTEGRATION = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
BASELINES = ("zero", "black", "blur", "uniform")


def path_points(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] and weights of a quadrature of ``int_0^1 g(a) da``.

    Examples
    --------
    >>> a, w = path_points(4, "riemann_trapezoid")
    >>> a.tolist(), w.round(4).tolist()
    ([0.0, 0.3333333333333333, 0.6666666666666666, 1.0], [0.1667, 0.3333, 0.3333, 0.1667])
    >>> a, w = path_points(3, "gausslegendre")
    >>> round(float(w.sum()), 12), abs(float((w * a**5).sum()) - 1 / 6) < 1e-12
    (1.0, True)
    """
    n = int(steps)
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1) / 2, w / 2
    if method == "riemann_trapezoid":
        if n < 2:
            raise CnnscopeError("riemann_trapezoid needs steps >= 2")
        a = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return a, w
    shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}.get(method)
    if shift is None:
        raise CnnscopeError(
            f"unknown integration {method!r}: choose one of {', '.join(INTEGRATION)}"
        )
    return (np.arange(n) + shift) / n, np.full(n, 1.0 / n)


def make_baseline(
    ctx: Context, baseline, sigma: float = 10.0, seed: int = 0, x=None
) -> torch.Tensor:
    """The IG / deletion baseline for ``x`` (default ``ctx.x``) as an N x C x H x W tensor.

    ``zero``: all zeros in the model's input space (the mean colour for the usual
    normalisations). ``black``: pixel value 0 through the preprocessing. ``blur``: the
    image blurred with a Gaussian of ``sigma`` pixels. ``uniform``: uniform noise over the
    input range. A tensor (C x H x W or N x C x H x W) is used as given.

    Examples
    --------
    >>> ctx = Context(torch.nn.Conv2d(3, 2, 1), torch.ones(1, 3, 8, 8), 0)
    >>> round(float(make_baseline(ctx, "blur", sigma=2.0).mean()), 4), make_baseline(ctx, 0.5).shape
    (1.0, torch.Size([1, 3, 8, 8]))
    """
    x = ctx.x if x is None else x
    if isinstance(baseline, np.ndarray):
        baseline = torch.from_numpy(baseline)
    if isinstance(baseline, torch.Tensor):
        b = baseline.detach().to(x.device, torch.float32)
        if b.dim() == 3:
            b = b.unsqueeze(0)
        try:
            return b.expand_as(x).clone()
        except RuntimeError:
            raise CnnscopeError(
                f"baseline of shape {tuple(baseline.shape)} does not fit the input {tuple(x.shape)}"
            ) from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "black":
        low, _ = ctx.input_bounds()
        return low.expand_as(x).clone()
    if baseline == "blur":
        return gaussian_blur(x, check_positive("sigma", sigma))
    if baseline == "uniform":
        low, high = ctx.input_bounds()
        # the same noise for every image (from one seed), whatever the batch
        u = torch.stack(
            [torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(seed))) for _ in x]
        ).to(x.device)
        return low + u * (high - low)
    raise CnnscopeError(
        f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}, a number or a tensor"
    )


def _ig(
    ctx: Context, x: torch.Tensor, rows: list[int], base: torch.Tensor, alphas, weights, desc="IG"
):
    """sum_k w_k grad(base + a_k (x - base)) per row of ``x`` (rows map to images)."""
    m, k = len(x), len(alphas)
    a = torch.as_tensor(alphas, dtype=torch.float32, device=x.device)
    w = torch.as_tensor(weights, dtype=torch.float64)
    # Row r * k + j is input r at alpha j: built chunk by chunk, never all at once.
    diff = x - base

    def make(s: slice) -> torch.Tensor:
        idx = torch.arange(s.start, s.stop, device=x.device)
        r, j = idx // k, idx % k
        return base[r] + a[j].view(-1, 1, 1, 1) * diff[r]

    flat_rows = [rows[r] for r in range(m) for _ in range(k)]
    groups = [r for r in range(m) for _ in range(k)]
    return ctx.input_gradients(make, flat_rows, weights=w.repeat(m), groups=groups, desc=desc)


@register(
    "integrated_gradients",
    title="Integrated Gradients",
    family="path",
    style="grayscale",
    signed=True,
    aliases=("ig", "integrated_gradient", "intgrad"),
    summary="(x - baseline) times the gradient averaged along the straight path from the baseline",
    reference="Sundararajan et al. 2017, Axiomatic attribution for deep networks",
)
def integrated_gradients(
    ctx: Context,
    steps: int | None = None,
    integration: str = "gausslegendre",
    baseline="zero",
    sigma: float = 10.0,
    seed: int = 0,
    multiply: bool = True,
) -> MethodOutput:
    """Integrated Gradients.

    Options: ``steps`` (default 50; 100 with ``quirks``), ``integration`` (:data:`INTEGRATION`), ``baseline``
    (:data:`BASELINES`, a number or a tensor), ``sigma`` (blur, pixels), ``seed``
    (uniform noise), ``multiply`` (by ``x - baseline``). ``meta`` holds
    ``completeness``: ``|sum IG - (f(x) - f(baseline))| / |f(x) - f(baseline)|``.
    """
    steps = check_positive(
        "steps", (100 if ctx.quirks else 50) if steps is None else steps, integer=True
    )
    if ctx.quirks:
        # pytorch-cnn-visualizations: zero baseline, alpha = 0, 1/steps, ..., 1 (steps + 1
        # points), mean over steps, not multiplied by the input.
        alphas, weights = np.linspace(0.0, 1.0, steps + 1), np.full(steps + 1, 1.0 / steps)
        base = torch.zeros_like(ctx.x)
        multiply = False
    else:
        alphas, weights = path_points(steps, integration)
        base = make_baseline(ctx, baseline, sigma, seed)
    avg = _ig(ctx, ctx.x, list(range(ctx.n)), base, alphas, weights)
    meta: dict = {"baseline": baseline if isinstance(baseline, str) else "tensor"}
    if not multiply:
        return MethodOutput(avg, meta)
    ig = (ctx.x - base) * avg
    meta.update(_completeness(ctx, base, ig))
    return MethodOutput(ig, meta)


def _completeness(ctx: Context, base: torch.Tensor, attr: torch.Tensor) -> dict[str, torch.Tensor]:
    """``delta``: ``sum attr - (f(x) - f(base))`` per image, and ``completeness``: its
    size relative to ``|f(x) - f(base)|``."""
    f_base = ctx.scores_of(base, list(range(ctx.n)))
    delta = (ctx.scores.to(f_base.device) - f_base).double().cpu()
    total = attr.double().flatten(1).sum(1).cpu()
    return {
        "delta": (total - delta).float(),
        "completeness": ((total - delta).abs() / delta.abs().clamp_min(1e-12)).float(),
    }


# ---------------------------------------------------------------------------------------
# Noise tunnels


def _noise_core(ctx: Context, base: str, base_options: dict):
    """``run(x_rows, rows) -> maps`` for the base method of a noise tunnel."""
    name = get_method(base).name
    if name in _BASES:
        rule, times_input = _BASES[name]

        def run(xs, rows):
            g = ctx.input_gradients(xs, rows, rule=rule, desc=f"noise ({name})")
            return g * xs if times_input else g

        return run
    if name == "integrated_gradients":
        opts = {"steps": 16, "integration": "gausslegendre", "baseline": "zero", **base_options}
        steps = check_positive("steps", opts["steps"], integer=True)
        alphas, weights = path_points(steps, opts["integration"])

        def run(xs, rows):
            basel = make_baseline(ctx, opts["baseline"], opts.get("sigma", 10.0), 0, x=xs)
            return (xs - basel) * _ig(ctx, xs, list(rows), basel, alphas, weights, "noise (IG)")

        return run
    raise CnnscopeError(
        f"a noise tunnel wraps {', '.join([*_BASES, 'integrated_gradients'])}, not {name!r}"
    )


def _noise_tunnel(ctx, base, samples, noise_level, seed, base_options, reduce):
    samples = check_positive("samples", samples, integer=True)
    noise_level = check_positive("noise_level", noise_level, allow_zero=True)
    run = _noise_core(ctx, base, dict(base_options or {}))
    x = ctx.x
    if ctx.quirks:
        # pytorch-cnn-visualizations: sigma = 4 / (max - min), and normal_(0, sigma**2)
        # uses sigma**2 as the std.
        span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).clamp_min(1e-12)
        std = (4.0 / span) ** 2
    else:
        std = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    # One stream per image, all from the same seed: noise does not depend on batching.
    gens = [torch.Generator().manual_seed(int(seed)) for _ in range(ctx.n)]
    total = torch.zeros_like(x, dtype=torch.float64)
    total_sq = torch.zeros_like(x, dtype=torch.float64)
    rows = [i for i in range(ctx.n) for _ in range(samples)]
    for s in ctx.chunks(len(rows), "noise tunnel"):
        r = rows[s]
        noise = torch.stack([torch.randn(x.shape[1:], generator=gens[i]) for i in r]).to(x.device)
        xs = x[r] + noise * std[r].view(-1, 1, 1, 1)
        maps = run(xs, r).double()
        index = torch.as_tensor(r, device=x.device)
        total.index_add_(0, index, maps)
        total_sq.index_add_(0, index, maps * maps)
    mean = total / samples
    if reduce == "mean":
        out = mean
    elif reduce == "square":
        out = total_sq / samples
    else:
        out = (total_sq / samples - mean * mean).clamp_min(0)
    return MethodOutput(out.float(), {"base": get_method(base).name, "noise_std": std.cpu()})


_NOISE_DOC = (
    "Options: ``base`` (a gradient-family method or ``integrated_gradients``), "
    "``samples``, ``noise_level`` (std as a fraction of the input's max - min), "
    "``seed``, ``base_options`` (a dict for the base method)."
)


def _register_noise(name: str, reduce: str, doc: str, **info) -> Callable[..., MethodOutput]:
    """Register one noise tunnel: ``_noise_tunnel`` reducing the base maps by ``reduce``."""

    def method(
        ctx: Context,
        base: str = "gradient",
        samples: int = 50,
        noise_level: float = 0.15,
        seed: int = 0,
        base_options: dict | None = None,
    ) -> MethodOutput:
        return _noise_tunnel(ctx, base, samples, noise_level, seed, base_options, reduce)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{doc}\n\n    {_NOISE_DOC}\n"
    return register(name, family="noise", style="grayscale", **info)(method)


smoothgrad = _register_noise(
    "smoothgrad",
    "mean",
    "SmoothGrad: mean of the base method over Gaussian-noised inputs.",
    title="SmoothGrad",
    aliases=("smooth_grad", "smoothgrad_mean"),
    summary="the base method averaged over noisy copies of the input",
    reference="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
)
smoothgrad_sq = _register_noise(
    "smoothgrad_sq",
    "square",
    "SmoothGrad squared: mean of the squared base maps.",
    title="SmoothGrad²",
    aliases=("smoothgrad_squared", "smoothgrad2", "smoothgrad_square"),
    summary="the mean of the squared base maps over noisy inputs",
    reference="Hooker et al. 2019, A benchmark for interpretability methods",
)
vargrad = _register_noise(
    "vargrad",
    "var",
    "VarGrad: variance of the base maps.",
    title="VarGrad",
    aliases=("var_grad",),
    summary="the variance of the base maps over noisy inputs",
    reference="Adebayo et al. 2018, Local explanation methods for deep neural networks lack sensitivity",
)


# ---------------------------------------------------------------------------------------
# Guided Integrated Gradients


def _guided_path_step(x, inp, base, grad, alpha, max_dist, fraction, l1_total, steps_left_frac):
    """Move ``x`` (one image) towards ``inp`` along Guided IG's adaptive path for one step.

    Features whose gradient is smallest in magnitude move first; every feature stays
    within ``max_dist`` (in path fraction) of the straight path. Returns the new ``x`` and
    the attribution gained, ``sum (x_new - x_old) * grad`` per feature.
    """
    diff = inp - base
    lo_a, hi_a = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    x_lo, x_hi = base + diff * lo_a, base + diff * hi_a
    target = l1_total * steps_left_frac
    gained = torch.zeros_like(x)
    g = grad.clone()
    moving = diff != 0
    for _ in range(10_000):  # each round moves at least one more group of features
        old = x.clone()
        frac = torch.where(
            moving,
            (x - base) / torch.where(moving, diff, torch.ones_like(diff)),
            torch.full_like(x, hi_a),
        )
        behind = frac < lo_a
        x = torch.where(behind, x_lo, x)  # features left behind catch up with the band
        current = float((x - inp).abs().sum())
        if abs(current - target) <= 1e-6 * max(l1_total, 1e-12) or current <= target:
            gained += (x - old) * grad
            break
        g = torch.where(x == x_hi, torch.full_like(g, float("inf")), g)
        free = torch.isfinite(g)
        if not bool(free.any()):
            gained += (x - old) * grad
            break
        mags = g.abs()[free]
        k = max(int(fraction * mags.numel()) - 1, 0)
        threshold = mags.kthvalue(k + 1).values if mags.numel() else mags.new_tensor(0.0)
        chosen = free & (g.abs() <= threshold)
        room = float(((x - x_hi).abs() * chosen).sum())
        gamma = (current - target) / room if room > 0 else float("inf")
        if gamma > 1.0:
            x = torch.where(chosen, x_hi, x)
        else:
            x = torch.where(chosen, x + (x_hi - x) * gamma, x)
        gained += (x - old) * grad
        if gamma <= 1.0:
            break
    return x, gained


@register(
    "guided_ig",
    title="Guided Integrated Gradients",
    family="path",
    style="grayscale",
    signed=True,
    aliases=("guided_integrated_gradients", "gig"),
    summary="integrated gradients along an adaptive path that moves low-gradient pixels first",
    reference="Kapishnikov et al. 2021, Guided Integrated Gradients",
)
def guided_ig(
    ctx: Context,
    steps: int = 64,
    baseline="zero",
    fraction: float = 0.25,
    max_dist: float = 0.02,
    sigma: float = 10.0,
    seed: int = 0,
) -> MethodOutput:
    """Guided IG: each step moves the ``fraction`` of pixels with the smallest |gradient|,
    keeping every pixel within ``max_dist`` of the straight path. One gradient per step
    for all images at once. ``meta["completeness"]`` as for IG.
    """
    steps = check_positive("steps", steps, integer=True)
    fraction = check_positive("fraction", fraction)
    max_dist = check_positive("max_dist", max_dist, allow_zero=True)
    if fraction > 1 or max_dist > 1:
        raise CnnscopeError("fraction and max_dist must be in (0, 1]")
    inp = ctx.x
    base = make_baseline(ctx, baseline, sigma, seed)
    x = base.clone()
    attr = torch.zeros_like(inp, dtype=torch.float64)
    l1 = (inp - base).abs().flatten(1).sum(1).tolist()
    rows = list(range(ctx.n))
    for step in range(steps):
        grad = ctx.input_gradients(x, rows, desc="Guided IG")
        alpha = (step + 1) / steps
        for i in rows:
            x_i, gained = _guided_path_step(
                x[i].double(),
                inp[i].double(),
                base[i].double(),
                grad[i].double(),
                alpha,
                max_dist,
                fraction,
                l1[i],
                1 - alpha,
            )
            x[i] = x_i.to(x.dtype)
            attr[i] += gained
    return MethodOutput(attr.float(), _completeness(ctx, base, attr))
