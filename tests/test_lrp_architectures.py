"""LRP on the structures of real architectures (issue 15), on small look-alikes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnscope.attribution import attribute
from cnnscope.attribution.lrp import find_gates, unfuse_batchnorm_acts
from cnnscope.errors import CnnscopeError
from tests.lookalike_models import (
    FusedNet,
    MBConvLike,
    lookalikes,
    randomize_batchnorms,
    unfused_twin,
)
from tests.side_effects import assert_unchanged, snapshot

METHODS = ("lrp_epsilon", "lrp", "lrp_zplus", "lrp_alpha_beta")
MODELS = lookalikes()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_relevance_is_conserved_on_every_lookalike(name, method, x, caplog):
    with caplog.at_level(logging.WARNING, logger="cnnscope.attribution.lrp"):
        attr = attribute(MODELS[name], x, method, target=1)
    conservation = attr.meta["conservation"]
    assert torch.allclose(conservation, torch.ones_like(conservation), atol=1e-3), conservation
    assert "LRP conserves" not in caplog.text


@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp", "lrp_zplus"])
def test_a_fused_batchnorm_act_net_and_its_unfused_twin_give_the_same_map(method, x):
    fused = randomize_batchnorms(FusedNet())
    twin = unfused_twin(fused)
    assert torch.allclose(fused(x), twin(x), atol=1e-5)
    a, b = attribute(fused, x, method, target=1), attribute(twin, x, method, target=1)
    assert len(a.meta["folded"]) == len(b.meta["folded"]) == 2
    assert _r(a.tensor, b.tensor) > 0.9999


def test_unfusing_keeps_the_function_and_leaves_the_model_alone(x):
    net = MODELS["inception"]
    before = net(x)
    copy = __import__("copy").deepcopy(net)
    assert len(unfuse_batchnorm_acts(copy)) == 7
    assert torch.allclose(copy(x), before, atol=1e-6)
    assert type(net.stem.bn).__name__ == "BatchNormAct2d"  # the original is untouched


@pytest.mark.parametrize("hard", [False, True])
def test_a_squeeze_excitation_gate_is_a_constant(hard, x):
    """LRP of an SE net equals LRP of the same net whose gate is detached from the graph."""
    torch.manual_seed(3)
    net = randomize_batchnorms(MBConvLike(hard=hard))
    with torch.no_grad():  # a gate that reacts to its input
        net.se.fc1.weight.mul_(4)
        net.se.fc2.weight.mul_(4)
    frozen = MBConvLike(hard=hard, frozen_gate=True).eval()
    frozen.load_state_dict(net.state_dict())
    for method in ("lrp_epsilon", "lrp_alpha_beta"):
        a = attribute(net, x, method, target=2)
        b = attribute(frozen, x, method, target=2)
        assert (a.tensor - b.tensor).abs().max() <= 1e-5 * a.tensor.abs().max()
    assert a.meta["rules"]["se.gate"] == "gate (constant)"


def test_a_sigmoid_output_is_no_gate():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 3), nn.Sigmoid())
    assert find_gates(net, torch.rand(1, 3, 8, 8)) == []


class _TokenNorm(nn.Module):
    """conv -> channels last -> LayerNorm -> Linear, no biases: all relevance reaches the input."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 2, stride=2, bias=False)
        self.norm = nn.LayerNorm(4, bias=False)
        self.fc = nn.Linear(4, 3, bias=False)
        self.functional = functional

    def forward(self, x):
        t = self.conv(x).permute(0, 2, 3, 1)
        t = F.layer_norm(t, (4,)) if self.functional else self.norm(t)
        return self.fc(t).mean((1, 2))


def test_layernorm_passes_relevance_on(x):
    torch.manual_seed(0)
    attr = attribute(_TokenNorm().eval(), x, "lrp", composite="zero", target=0)
    share = attr.meta["input_share"]
    assert torch.allclose(share, torch.ones_like(share), atol=1e-4), share
    assert attr.meta["rules"]["norm"] == "layernorm (std constant)"


def test_a_leak_is_reported_with_its_figure(x, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="cnnscope.attribution.lrp"):
        attr = attribute(_TokenNorm(functional=True).eval(), x, "lrp_epsilon", target=0)
    low = float(attr.meta["conservation"].min())
    assert abs(low - 1) > 0.05
    assert f"LRP conserves {low:.3f}" in caplog.text


def _one_unit(weight: torch.Tensor) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 1, 4, bias=False), nn.Flatten())
    with torch.no_grad():
        net[0].weight.copy_(weight)
    return net.eval()


@pytest.mark.parametrize("rule", ["flat", "wsquare"])
def test_flat_and_wsquare_spread_the_relevance_by_the_weights_alone(rule):
    w = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    net, x = _one_unit(w), torch.rand(1, 3, 4, 4) + 0.5
    attr = attribute(net, x, "lrp", composite="zero", rules={"0": rule}, target=0)
    share = torch.ones_like(w) if rule == "flat" else w * w
    expected = net(x).item() * share / share.sum()
    torch.testing.assert_close(attr.tensor, expected, rtol=1e-4, atol=1e-6)
    assert attr.meta["rules"]["0"] == rule


def test_first_layer_rules_refuse_deeper_layers(x):
    with pytest.raises(CnnscopeError, match="only for the first layer"):
        attribute(MODELS["vgg"], x, "lrp", rules={"2": "flat"}, target=0)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_wsquare"])
def test_flat_composites_conserve(composite, x):
    attr = attribute(MODELS["resnet"], x, "lrp", composite=composite, target=1)
    c = attr.meta["conservation"]
    assert torch.allclose(c, torch.ones_like(c), atol=1e-3), c


@pytest.mark.parametrize("name", ["inception", "efficientnet_se", "convnext"])
def test_the_canonizers_leave_the_users_model_alone(name, x):
    net = MODELS[name]
    before = snapshot(net, x)
    attribute(net, x, "lrp", target=0)
    assert_unchanged(before, snapshot(net, x))
    assert not any(type(m).__module__.startswith("cnnscope") for m in net.modules())
