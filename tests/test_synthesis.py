"""Feature synthesis: priors, tiling, schedules, optimizers, objectives, runs, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnscope.cli import main as cli_main
from cnnscope.engine import Engine
from cnnscope.errors import CnnscopeError
from cnnscope.synthesis import (
    PRESETS,
    Amplify,
    Channel,
    DeepDream,
    Direction,
    Diversity,
    Neuron,
    SynthesisConfig,
    parse_objective,
    save_result,
    synthesize,
    unit_visualization,
    visualize_units,
)
from cnnscope.synthesis.objectives import KINDS, ModelBinding, objective_seeds
from cnnscope.synthesis.optim import Optimizer
from cnnscope.synthesis.params import (
    COLOUR_SQRT_COV,
    FourierParam,
    ImageSpace,
    colour_sqrt_covariance,
)
from cnnscope.synthesis.regularizers import (
    TV_FLOOR,
    clip_grad_norm,
    gaussian_blur,
    l1_decay,
    l2_decay,
    pnorm,
    tv,
    tv_kernels,
)
from cnnscope.synthesis.schedule import parse_size, size_sequence
from cnnscope.synthesis.tiling import best_ranges, check_ranges, ranges, tiling
from cnnscope.synthesis.transforms import jitter, pad, rotate, scale

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; model too


def _image(seed=0, shape=(2, 3, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3


def _central_fd(f, x, coords, eps=1e-4):
    out = []
    for c in coords:
        xp, xm = x.clone(), x.clone()
        xp[c] += eps
        xm[c] -= eps
        out.append((float(f(xp)) - float(f(xm))) / (2 * eps))
    return np.array(out)


def _coords(x, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(x.numel(), (n,), generator=g)
    return [tuple(int(v) for v in np.unravel_index(int(i), x.shape)) for i in idx]


# ---------------------------------------------------------------- regularizer gradients
@pytest.mark.parametrize("p,s,with_target", [(2.0, 1.0, False), (6.0, 2.5, True), (2.5, 0.7, True)])
def test_pnorm_gradient_matches_autograd_and_finite_differences(p, s, with_target):
    x = _image().requires_grad_(True)
    target = _image(5) if with_target else None
    loss, grad = pnorm(x.detach(), p, s, target)
    ref = ((x - target) if with_target else x).div(s).abs().pow(p).sum()
    assert torch.allclose(loss, ref.detach())
    (auto,) = torch.autograd.grad(ref, x)
    assert torch.allclose(grad, auto, rtol=1e-10, atol=1e-10)
    coords = _coords(x)
    fd = _central_fd(lambda z: pnorm(z, p, s, target)[0], x.detach(), coords)
    assert np.allclose([grad[c].item() for c in coords], fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operator", ["naive", "sobel", "sobel_squish"])
@pytest.mark.parametrize("beta,s", [(2.0, 1.0), (2.5, 2.0), (1.5, 1.0)])
def test_tv_gradient_matches_autograd_and_finite_differences(operator, beta, s):
    # Noise on a ramp: every stencil sees a gradient far above the floor (smooth loss).
    x = (_image(3) + 30.0 * torch.arange(11, dtype=torch.float64)).requires_grad_(True)
    kx, ky = tv_kernels(operator, torch.float64)
    u = (x / s).reshape(-1, 1, *x.shape[-2:])
    gx, gy = F.conv2d(u, kx[None, None]), F.conv2d(u, ky[None, None])
    g2 = gx**2 + gy**2
    assert bool((g2 > TV_FLOOR).all())  # away from the floor, the loss is smooth
    ref = g2.pow(beta / 2).sum()
    (auto,) = torch.autograd.grad(ref, x)
    loss, grad = tv(x.detach(), beta, operator, s)
    assert torch.allclose(loss, ref.detach())
    assert torch.allclose(grad, auto, rtol=1e-9, atol=1e-9)
    coords = _coords(x)
    fd = _central_fd(lambda z: tv(z, beta, operator, s)[0], x.detach(), coords)
    assert np.allclose([grad[c].item() for c in coords], fd, rtol=1e-5, atol=1e-5)


def _tv_loop(img, beta, op):
    """cnn-vis's TV written out pixel by pixel from seed-features.md §3.8."""
    h, w = img.shape
    total = 0.0
    k = 2 if op == "naive" else 3
    for i in range(h - k + 1):
        for j in range(w - k + 1):

            def x(a, b, i=i, j=j):
                return float(img[i + a, j + b])

            if op == "naive":
                gx, gy = x(0, 0) - x(0, 1), x(0, 0) - x(1, 0)
            elif op == "sobel":
                gx = (x(0, 2) + 2 * x(1, 2) + x(2, 2)) - (x(0, 0) + 2 * x(1, 0) + x(2, 0))
                gy = (x(2, 0) + 2 * x(2, 1) + x(2, 2)) - (x(0, 0) + 2 * x(0, 1) + x(0, 2))
            else:
                gx = (x(0, 1) + 2 * x(1, 1) + x(2, 1)) - (x(0, 0) + 2 * x(1, 0) + x(2, 0))
                gy = (x(1, 0) + 2 * x(1, 1) + x(1, 2)) - (x(0, 0) + 2 * x(0, 1) + x(0, 2))
            total += max(gx * gx + gy * gy, TV_FLOOR) ** (beta / 2)
    return total


