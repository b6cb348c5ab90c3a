"""Agreement with Captum (a test-only dependency): correlation >= 0.9999 per map.

Captum runs in the same process on the same weights and input. How each method is
compared, honestly:

* Saliency, InputXGradient, IntegratedGradients and LayerGradCam use true gradients:
  Captum runs on the very same model as cnnscope.
* Captum's GuidedBackprop and Deconvolution only override ``nn.ReLU`` modules; the
  engine applies its rule to every ReLU-family call (functional, in-place, reused,
  ReLU6, ``clamp(min=0)``).
  - Guided backprop through ReLU6 is the same as guided backprop through a ReLU
    followed by a clamp at 6 (the clamp's own gradient masks saturated units, which is
    what the engine's rule does): Captum runs on a copy of the built-in model in which
    each ReLU6 is ``nn.ReLU`` then ``clamp(max=6)``, cnnscope on the model itself.
  - For deconvnet the two definitions differ at saturated ReLU6 units (the engine's
    deconvnet rule ignores the forward input entirely, Captum's clamp copy would mask
    them), so both libraries run on the same copy with every ReLU6 replaced by a ReLU.
  - On the mixed network cnnscope runs on the network itself (functional, in-place and
    reused ReLUs, ReLU6 and ``clamp``), Captum on a rewrite with one plain ``nn.ReLU``
    module per call; the input is chosen so that no ReLU6 saturates (checked), where
    ReLU6 and ReLU are the same function.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnscope.attribution import attribute

from .mixed_net import INPUT_SIZE, MixedNet
from .relu_copies import ReluClamp6, replace_relu6

captum_attr = pytest.importorskip("captum.attr")

MIN_CORR = 0.9999


def corr(a, b) -> float:
    a = np.asarray(torch.as_tensor(a).detach().double().flatten())
    b = np.asarray(torch.as_tensor(b).detach().double().flatten())
    assert np.abs(a).max() > 0 and np.abs(b).max() > 0, "a blank map cannot be compared"
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def builtin():
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model

    model = load_model()
    x = model.preprocess(load_gallery_image("chelsea"))
    return model, x, 285


def _captum(cls, model, x, target, **kwargs):
    return cls(model).attribute(x.clone().requires_grad_(True), target=target, **kwargs).detach()


@pytest.fixture(scope="module")
def saliency(builtin):
    model, x, c = builtin
    return _captum(captum_attr.Saliency, model.module, x, c, abs=False)


def test_builtin_true_gradient_methods(builtin, saliency):
    model, x, c = builtin
    net = model.module
    ours = attribute(model, x, "gradient", target=c).tensor
    assert corr(ours, saliency) >= MIN_CORR
    ref = _captum(captum_attr.InputXGradient, net, x, c)
    assert corr(ours * x[0], ref) >= MIN_CORR
    ours = attribute(model, x, "gradient_x_input", target=c).tensor
    assert corr(ours, ref) >= MIN_CORR
    ig_ref = captum_attr.IntegratedGradients(net).attribute(
        x, baselines=0.0, target=c, n_steps=3, method="gausslegendre"
    )
    ours = attribute(model, x, "integrated_gradients", target=c, steps=3).tensor
    assert corr(ours, ig_ref) >= MIN_CORR
    cam_ref = captum_attr.LayerGradCam(net, net.head_act).attribute(x, target=c)
    cam = attribute(model, x, "grad_cam", target=c, relu=False).meta["cam"]["head_act"]
    assert corr(cam, cam_ref[:, 0]) >= MIN_CORR


def test_builtin_rule_methods(builtin, saliency):
    model, x, c = builtin
    clamp_copy = replace_relu6(model.module, ReluClamp6)
    ref = _captum(captum_attr.GuidedBackprop, clamp_copy, x, c)
    ours = attribute(model, x, "guided_backprop", target=c).tensor
    assert corr(ours, ref) >= MIN_CORR
    # the rule matters on this model: guided backprop is not the plain gradient
    assert corr(ours, saliency) < 0.9
    relu_copy = replace_relu6(model.module, nn.ReLU)
    ref = _captum(captum_attr.Deconvolution, relu_copy, x, c)
    ours = attribute(relu_copy, x, "deconvnet", target=c).tensor
    assert corr(ours, ref) >= MIN_CORR


class CaptumMixed(nn.Module):
    """MixedNet's computation with one plain ``nn.ReLU`` module per activation call."""

    def __init__(self, net: MixedNet):
        super().__init__()
        self.net = net
        self.r = nn.ModuleList(nn.ReLU() for _ in range(6))

    def forward(self, x):
        n, r = self.net, self.r
        h1 = r[0](n.conv1(x))
        a = r[1](n.branch_a(h1))
        b = r[2](n.branch_b(h1))
        cat = torch.cat([a, b], dim=1)
        d = r[3](n.depthwise(cat))
        c2 = r[4](n.conv2(d + cat))
        c3 = r[5](c2 * 3.0)  # ReLU6 without saturation on the test input
        return n.fc(torch.flatten(n.pool(c3), 1))


@pytest.fixture(scope="module")
def mixed():
    net = MixedNet().eval()
    torch.manual_seed(3)
    x = torch.randn(2, 3, *INPUT_SIZE) * 0.5
    with torch.no_grad():
        h = F.relu(net.conv1(x))
        cat = torch.cat([F.relu(net.branch_a(h)), F.relu(net.branch_b(h))], 1)
        r = F.relu(net.depthwise(cat)) + cat
        pre6 = F.relu(net.conv2(r)) * 3.0
    assert float(pre6.max()) < 6.0, "the test input must not saturate the ReLU6"
    assert float((pre6 > 0).float().mean()) > 0.2
    return net, x


@pytest.mark.parametrize(
    "ours, cls, kwargs",
    [
        ("gradient", "Saliency", {"abs": False}),
        ("gradient_x_input", "InputXGradient", {}),
        ("guided_backprop", "GuidedBackprop", {}),
        ("deconvnet", "Deconvolution", {}),
    ],
)
def test_mixed_net_gradient_methods(mixed, ours, cls, kwargs):
    net, x = mixed
    clean = CaptumMixed(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(clean(x), net(x))
    for c in range(3):
        ref = _captum(getattr(captum_attr, cls), clean, x, c, **kwargs)
        got = attribute(net, x, ours, target=c).tensor
        assert corr(got, ref) >= MIN_CORR, (ours, c)


def test_mixed_net_integrated_gradients_and_grad_cam(mixed):
    net, x = mixed
    for c in range(2):
        ref = captum_attr.IntegratedGradients(net).attribute(
            x, baselines=0.0, target=c, n_steps=20, method="gausslegendre"
        )
        got = attribute(net, x, "ig", target=c, steps=20).tensor
        assert corr(got, ref) >= MIN_CORR
        ref = captum_attr.LayerGradCam(net, net.act6).attribute(x, target=c)
        got = attribute(net, x, "grad_cam", target=c, layer="act6", relu=False).meta["cam"]["act6"]
        assert corr(got, ref[:, 0]) >= MIN_CORR
