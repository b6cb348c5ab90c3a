"""Attribution methods against closed forms and independent, hand-written references.

Small networks only (a few ms each): a linear model (gradient = weights, IG exact), a
ReLU network (LRP-0 = gradient x input, every LRP rule against a layer-by-layer
implementation), a GAP + linear head (Grad-CAM = CAM) and a features/head network for
the CAM family, computed here directly from activations and autograd gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnscope.attribution import Context, attribute, fold_batchnorms
from cnnscope.attribution.figures import render_map
from cnnscope.attribution.gradient import INTEGRATION, path_points

from .mixed_net import INPUT_SIZE, MixedNet

H, W = 6, 5


def _assert_close(a, b, rtol=1e-4, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=rtol, atol=atol
    )


# ---------------------------------------------------------------------------------------
# A linear model


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 4)).eval()


@pytest.fixture(scope="module")
def xs():
    torch.manual_seed(1)
    return torch.randn(2, 3, H, W)


def test_gradient_of_linear_model_is_the_weight_row(linear, xs):
    attr = attribute(linear, xs, "gradient", target=2)
    weight = linear[1].weight[2].detach().view(3, H, W)
    for i in range(2):
        _assert_close(attr.tensor[i], weight)
    _assert_close(attribute(linear, xs, "gradient_x_input", target=2).tensor, xs * weight)


@pytest.mark.parametrize("integration", INTEGRATION)
def test_integrated_gradients_is_exact_on_a_linear_model(linear, xs, integration):
    weight = linear[1].weight[1].detach().view(3, H, W)
    base = torch.full((3, H, W), 0.3)
    attr = attribute(linear, xs, "ig", target=1, steps=3, integration=integration, baseline=base)
    _assert_close(attr.tensor, (xs - base) * weight)
    assert float(attr.meta["completeness"].max()) < 1e-5


def test_guided_ig_is_exact_on_a_linear_model(linear, xs):
    # whatever the path, a constant gradient integrates to (x - baseline) * w
    weight = linear[1].weight[2].detach().view(3, H, W)
    attr = attribute(linear, xs, "guided_ig", target=2, steps=5, fraction=0.3)
    _assert_close(attr.tensor, xs * weight, rtol=1e-4, atol=1e-6)
    assert float(attr.meta["completeness"].max()) < 1e-4


def test_smoothgrad_family_on_a_linear_model(linear, xs):
    weight = linear[1].weight[0].detach().view(3, H, W)
    _assert_close(attribute(linear, xs, "smoothgrad", target=0, samples=5).tensor[0], weight)
    _assert_close(attribute(linear, xs, "smoothgrad_sq", target=0, samples=5).tensor[0], weight**2)
    assert float(attribute(linear, xs, "vargrad", target=0, samples=5).tensor.abs().max()) < 1e-10
    # around gradient x input the noise matters: the mean is (x + mean noise) * w
    sg = attribute(
        linear, xs[:1], "smoothgrad", target=0, samples=7, base="gradient_x_input", seed=3
    )
    assert not torch.allclose(sg.tensor, xs[0] * weight)


def test_path_points_integrate_polynomials():
    f = lambda a: 3 * a**2 + 1  # noqa: E731  integral over [0, 1] = 2
    for integration in INTEGRATION:
        a, w = path_points(64, integration)
        first_order = integration in ("riemann_left", "riemann_right")
        assert abs(float((w * f(a)).sum()) - 2) < (0.03 if first_order else 1e-3)
        assert abs(float(w.sum()) - 1) < 1e-12
    a, w = path_points(5, "gausslegendre")
    assert abs(float((w * a**9).sum()) - 0.1) < 1e-12  # exact to degree 2n - 1


def test_ig_baselines(linear, xs):
    weight = linear[1].weight[3].detach().view(3, H, W)
    blur = attribute(linear, xs[:1], "ig", target=3, steps=2, baseline="blur", sigma=1.0)
    # the baseline is x blurred with a normalised Gaussian: constant images stay constant
    const = torch.full((1, 3, H, W), 0.7)
    flat = attribute(linear, const, "ig", target=3, steps=2, baseline="blur", sigma=1.0)
    assert float(flat.tensor.abs().max()) < 1e-5
    assert float(blur.tensor.abs().max()) > 1e-3
    uni = attribute(linear, xs[:1], "ig", target=3, steps=2, baseline="uniform", seed=4)
    # f(x) - f(baseline) is what IG distributes
    base = xs[:1] - uni.tensor / weight
    assert (
        float(base.min()) >= float(xs.min()) - 1e-4 and float(base.max()) <= float(xs.max()) + 1e-4
    )


def test_quirks_ig_is_pytorch_cnn_visualizations(linear, xs):
    # 101 points from 0 to 1 averaged over 100 steps, not multiplied by the input
    weight = linear[1].weight[2].detach().view(3, H, W)
    attr = attribute(linear, xs[:1], "ig", target=2, steps=100, quirks=True)
    _assert_close(attr.tensor[0], weight * 101 / 100)
    assert attr.options["quirks"] is True


def test_legacy_is_a_deprecated_spelling_of_quirks(linear, xs):
    with pytest.warns(DeprecationWarning, match="legacy.* is deprecated: use .*quirks"):
        old = attribute(linear, xs[:1], "ig", target=2, steps=100, legacy=True)
    new = attribute(linear, xs[:1], "ig", target=2, steps=100, quirks=True)
    assert torch.equal(old.tensor, new.tensor)
    ctx = Context(linear, xs[:1], 2, quirks=True)
    with pytest.warns(DeprecationWarning, match="Context.legacy"):
        assert ctx.legacy is True


# ---------------------------------------------------------------------------------------
# LRP


class ReluNet(nn.Module):
    """conv -> relu -> conv -> relu -> avgpool -> linear, with biases, no BN."""

    def __init__(self, bn: bool = False):
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5) if bn else nn.Identity()
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        if bn:
            with torch.no_grad():
                for b in (self.bn1, self.bn2):
                    b.running_mean.uniform_(-0.5, 0.5)
                    b.running_var.uniform_(0.5, 2.0)
                    b.weight.uniform_(0.5, 1.5)
                    b.bias.uniform_(-0.3, 0.3)
        self.eval()

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)))
        return self.fc(torch.flatten(self.pool(h), 1))


def _reference_lrp(net: ReluNet, x, target, rules, low=None, high=None):
    """Layer-by-layer LRP, written out as in Montavon et al.'s tutorial (float64)."""
    net = copy.deepcopy(net).double()
    x = x.double()
    conv1, conv2, fc = net.conv1, net.conv2, net.fc
    with torch.no_grad():
        a1 = F.relu(conv1(x))
        a2 = F.relu(conv2(a1))
        p = torch.flatten(net.pool(a2), 1)
        out = fc(p)
    r = torch.zeros_like(out)
    r[:, target] = out[:, target]

    def step(layer, a, r, rule):
        a = a.clone().requires_grad_(True)
        if rule.startswith("epsilon") or rule == "zero":
            eps = 0.0 if rule == "zero" else float(rule.split(":")[1])
            z = layer(a)
            z = z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)
            s = (r / z).detach()
            (c,) = torch.autograd.grad((z * s).sum(), a)
            return a * c
        if rule.startswith("gamma"):  # inputs are >= 0 here: rho(w) = w + gamma w+
            g = float(rule.split(":")[1])
            w = layer.weight + g * layer.weight.clamp(min=0)
            b = layer.bias + g * layer.bias.clamp(min=0)
            z = (
                F.conv2d(a, w, b, padding=layer.padding)
                if isinstance(layer, nn.Conv2d)
                else F.linear(a, w, b)
            )
            s = (r / z).detach()
            (c,) = torch.autograd.grad((z * s).sum(), a)
            return a * c
        if rule.startswith("alpha_beta"):
            alpha, beta = (float(v) for v in rule.split(":")[1].split(","))
            conv = lambda t, w: F.conv2d(t, w, None, padding=layer.padding)  # noqa: E731
            zp = conv(a, layer.weight.clamp(min=0))
            zn = conv(a, layer.weight.clamp(max=0))
            sp = torch.where(zp != 0, r / zp, 0).detach()
            sn = torch.where(zn != 0, r / zn, 0).detach()
            (cp,) = torch.autograd.grad((zp * sp).sum(), a)
            (cn,) = torch.autograd.grad((zn * sn).sum(), a)
            return a * (alpha * cp - beta * cn)
        raise AssertionError(rule)

    # fc (epsilon), average pool (a linear op: LRP-0), conv2, conv1 (or z^B)
    r_p = step(fc, p, r, rules["fc"])
    r_a2 = (a2 / a2.sum(dim=(2, 3), keepdim=True).clamp_min(1e-300)) * r_p[:, :, None, None]
    r_a2 = torch.where(a2.sum(dim=(2, 3), keepdim=True) > 0, r_a2, 0)
    r_a1 = step(conv2, a1, r_a2, rules["conv2"])
    if rules["conv1"] != "box":
        return step(conv1, x, r_a1, rules["conv1"])
    lb = (torch.zeros_like(x) + low).requires_grad_(True)
    hb = (torch.zeros_like(x) + high).requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    z = (
        conv1(xx)
        - F.conv2d(lb, conv1.weight.clamp(min=0), conv1.bias.clamp(min=0), padding=1)
        - F.conv2d(hb, conv1.weight.clamp(max=0), conv1.bias.clamp(max=0), padding=1)
    )
    s = (r_a1 / z).detach()
    cx, cl, ch = torch.autograd.grad((z * s).sum(), [xx, lb, hb])
    return xx * cx + lb * cl + hb * ch