@pytest.mark.parametrize("operator", ["naive", "sobel", "sobel_squish"])
def test_tv_value_matches_the_written_out_stencils(operator):
    x = _image(4, (1, 2, 6, 7))
    loss, _ = tv(x, 2.5, operator)
    ref = sum(_tv_loop(x[0, c], 2.5, operator) for c in range(2))
    assert math.isclose(float(loss), ref, rel_tol=1e-10)


def test_decay_gradients_match_autograd():
    x = _image(6).requires_grad_(True)
    for fn, ref_fn in (
        (l1_decay, lambda z: z.abs().sum()),
        (l2_decay, lambda z: 0.5 * (z * z).sum()),
    ):
        loss, grad = fn(x.detach())
        ref = ref_fn(x)
        (auto,) = torch.autograd.grad(ref, x)
        assert torch.allclose(loss, ref.detach())
        assert torch.allclose(grad, auto)


def test_blur_and_gradient_clipping():
    from scipy.ndimage import gaussian_filter

    x = _image(7, (1, 3, 20, 24))
    y = gaussian_blur(x, 1.3)
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, 1.3, 1.3), mode="mirror", truncate=4.0)
    assert np.allclose(y.numpy(), ref, atol=1e-6)
    const = torch.full((1, 3, 8, 8), 4.0, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(const, 2.0), const)
    small = _image(9, (2, 1, 5, 6))  # smaller than the kernel: edge pixels repeated
    ref = gaussian_filter(small.numpy(), sigma=(0, 0, 2.0, 2.0), mode="nearest", truncate=4.0)
    assert np.allclose(gaussian_blur(small, 2.0).numpy(), ref, atol=1e-6)
    g = _image(8, (3, 3, 5, 5))
    g[2] *= 1e-3
    clipped = clip_grad_norm(g, 1.0)
    norms = clipped.flatten(1).norm(dim=1)
    assert torch.allclose(norms[:2], torch.ones(2, dtype=torch.float64))
    assert torch.equal(clipped[2], g[2])  # already below the limit
    assert torch.allclose(
        F.cosine_similarity(clipped.flatten(1), g.flatten(1)), torch.ones(3, dtype=torch.float64)
    )


# ---------------------------------------------------------------- tiling and sizes
@pytest.mark.parametrize(
    "size", [(224, 224), (300, 500), (1080, 1920), (225, 449), (100, 700), (50, 60)]
)
def test_tiling_covers_every_pixel_1_2_or_4_times(size):
    window = (224, 224)
    t = tiling(size, window)
    count = torch.zeros(size, dtype=torch.int64)
    for r in t.regions:
        assert r.y1 - r.y0 == min(224, size[0]) and r.x1 - r.x0 == min(224, size[1])
        count[r.y0 : r.y1, r.x0 : r.x1] += 1
    assert int(count.min()) >= 1
    assert set(count.unique().tolist()) <= {1, 2, 4}
    assert torch.equal(t.coverage(), count)
    assert torch.allclose(t.pixel_learning_rates(), 1.0 / count.float())
    # Checkerboard: grid neighbours are never in the same set.
    for group in (t.even, t.odd):
        cells = {(r.row, r.col) for r in group}
        for a, b in cells:
            assert (a + 1, b) not in cells and (a, b + 1) not in cells
    if size == (300, 500):
        assert set(count.unique().tolist()) == {1, 2, 4}


