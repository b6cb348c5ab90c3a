"""Evaluation: IG completeness and LRP conservation on the built-in model, deletion and
insertion against closed forms, the randomisation sanity check, rank correlation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnscope.attribution import (
    attribute,
    completeness,
    conservation,
    deletion_insertion,
    evaluate,
    randomization_check,
)
from cnnscope.attribution.evaluate import rank, spearman

from .mixed_net import INPUT_SIZE, MixedNet


@pytest.fixture(scope="module")
def builtin():
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model

    return load_model(), load_gallery_image("chelsea")


def test_ig_completeness_on_the_builtin_model(builtin):
    # 128 Gauss-Legendre steps from a blurred baseline: sum IG = f(x) - f(blur) within 2%
    # (1.5%; the error oscillates with the step count: 5.7%, 3.3%, 4.2%, 0.95% at 32, 48,
    # 64, 96 steps). From the grey "zero" baseline the integrand has a sharp transient near
    # alpha = 0 on this model and 64 steps leave ~6%: the error is reported, not hidden.
    model, img = builtin
    attr = attribute(model, img, "integrated_gradients", steps=128, baseline="blur")
    err = completeness(attr)
    assert err < 0.02
    delta = float(attr.scores[0]) - float(attr.meta["delta"][0]) - float(attr.tensor.double().sum())
    assert abs(delta) > 0.5  # f(blur) is far from 0: the baseline term is really there


def test_lrp_conservation_on_the_builtin_model(builtin):
    model, img = builtin
    attr = attribute(model, img, "lrp")
    assert len(attr.meta["folded"]) == 49  # every BatchNorm folded into its convolution
    # Relevance is conserved layer by layer: what reaches the pixels plus what the
    # biases absorb is the logit, within 5%.
    assert conservation(attr) < 0.05
    total = float(attr.meta["relevance"][0] + attr.meta["absorbed"][0])
    assert abs(total - float(attr.scores[0])) < 0.05 * abs(float(attr.scores[0]))
    # ReLU6 units that saturate keep their relevance (a true gradient would drop it)
    assert 0 < float(attr.meta["input_share"][0]) < 1


class Leaky(nn.Module):
    """A functional ReLU6 that saturates: not rewritten, so it drops relevance."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, functional=True):
        z = self.conv(x) * 20
        a = F.relu6(z) if functional else self.relu6(z)
        return self.fc(a.mean(dim=(2, 3)))


def test_conservation_detects_a_leak():
    torch.manual_seed(3)
    x = torch.rand(2, 3, 6, 6) * 3
    net = Leaky().eval()
    with torch.no_grad():
        assert float((net.conv(x) * 20 > 6).float().mean()) > 0.1  # it saturates
    leaky = attribute(net, x, "lrp", target=0)
    assert max(conservation(leaky)) > 0.05

    class Module6(Leaky):
        def forward(self, x):
            return super().forward(x, functional=False)

    fixed = Module6().eval()
    assert max(conservation(attribute(fixed, x, "lrp", target=0))) < 1e-4


def test_deletion_and_insertion_against_closed_forms():
    # score = sum of w * x over the pixels (a unit, so no softmax): deleting pixels in
    # the order of their contributions gives a known curve
    torch.manual_seed(4)
    h, w = 4, 5
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, 1)).eval()
    with torch.no_grad():
        lin[1].weight.uniform_(0, 1)
        lin[1].bias.zero_()
    x = torch.rand(1, 3, h, w)
    contrib = (lin[1].weight.view(3, h, w) * x[0]).sum(0).detach().double().numpy()
    steps = h * w
    rows = deletion_insertion(lin, x, contrib, target="1:0", steps=steps, insertion_baseline="zero")
    order = np.sort(contrib.ravel())[::-1]
    total = contrib.sum()
    deletion = total - np.concatenate([[0], np.cumsum(order)])
    insertion = np.concatenate([[0], np.cumsum(order)])
    auc = lambda c: float((c[:-1] + c[1:]).sum() / (2 * (len(c) - 1)))  # noqa: E731
    np.testing.assert_allclose(rows[0]["deletion_curve"], deletion, rtol=1e-5, atol=1e-5)
    assert rows[0]["deletion"] == pytest.approx(auc(deletion), rel=1e-5)
    assert rows[0]["insertion"] == pytest.approx(auc(insertion), rel=1e-5)
    # the reverse order is worse on both counts
    worse = deletion_insertion(
        lin, x, -contrib, target="1:0", steps=steps, insertion_baseline="zero"
    )
    assert (
        worse[0]["deletion"] > rows[0]["deletion"] and worse[0]["insertion"] < rows[0]["insertion"]
    )


def test_rank_and_spearman_against_brute_force():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.normal(0, 1, 40)
    brute = np.array([(a < v).sum() + ((a == v).sum() + 1) / 2 for v in a])
    np.testing.assert_allclose(rank(a), brute)
    rb = np.array([(b < v).sum() + ((b == v).sum() + 1) / 2 for v in b])
    expect = np.corrcoef(brute, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expect, rel=1e-12)
    assert np.isnan(spearman(np.ones(5), b[:5]))


def test_randomization_check_on_a_copy():
    net = MixedNet().eval()
    torch.manual_seed(6)
    x = torch.randn(1, 3, *INPUT_SIZE)
    before = [p.detach().clone() for p in net.parameters()]
    out = randomization_check(net, x, "gradient", stages=3)
    # cumulative stages from the top: fc + conv2, then depthwise + branch_b, then the rest
    assert out["layers"] == ["conv2", "branch_b", "conv1"] and len(out["spearman"]) == 3
    assert out["final"] < 0.5  # randomised weights: a different map
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_evaluate_rows():
    net = MixedNet().eval()
    torch.manual_seed(7)
    x = torch.rand(1, 3, *INPUT_SIZE)
    rows = evaluate(
        net, x, ["grad_cam", "ig", "lrp"], steps=8, sanity=2, options={"ig": {"steps": 8}}
    )
    assert [r["method"] for r in rows] == ["grad_cam", "integrated_gradients", "lrp"]
    cam = rows[0]
    assert 0 <= cam["deletion"] <= 1 and 0 <= cam["insertion"] <= 1
    assert cam["conservation"] is None and cam["completeness"] is None
    assert rows[1]["completeness"] is not None and rows[2]["conservation"] < 0.05
    assert all(len(r["sanity_curve"]) == 2 for r in rows)
    assert all(-1 <= r["sanity"] <= 1 for r in rows[1:])  # a CAM may collapse to a constant (NaN)