@pytest.fixture(scope="module")
def relu_net():
    return ReluNet()


@pytest.fixture(scope="module")
def img():
    torch.manual_seed(6)
    return torch.randn(2, 3, 7, 9)


def test_lrp_zero_is_gradient_times_input(relu_net, img):
    lrp = attribute(relu_net, img, "lrp", composite="zero", target=1)
    gxi = attribute(relu_net, img, "gradient_x_input", target=1)
    _assert_close(lrp.tensor, gxi.tensor, rtol=1e-4, atol=1e-6)
    # ... and on the mixed network with its functional, in-place and reused ReLUs
    net = MixedNet()
    x = torch.rand(2, 3, *INPUT_SIZE) * 0.5
    _assert_close(
        attribute(net, x, "lrp", composite="zero", target=2).tensor,
        attribute(net, x, "gradient_x_input", target=2).tensor,
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "composite, rules",
    [
        ("epsilon", {"fc": "epsilon:0.1", "conv2": "epsilon:0.1", "conv1": "epsilon:0.1"}),
        ("epsilon_gamma_box", {"fc": "epsilon:0.1", "conv2": "gamma:0.25", "conv1": "box"}),
        ("epsilon_plus_box", {"fc": "epsilon:0.1", "conv2": "alpha_beta:1,0", "conv1": "box"}),
        (
            "epsilon_alpha2_beta1_box",
            {"fc": "epsilon:0.1", "conv2": "alpha_beta:2,1", "conv1": "box"},
        ),
    ],
)
def test_lrp_rules_match_a_layer_by_layer_reference(relu_net, img, composite, rules):
    low, high = -2.5, 2.5
    ours = attribute(
        relu_net, img, "lrp", target=0, composite=composite, epsilon=0.1, bounds=(low, high)
    )
    ref = _reference_lrp(relu_net, img, 0, rules, low, high)
    _assert_close(ours.tensor, ref, rtol=1e-3, atol=1e-6)
    # the rules give different maps (so this test tells them apart)
    plain = _reference_lrp(relu_net, img, 0, {"fc": "zero", "conv2": "zero", "conv1": "zero"})
    assert not torch.allclose(ref, plain, atol=1e-4)