@pytest.mark.parametrize(
    "length,window", [(224, 224), (500, 224), (1920, 224), (1000, 300), (700, 100), (30, 224)]
)
def test_best_ranges_are_the_fewest_that_pass_cnn_vis_checks(length, window):
    rs = best_ranges(length, window)
    w = min(window, length)
    assert check_ranges(rs, length)
    n = len(rs)
    assert all(not check_ranges(ranges(length, w, k), length) for k in range(1, n))
    for i in range(n - 2):  # never three windows over one pixel
        assert rs[i][1] < rs[i + 2][0]


def test_sizes_parse_and_sequence():
    assert parse_size("x0.25", (400, 800)) == (100, 200)
    assert parse_size("1080x1920", (1, 1)) == (1080, 1920)
    seq = size_sequence((270, 480), (1080, 1920), 5)
    assert seq[0] == (270, 480) and seq[-1] == (1080, 1920)
    ratios = [seq[i + 1][0] / seq[i][0] for i in range(4)]
    assert np.allclose(ratios, math.sqrt(2), atol=0.01)
    lin = size_sequence((100, 100), (400, 700), 4, "linear")
    assert lin == [(100, 100), (200, 300), (300, 500), (400, 700)]
    for bad in ("x", "12", "0x5", "x-1", "axb"):
        with pytest.raises(CnnscopeError):
            parse_size(bad, (224, 224))