def test_rule_overrides_by_name(relu_net, img):
    a = attribute(
        relu_net,
        img,
        "lrp",
        target=0,
        composite="zero",
        rules={"conv2": "gamma:0.25", "conv1": "box"},
        bounds=(-2.5, 2.5),
        epsilon=0.1,
    )
    ref = _reference_lrp(
        relu_net, img, 0, {"fc": "zero", "conv2": "gamma:0.25", "conv1": "box"}, -2.5, 2.5
    )
    _assert_close(a.tensor, ref, rtol=1e-3, atol=1e-6)
    assert a.meta["rules"] == {"conv1": "box", "conv2": "gamma:0.25", "fc": "zero"}


def test_canonizer_folds_batchnorm_exactly(img):
    bn_net = ReluNet(bn=True)
    folded = ReluNet(bn=True)
    before = folded(img)
    pairs = fold_batchnorms(folded, img)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2")]
    _assert_close(folded(img), before, rtol=1e-5, atol=1e-6)
    assert isinstance(folded.bn1, nn.Identity)
    # LRP on the BN network (canonized) = LRP on the explicitly folded network
    for comp in ("epsilon_gamma_box", "epsilon_alpha2_beta1_box"):
        a = attribute(bn_net, img, "lrp", target=2, composite=comp, bounds=(-3, 3))
        b = attribute(folded, img, "lrp", target=2, composite=comp, bounds=(-3, 3))
        _assert_close(a.tensor, b.tensor, rtol=1e-3, atol=1e-6)
        assert a.meta["folded"] == [("conv1", "bn1"), ("conv2", "bn2")]
        # without the canonizer the BatchNorms are separate epsilon layers: another map
        c = attribute(bn_net, img, "lrp", target=2, composite=comp, bounds=(-3, 3), canonize=False)
        assert not torch.allclose(a.tensor, c.tensor, atol=1e-4)