# ---------------------------------------------------------------- optimizers
def test_rmsprop_is_cnn_vis_rmsprop():
    opt = Optimizer("rmsprop", decay_rate=0.9)
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    ref, cache = x.clone(), torch.zeros(3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for lr in (1.0, 0.5, 2.0):
        grad = torch.randn(3, generator=g, dtype=torch.float64)
        cache = 0.9 * cache + 0.1 * grad**2
        ref = ref - lr * grad / torch.sqrt(cache + 1e-8)
        opt.step("t", x, grad, lr)
    assert torch.allclose(x, ref, rtol=1e-12)
    # Per-pixel learning rates scale the step; each key has its own cache.
    y = torch.zeros(2, dtype=torch.float64)
    opt.step(
        "u",
        y,
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([1.0, 0.5], dtype=torch.float64),
    )
    assert torch.allclose(y, -torch.tensor([1.0, 0.5], dtype=torch.float64) / math.sqrt(0.1 + 1e-8))


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_adam_and_sgd_match_torch(kind):
    x0 = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine = x0.clone()
    ref = x0.clone().requires_grad_(True)
    if kind == "adam":
        opt = Optimizer("adam", betas=(0.8, 0.99))
        topt = torch.optim.Adam([ref], lr=0.1, betas=(0.8, 0.99), eps=1e-8)
    else:
        opt = Optimizer("sgd", momentum=0.9)
        topt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for _ in range(6):
        grad = torch.sin(3 * mine) + mine  # any smooth function of the parameter
        opt.step("p", mine, grad, 0.1)
        topt.zero_grad()
        ref.grad = torch.sin(3 * ref.detach()) + ref.detach()
        topt.step()
    assert torch.allclose(mine, ref.detach(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- objectives
def test_amplify_seed_is_cnn_vis_injected_gradient():
    a = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 8
    _, seeds = objective_seeds(Amplify("L", l1=0.7, l2=1.3, clip=5.0), {"L": a})
    assert torch.allclose(seeds["L"], 0.7 * a.abs() + 1.3 * a.clamp(-5, 5), atol=1e-5)


def test_objective_algebra_and_text_forms():
    acts = {"L": torch.arange(16.0).view(2, 2, 2, 2), "M": torch.ones(2, 3)}
    a, b = Channel("L", 1), DeepDream("M")
    va, vb = a(acts), b(acts)
    assert torch.allclose((a + b)(acts), va + vb)
    assert torch.allclose((a - 2 * b)(acts), va - 2 * vb)
    assert torch.allclose((a * b)(acts), va * vb)
    assert torch.allclose((a / 4)(acts), va / 4)
    assert torch.allclose((-a)(acts), -va)
    assert Neuron("L", 0, (1, 0))(acts).tolist() == [2.0, 10.0]
    d = Direction("L", [3.0, 4.0])(acts)
    assert torch.allclose(
        d, 0.6 * acts["L"][:, 0].mean((1, 2)) + 0.8 * acts["L"][:, 1].mean((1, 2))
    )
    div = Diversity("L")(acts)
    f = acts["L"].reshape(2, 2, 4)
    g = torch.bmm(f, f.transpose(1, 2)).reshape(2, -1)
    cos = F.cosine_similarity(g[0:1], g[1:2])
    assert torch.allclose(div, -cos.repeat(2))
    for text in [
        "blocks.9:5 - 0.5*deepdream(blocks.10)",
        "amplify(x, l1=2, l2=1, clip=3)",
        "2*a:1 * class(3)",
        "a:1@2,3 | neuron(b:2) | channel(c:0, reduce=sum)",
    ]:
        assert parse_objective(parse_objective(text).spec).spec == parse_objective(text).spec


def test_objectives_bind_against_the_model(model):
    engine = Engine.for_module(model.module)
    ctx = ModelBinding(engine, (224, 224), model.class_index)
    assert parse_objective("class(tabby)").bind(ctx).spec == "class(281)"
    for bad in ["blocks.3:40", "class(999999)", "amplify(blocks.99)", "class(notaclass)"]:
        with pytest.raises(CnnscopeError):
            parse_objective(bad).bind(ctx)


def test_every_objective_kind_reads_back_its_own_text():
    classes = set(KINDS.values())
    assert {Amplify, Channel, DeepDream, Direction, Diversity, Neuron} <= classes
    for cls in classes:
        assert cls.examples, f"{cls.__name__} has no example text form"
        for text in cls.examples:
            obj = parse_objective(text)
            assert str(obj) == text and obj.spec == text
            assert isinstance(obj, cls) and str(cls.parse(text)) == text
    assert str(parse_objective("dream(x)")) == "deepdream(x)"  # an alias word
    assert str(parse_objective("unit(a:1)")) == "a:1"
    with pytest.raises(CnnscopeError, match="not a Amplify objective"):
        Amplify.parse("deepdream(x)")
    with pytest.warns(DeprecationWarning, match="ModelBinding"):
        from cnnscope.synthesis.objectives import Context
    assert Context is ModelBinding


def test_synthesis_doc_is_up_to_date():
    """docs/synthesis.md is what scripts/make_synthesis_doc.py writes (objectives read from
    their classes, the new options from the config schema): rerun it with --no-render."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "make_synthesis_doc", root / "scripts" / "make_synthesis_doc.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (root / "docs" / "synthesis.md").read_text("utf-8")
    for cls in set(KINDS.values()):
        assert f"| `{cls.__name__}` |" in text, f"{cls.__name__} is not in docs/synthesis.md"
    assert text == script.page(script.saved_log()), (
        "run python scripts/make_synthesis_doc.py --no-render"
    )


@pytest.mark.parametrize(
    "text",
    [
        "foo(blocks.3)", "amplify(x, q=1)", "amplify(x, clip=big)", "amplify(x", "deepdream(x, 2)",
        "class()", "invert(x)", "direction(x)", "direction(x, a b)", "neuron(a:1, b)", "channel(a)",
        "channel(a:1, reduce=max)", "a:1 +", "2", "a:1 / b:2", "a:1 + 2", "()", "", "  ", "a:1 )",
    ],
)  # fmt: skip
def test_bad_objective_text_is_one_clear_error(text):
    with pytest.raises(CnnscopeError) as err:
        parse_objective(text)
    assert str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- parameterization, transforms
def test_fourier_param_round_trip_and_colour_matrix():
    from cnnscope.images import gallery_images

    space = ImageSpace((127.0,) * 3, (128.0,) * 3)
    p = FourierParam((2, 3, 15, 22), space, generator=torch.Generator().manual_seed(0))
    x = (torch.randn(2, 3, 15, 22, generator=torch.Generator().manual_seed(1)) * 30).clamp(
        -100, 100
    )
    p.set_image(x)
    assert torch.allclose(p(), x, atol=1e-2)
    m = colour_sqrt_covariance([g.load() for g in gallery_images()])
    assert np.allclose(m, COLOUR_SQRT_COV, atol=1e-3)


def test_transforms_shapes_rotation_and_gradients():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(9.0, dtype=torch.float64).view(1, 1, 3, 3).expand(1, 3, 3, 3)
    assert rotate([90.0])(x, gen)[0, 0].round().tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    y = torch.randn(1, 3, 12, 14, dtype=torch.float64, requires_grad=True)
    assert pad(3)(y, gen).shape[-2:] == (18, 20)
    assert jitter(4)(y, gen).shape[-2:] == (8, 10)
    assert scale([1.5])(y, gen).shape[-2:] == (18, 21)
    small = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    for t in (rotate([17.0]), scale([0.8]), jitter(2)):
        assert torch.autograd.gradcheck(
            lambda z, t=t: t(z, torch.Generator().manual_seed(0)), (small,)
        )


@pytest.mark.parametrize(
    "scales,angles",
    [([1.0], [0.0]), ([1.1], [0.0]), ([0.8], [0.0]), ([1.0], [10.0]), ([1.0], [-33.0])],
)
def test_fused_transform_chain_is_the_centre_of_the_steps_in_turn(scales, angles):
    from cnnscope.synthesis.transforms import compose, fit, standard_transforms

    # A zero frame: the chains differ only in what they sample beyond the crops and edges
    # (the fused one reads real pixels there, the stepwise one zeros or clamped edges).
    x = torch.zeros(2, 3, 64, 76, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x[..., 16:-16, 16:-16] = torch.randn(2, 3, 32, 44, dtype=torch.float64, generator=g)
    fused = standard_transforms(4, 6, scales, angles, 2)
    steps = compose([pad(4), jitter(6), scale(scales), rotate(angles), jitter(2)])
    for seed in range(3):
        a = fused(x, torch.Generator().manual_seed(seed))
        b = steps(x, torch.Generator().manual_seed(seed))
        assert a.shape == x.shape
        assert torch.allclose(a, fit(b, (64, 76)), atol=1e-10)
    reflect = standard_transforms(4, 6, scales, angles, 2, pad_mode="reflect")
    assert reflect(x, torch.Generator().manual_seed(0)).shape == x.shape
    small = torch.randn(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    chain = standard_transforms(2, 2, [1.2], [15.0], 1)
    assert torch.autograd.gradcheck(lambda z: chain(z, torch.Generator().manual_seed(1)), (small,))


# ---------------------------------------------------------------- engine additions
def test_engine_grad_many_and_truncated_forward():
    from tests.mixed_net import INPUT_SIZE, MixedNet

    net = MixedNet().double()
    engine = Engine(net)
    x = torch.randn(
        2, 3, *INPUT_SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    full = engine.forward(x, cache=False)
    short = engine.forward(x, cache=False, layers=["shared#2", "branch_a"], truncate=True)
    assert "logits" not in short.layers and "conv2" not in short.layers
    for layer in ("shared#2", "branch_a"):
        assert torch.equal(full.activation(layer), short.activation(layer))
    s1 = torch.randn_like(full.activation("shared#2"))
    s2 = torch.randn_like(full.activation("branch_a"))
    both = short.grad_many({"shared#2": s1, "branch_a": s2})
    ref = full.grad("shared#2", s1) + full.grad("branch_a", s2)
    assert torch.allclose(both, ref, atol=1e-12)
    guided = short.grad_many({"shared#2": s1}, rule="guided")
    assert torch.allclose(guided, full.grad("shared#2", s1, rule="guided"), atol=1e-12)
    with pytest.raises(CnnscopeError):
        short.grad_many({"shared#2": s1[:1]})


# ---------------------------------------------------------------- runs on the built-in model
def _tiny(**kw):
    opts = dict(
        objective="blocks.3:5",
        num_steps=6,
        initial_size="48x48",
        output_iter=0,
        optimizer="adam",
        learning_rate=4.0,
        p_reg=0.0,
        tv_reg=0.0,
    )
    opts.update(kw)
    return SynthesisConfig(**opts)


def test_objective_rises_in_a_short_run(model):
    for param, lr in (("pixel", 4.0), ("fft", 0.05)):
        r = synthesize(
            model,
            _tiny(param=param, learning_rate=lr, num_steps=6, tile=False, initial_size="40x40"),
            progress=False,
        )
        first, last = r.values[0][0], r.values[-1][0]
        assert last > first + 0.5 * abs(first) + 0.1, (param, first, last)


def test_tiled_multiscale_run_with_every_prior(model):
    cfg = _tiny(
        objective="amplify(blocks.2)",
        initial_size="40x56",
        final_size="56x80",
        num_sizes=2,
        num_steps=2,
        tile_size="32x32",
        batch_size=3,
        optimizer="rmsprop",
        learning_rate=2.0,
        p_reg=1e-6,
        p_reg_aux=1e-9,
        alpha_aux=8,
        tv_reg=0.01,
        tv_reg_step=0.01,
        tv_reg_step_iter=1,
        tv_grad_operator="sobel",
        l1_decay=1e-3,
        l2_decay=1e-3,
        blur_every=1,
        clip_grad_norm=50.0,
        use_pixel_learning_rates=True,
        jitter=4,
        learning_rate_decay_iter=1,
        learning_rate_decay_fraction=0.5,
        output_iter=1,
    )
    seen = []
    r = synthesize(model, cfg, progress=False, callback=lambda e: seen.append(e["stats"]))
    assert r.sizes == [(40, 56), (56, 80)] and r.pictures[0].shape == (56, 80, 3)
    assert [s["tv_reg"] for s in seen] == [0.02, 0.03, 0.02, 0.03]  # reset at each size
    assert [s["learning_rate"] for s in seen] == [1.0, 0.5, 1.0, 0.5]
    assert r.values[-1][0] > r.values[0][0]


def test_unit_visualization_beats_99_percent_of_gallery_patches(model):
    from cnnscope.images import gallery_images

    layer, channel = "blocks.5", 3
    engine = Engine.for_module(model.module)
    acts = []
    for g in gallery_images():
        x = model.preprocess(g.load())
        fwd = engine.forward(x, cache=False, layers=[layer], grad=False, truncate=True)
        acts.append(fwd.activation(layer)[0, channel].flatten())
    p99 = float(torch.quantile(torch.cat(acts), 0.99))
    imgs = visualize_units(model, [f"{layer}:{channel}@2,2"], steps=16, size=64, seed=0)
    x = ImageSpace.for_model(model).to_input(
        ImageSpace.for_model(model).from_pixels(
            torch.from_numpy(imgs[0].astype(np.float32)).permute(2, 0, 1)[None]
        )
    )
    value = float(
        engine.forward(x, cache=False, layers=[layer], grad=False, truncate=True).activation(layer)[
            0, channel, 2, 2
        ]
    )
    assert value > p99, (value, p99)


def test_a_unit_off_at_the_start_is_driven_through_its_pre_activation(model):
    """head_act:254 is off (ReLU6 = 0) for the grey-noise start, so its gradient there is
    zero: read at head_bn it rises anyway, beyond every gallery photo's channel mean."""
    from cnnscope.images import gallery_images
    from cnnscope.synthesis import driven_unit

    layer, channel = "head_act", 254
    assert str(driven_unit(model, f"{layer}:{channel}")) == f"head_bn:{channel}"
    assert str(driven_unit(model, "blocks.5:3@2,2")) == "blocks.5:3@2,2"  # no activation
    engine = Engine.for_module(model.module)

    def channel_mean(x):
        fwd = engine.forward(x, cache=False, layers=[layer], grad=False, truncate=True)
        return float(fwd.activation(layer)[0, channel].mean())

    photos = [channel_mean(model.preprocess(g.load())) for g in gallery_images()]
    imgs = visualize_units(model, [f"{layer}:{channel}"], steps=24, size=96, seed=0)
    space = ImageSpace.for_model(model)
    x = space.to_input(
        space.from_pixels(torch.from_numpy(imgs[0].astype(np.float32)).permute(2, 0, 1)[None])
    )
    assert imgs[0].std() > 10  # not grey mush
    assert channel_mean(x) > max(photos), (channel_mean(x), photos)


def test_runs_are_bitwise_deterministic_under_a_seed(model):
    a = visualize_units(model, ["blocks.3:1", "blocks.4:2"], steps=2, size=32, seed=7)
    b = visualize_units(model, ["blocks.3:1", "blocks.4:2"], steps=2, size=32, seed=7)
    c = visualize_units(model, ["blocks.3:1", "blocks.4:2"], steps=2, size=32, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    cfg = _tiny(
        optimizer="rmsprop", init_blur=1.0, jitter=6, num_steps=2, tile_size="32x32", seed=3
    )
    r1, r2 = synthesize(model, cfg, progress=False), synthesize(model, cfg, progress=False)
    assert torch.equal(r1.image, r2.image)


def test_saved_config_reproduces_the_image_through_the_cli(model, tmp_path, capsys):
    out = tmp_path / "dream.png"
    argv = [
        "dream",
        "--objective",
        "deepdream(blocks.2)",
        "--initial-image",
        "coffee",
        "--initial_size",
        "40x60",
        "--num-steps",
        "2",
        "--jitter",
        "4",
        "--tile-size",
        "32x32",
        "--output-iter",
        "1",
        "--iter-behavior",
        "save+print+gif",
        "-o",
        str(out),
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["objective"] == "deepdream(blocks.2)" and record["config"]["seed"] == 0
    assert (tmp_path / "dream.gif").exists() and (tmp_path / "dream_1_2.png").exists()
    assert "step 2" in capsys.readouterr().out
    again = tmp_path / "again.png"
    assert (
        cli_main(
            [
                "dream",
                "--config",
                str(out.with_suffix(".json")),
                "-o",
                str(again),
                "--iter-behavior",
                "",
                "--no-progress",
            ]
        )
        == 0
    )
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_unit_visualization_cache(model, tmp_path):
    p = unit_visualization(model, "blocks.3:2", tmp_path, steps=2, size=40)
    stamp = p.stat().st_mtime_ns
    assert unit_visualization(model, "blocks.3:2", tmp_path, steps=2, size=40) == p
    assert p.stat().st_mtime_ns == stamp
    assert json.loads(p.with_suffix(".json").read_text())["unit"] == "blocks.3:2"
    # Any position of a channel: its centre neuron, one cached picture (even off the grid).
    q = unit_visualization(model, "blocks.3:2@20,27", tmp_path, steps=2, size=40)
    assert q != p and unit_visualization(model, "blocks.3:2@1,1", tmp_path, steps=2, size=40) == q
    assert json.loads(q.with_suffix(".json").read_text())["objective"] == "neuron(blocks.3:2)"


def test_class_image_and_inversion_improve(model):
    from cnnscope.synthesis import class_image, invert

    r = class_image(model, "tabby", steps=6, size=64)
    assert r.values[-1][0] > r.values[0][0]
    inv = invert(model, "coffee", "blocks.1", steps=6)
    assert inv.values[-1][0] > inv.values[0][0]  # minus the normalised distance rises


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "changes",
    [
        dict(learning_rate=0),
        dict(decay_rate=1.0),
        dict(num_sizes=0),
        dict(optimizer="lbfgs"),
        dict(tv_grad_operator="prewitt"),
        dict(param="wavelet"),
        dict(initial_size="big"),
        dict(alpha=-1),
        dict(p_scale=0),
        dict(batch_size=0),
        dict(resize_type="cubic"),
        dict(scales=[0.0]),
        dict(quirks=True, param="fft"),
        dict(learning_rate=float("nan")),
        dict(objective=""),
        dict(objective="amplify(blocks.9"),
        dict(initial_image="no-such-image.png"),
    ],
)
def test_bad_options_raise_one_line_errors(model, changes):
    opts = dict(num_steps=1, initial_size="32x32")
    opts.update(changes)
    cfg = SynthesisConfig(**opts)
    with pytest.raises(CnnscopeError) as err:
        synthesize(model, cfg, progress=False)
    assert "\n" not in str(err.value) and str(err.value)


def test_unknown_config_keys_are_rejected():
    with pytest.raises(CnnscopeError, match="unknown synthesis option"):
        SynthesisConfig.from_dict({"objective": "a:1", "learning_rte": 1})


@pytest.mark.parametrize(
    "argv",
    [
        ["dream", "--tv_reg", "abc"],
        ["dream", "--preset", "nope"],
        ["dream", "--objective", "a:1", "--image-type", "amplify_layer"],
        ["dream", "--target-neuron", "3"],
        ["dream", "--iter-behavior", "save+dance", "--num-steps", "1"],
        ["dream", "--config", "/no/such.json"],
        ["visualize", "blocks.3:x"],
        ["visualize", "blocks.3:1", "--steps", "0"],
        ["invert", "nosuchimage", "--layer", "blocks.3"],
        ["invert", "coffee", "--layer", "blocks.99", "--steps", "1"],
        ["classimage", "notaclass"],
    ],
)
def test_cli_errors_exit_2_with_one_line(argv, capsys):
    try:
        code = cli_main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err


def _dream_parser():
    import argparse

    from cnnscope.synthesis import cli as synthesis_cli

    parser = argparse.ArgumentParser()
    synthesis_cli.register(parser.add_subparsers())
    return parser, synthesis_cli


def test_dream_flags_are_built_from_the_config_schema():
    import dataclasses

    parser, synthesis_cli = _dream_parser()
    dream = parser._subparsers._group_actions[0].choices["dream"]
    fields = dataclasses.fields(SynthesisConfig)
    values = {"int": "3", "float": "0.5", "str": "x", "str | None": "x", "list[float]": "1,2",
              "tuple[float, float]": "0.5,0.6"}  # fmt: skip
    parsed = {"int": 3, "float": 0.5, "str": "x", "str | None": "x", "list[float]": [1.0, 2.0],
              "tuple[float, float]": (0.5, 0.6)}  # fmt: skip
    for f in fields:
        actions = [a for a in dream._actions if a.dest == f.name]
        assert len(actions) == 1, f.name  # exactly one flag per option
        assert actions[0].help == f.metadata["help"]
        for flag in actions[0].option_strings:  # every spelling, cnn-vis's included
            argv = ["dream", flag] if f.type == "bool" else ["dream", flag, values[f.type]]
            given = synthesis_cli.given_config_options(parser.parse_args(argv))
            want = (not f.default) if f.type == "bool" else parsed[f.type]
            assert given == {f.name: want}, (flag, given)
    # No option given: cnn-vis's defaults, with its default objective (amplify_layer).
    cfg, record = synthesis_cli.dream_config(parser.parse_args(["dream"]))
    assert record == {}
    assert cfg == SynthesisConfig(objective="amplify(blocks.9.expand_act, l1=1, l2=1, clip=5)")
    argv = ["dream", "--image_type", "amplify_neuron", "--learning_rate", "3", "--quirks",
            "--raw-priors", "--target_layer", "blocks.4"]  # fmt: skip
    cfg, _ = synthesis_cli.dream_config(parser.parse_args(argv))
    assert (cfg.objective, cfg.learning_rate, cfg.quirks, cfg.raw_priors) == (
        "channel(blocks.4:0, reduce=sum)",
        3.0,
        True,
        True,
    )


def test_presets_are_valid_and_bind(model):
    engine = Engine.for_module(model.module)
    ctx = ModelBinding(engine, (224, 224), model.class_index)
    for name, preset in PRESETS.items():
        for quick in (False, True):
            cfg = preset.config(quick=quick)
            parse_objective(cfg.objective).bind(ctx)
            assert cfg.num_steps > 0, name


def test_save_result_writes_frames_gif_and_records(model, tmp_path):
    cfg = _tiny(num_steps=2, output_iter=1, batch=2, tile=False)
    r = synthesize(model, cfg, progress=False, keep_frames=True, track_pixels=True)
    paths = save_result(
        r, model, tmp_path / "x.png", behaviors={"save", "gif", "plot_pix"}, names=["a", "b"]
    )
    assert [p.name for p in paths] == ["x_a.png", "x_b.png"]
    assert json.loads((tmp_path / "x_b.json").read_text())["index"] == 1
    # Frames and GIFs carry the picture's name too (x_a_1_2.png beside x_a.png).
    assert (tmp_path / "x_a_1_2.png").exists() and (tmp_path / "x_b.gif").exists()
    assert (tmp_path / "x_pixels.png").exists()


def test_keep_detail_and_quirks_on_a_photo(model):
    from cnnscope.synthesis.loop import prepare_image

    base = dict(
        objective="deepdream(blocks.2)",
        initial_image="coffee",
        initial_size="20x30",
        final_size="40x60",
        num_sizes=2,
        num_steps=0,
        output_iter=0,
    )
    photo = np.asarray(prepare_image("coffee", (40, 60)), dtype=np.float64)
    kept = synthesize(model, SynthesisConfig(keep_detail=True, **base), progress=False)
    assert np.array_equal(kept.pictures[0], photo.astype(np.uint8))  # no change: the photo itself
    plain = synthesize(model, SynthesisConfig(**base), progress=False)
    assert np.abs(plain.pictures[0] - photo).mean() > 2  # upscaled from 20x30: blurred
    one = dict(base, num_sizes=1, initial_size="40x60", final_size=None)
    quirky = synthesize(model, SynthesisConfig(quirks=True, **one), progress=False)
    mean = np.asarray(ImageSpace.for_model(model).mean)
    expected = np.clip(np.round((photo - mean) * 1.2 + mean), 0, 255)
    assert np.abs(quirky.pictures[0] - expected).max() <= 1


def test_preserved_restores_training_flags_from_eval_and_mixed_modes():
    from cnnscope.engine import preserved

    net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Sequential(torch.nn.Dropout()))
    net.eval()
    with preserved(net):
        net[1][0].training = True  # something flips a flag during the pass
    assert not any(m.training for m in net.modules())
    net.train()
    net[1].eval()
    before = [m.training for m in net.modules()]
    with preserved(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before