def test_canonizer_leaves_shared_outputs_alone():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is read twice: folding would change it

    net = Skip().eval()
    x = torch.randn(1, 3, 4, 4)
    before = net(x)
    assert fold_batchnorms(net, x) == []
    _assert_close(net(x), before)


# ---------------------------------------------------------------------------------------
# CAMs


class CamNet(nn.Module):
    """features (conv, relu, conv, relu) -> global average pool -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.eval()

    def head(self, a):
        return self.fc(torch.flatten(self.pool(a), 1))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def cam_net():
    return CamNet()


@pytest.fixture(scope="module")
def cam_x():
    torch.manual_seed(8)
    return torch.randn(2, 3, 12, 10)


def _a_and_g(net, x, target):
    a = net.features(x).detach().requires_grad_(True)
    out = net.head(a)
    (g,) = torch.autograd.grad(out[:, target].sum(), a)
    return a.detach().double(), g.double(), out.detach()


def test_grad_cam_equals_cam_on_a_gap_linear_head(cam_net, cam_x):
    attr = attribute(cam_net, cam_x, "grad_cam", target=3, relu=False)
    assert attr.layer == "features.3"  # the default: last layer with a map larger than 1x1
    a = cam_net.features(cam_x).detach().double()
    cam = torch.einsum(
        "k,nkhw->nhw", cam_net.fc.weight[3].detach().double(), a
    )  # Zhou et al.'s CAM
    h, w = a.shape[-2:]
    _assert_close(attr.meta["cam"]["features.3"], cam / (h * w))
    # the map at input resolution is the bilinear upsampling of it
    up = F.interpolate(cam[:, None] / (h * w), size=(12, 10), mode="bilinear", align_corners=False)[
        :, 0
    ]
    _assert_close(attr.tensor, up)


def test_cam_family_formulas(cam_net, cam_x):
    a, g, _ = _a_and_g(cam_net, cam_x, 1)
    expect = {
        "grad_cam": (g.mean((2, 3), keepdim=True) * a).sum(1),
        "hires_cam": (g * a).sum(1),
        "layer_cam": (g.clamp(min=0) * a).sum(1),
        "xgrad_cam": (
            (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7) * a
        ).sum(1),
    }
    g2, g3 = g**2, g**3
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3)
    alpha = torch.where(g != 0, alpha, 0)
    expect["grad_cam_pp"] = ((alpha * g.clamp(min=0)).sum((2, 3), keepdim=True) * a).sum(1)
    for name, cam in expect.items():
        got = attribute(cam_net, cam_x, name, target=1, layer="features.3").meta["cam"][
            "features.3"
        ]
        _assert_close(got, cam.clamp(min=0), rtol=1e-4, atol=1e-6)


def test_quirks_grad_cam_starts_from_ones(cam_net, cam_x):
    a, g, _ = _a_and_g(cam_net, cam_x, 0)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1)
    got = attribute(cam_net, cam_x, "grad_cam", target=0, quirks=True).meta["cam"]["features.3"]
    _assert_close(got, (cam + 1).clamp(min=0))


def test_score_cam_against_a_loop(cam_net, cam_x):
    attr = attribute(cam_net, cam_x, "score_cam", target=2, batch_size=3)
    a = cam_net.features(cam_x).detach()
    for i in range(2):
        weights = []
        for k in range(a.shape[1]):
            m = F.interpolate(
                a[i : i + 1, k : k + 1], size=(12, 10), mode="bilinear", align_corners=False
            )
            if m.max() == m.min():
                weights.append(0.0)
                continue
            m = (m - m.min()) / (m.max() - m.min())
            with torch.no_grad():
                weights.append(float(torch.softmax(cam_net(cam_x[i : i + 1] * m), 1)[0, 2]))
        cam = (torch.tensor(weights).view(-1, 1, 1) * a[i]).sum(0).clamp(min=0)
        _assert_close(attr.meta["cam"]["features.3"][i], cam, rtol=1e-4, atol=1e-6)


def test_ablation_cam_against_a_loop(cam_net, cam_x):
    attr = attribute(cam_net, cam_x, "ablation_cam", target=1, batch_size=5)
    a = cam_net.features(cam_x).detach()
    with torch.no_grad():
        y = cam_net.head(a)[:, 1]
        for i in range(2):
            w = []
            for k in range(a.shape[1]):
                ab = a[i : i + 1].clone()
                ab[:, k] = 0
                w.append(float((y[i] - cam_net.head(ab)[0, 1]) / y[i]))
            cam = (torch.tensor(w).view(-1, 1, 1) * a[i]).sum(0).clamp(min=0)
            _assert_close(attr.meta["cam"]["features.3"][i], cam, rtol=1e-4, atol=1e-6)


def test_eigen_cam_is_the_first_principal_component(cam_net, cam_x):
    attr = attribute(cam_net, cam_x, "eigen_cam", relu=False)
    a = cam_net.features(cam_x).detach().double().numpy()
    for i in range(2):
        f = a[i].reshape(a.shape[1], -1).T
        f = f - f.mean(0)
        _, _, vt = np.linalg.svd(f, full_matrices=False)
        proj = (f @ vt[0]).reshape(a.shape[2:])
        got = attr.meta["cam"]["features.3"][i].numpy()
        assert np.allclose(np.abs(got), np.abs(proj), rtol=1e-4, atol=1e-6)
        total = a[i].sum(0)
        assert np.corrcoef(got.ravel(), total.ravel())[0, 1] >= 0  # the sign convention


def test_guided_grad_cam_and_layer_fusion(cam_net, cam_x):
    gbp = attribute(cam_net, cam_x, "guided_backprop", target=0).tensor
    cam = attribute(cam_net, cam_x, "grad_cam", target=0).tensor
    top = cam.flatten(1).amax(1).clamp_min(1e-7).view(-1, 1, 1)
    ggc = attribute(cam_net, cam_x, "guided_grad_cam", target=0).tensor
    _assert_close(ggc, gbp * (cam / top).unsqueeze(1))
    fused = attribute(cam_net, cam_x, "layer_cam", target=0, layer=["features.1", "features.3"])
    assert fused.layer == ["features.1", "features.3"]
    parts = [
        attribute(cam_net, cam_x, "layer_cam", target=0, layer=n).tensor
        for n in ("features.1", "features.3")
    ]
    top = [p.flatten(1).amax(1).clamp_min(1e-7).view(-1, 1, 1) for p in parts]
    # the shallow map is boosted by tanh, the deepest only scaled (layers given in any order)
    _assert_close(fused.tensor, torch.maximum(torch.tanh(2 * parts[0] / top[0]), parts[1] / top[1]))
    again = attribute(cam_net, cam_x, "layer_cam", target=0, layer=["features.3", "features.1"])
    _assert_close(again.tensor, fused.tensor)
    assert again.layer == ["features.1", "features.3"]


# ---------------------------------------------------------------------------------------
# Renderings


def test_render_styles_on_a_known_map():
    m = np.zeros((3, 4, 4), np.float32)
    m[0, 0, 0], m[2, 3, 3] = 2.0, -1.0
    assert render_map(m, "positive")[0, 0].tolist() == [255, 0, 0]
    assert render_map(m, "negative")[3, 3].tolist() == [0, 0, 255]
    assert render_map(m, "colored", percentile=100)[1, 1].tolist() == [85, 85, 85]  # 0 of [-1, 2]
    # by default one extreme pixel does not wash out the rest: clipped at the percentiles
    spiky = np.random.default_rng(0).normal(size=(3, 20, 20)).astype(np.float32)
    spiky[0, 0, 0] = 1e4
    assert (
        render_map(spiky, "colored").std() > 3 * render_map(spiky, "colored", percentile=100).std()
    )
    pos = render_map(spiky, "positive")
    assert pos[..., 1].mean() > 3 * render_map(spiky, "positive", percentile=100)[..., 1].mean()
    seis = render_map(m, "seismic", percentile=100)
    assert seis[0, 0, 0] > 100 and seis[0, 0, 2] < 50  # positive -> red
    assert seis[3, 3, 2] > 100 and seis[3, 3, 0] < 50  # negative -> blue
    assert tuple(seis[1, 1]) == tuple(
        render_map(np.zeros((1, 4, 4)), "seismic")[0, 0]
    )  # 0 is the centre
    gray = render_map(m, "grayscale", percentile=100)
    assert gray[0, 0, 0] == 255 and gray[3, 3, 0] == 128 and gray[1, 1, 0] == 0
    heat = render_map(m[:1], "heatmap")
    assert heat.shape == (4, 4, 3) and heat[0, 0].tolist() != heat[1, 1].tolist()


def test_deconvnet_ignores_the_image_without_max_pooling():
    # deconvnet's ReLU rule ignores the forward pass; without max-pool switches the
    # backward pass is then the same linear map for every input (Mahendran & Vedaldi)
    net = MixedNet().eval()
    torch.manual_seed(9)
    x = torch.randn(3, 3, *INPUT_SIZE)
    d = attribute(net, x, "deconvnet", target=1).tensor
    assert float((d[0] - d[1]).abs().max()) == 0 and float((d[0] - d[2]).abs().max()) == 0
    g = attribute(net, x, "guided_backprop", target=1).tensor  # guided does look at the input
    assert not torch.allclose(g[0], g[1])
    pooled = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 5 * 7, 2),
    )
    p = attribute(pooled.eval(), x, "deconvnet", target=0).tensor
    assert not torch.allclose(p[0], p[1])  # max-pool switches carry the image
