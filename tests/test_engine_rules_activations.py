"""Backward rules on activations outside the ReLU family (issue 15).

Each rule is checked against a hand-written reference of its documented definition
(docs/methods.md, "Backward rules"): a layer-by-layer backward with plain autograd for
everything but the activations, whose rule is written out here from ``f'(x)`` and ``g``.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnscope import load_model
from cnnscope.attribution import attribute
from cnnscope.engine import Engine
from cnnscope.engine.rules import RULES, RuleState, attach_rules
from cnnscope.errors import CnnscopeError
from tests.lookalike_models import lookalikes

SELU_SCALE = 1.0507009873554805


class SqueezeExcite(nn.Module):
    """x * gate(conv(mean(x))): the gate is not a rectifier and keeps its true gradient."""

    def __init__(self, c: int, gate=torch.sigmoid):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.gate = gate

    def forward(self, x):
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class InPlace(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x * 1.0)  # the in-place variant, on a fresh tensor


# (activation, slope far below 0, slope far above 0): the rectifier deconvnet applies
ACTIVATIONS = {
    "silu": (nn.SiLU(), 0.0, 1.0),
    "silu_inplace": (InPlace(lambda t: F.silu(t, inplace=True)), 0.0, 1.0),
    "gelu": (nn.GELU(), 0.0, 1.0),
    "gelu_tanh": (nn.GELU(approximate="tanh"), 0.0, 1.0),
    "hardswish": (InPlace(lambda t: F.hardswish(t, inplace=True)), 0.0, 1.0),
    "mish": (nn.Mish(), 0.0, 1.0),
    "elu": (nn.ELU(), 0.0, 1.0),
    "selu": (nn.SELU(), 0.0, SELU_SCALE),
    "celu": (nn.CELU(0.5), 0.0, 1.0),
    "softplus": (nn.Softplus(beta=2.0), 0.0, 1.0),
    "relu6": (nn.ReLU6(), 0.0, 1.0),
    "leaky": (nn.LeakyReLU(0.1), 0.1, 1.0),
}


def make_net(act: nn.Module, gate=torch.sigmoid) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        act,
        SqueezeExcite(6, gate),
        nn.Conv2d(6, 5, 3, padding=1),
        act,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )
    return net.double().eval()


def reference(net: nn.Sequential, x, seed, rule: str, leak: float, gain: float):
    """Backward layer by layer; the activations (net[1], net[4]) follow ``rule`` by hand."""
    inputs = []
    a = x
    for layer in net:
        inputs.append(a)
        a = layer(a)
    g = seed
    for i in reversed(range(len(net))):
        a_in = inputs[i].detach().requires_grad_(True)
        out = net[i](a_in * 1.0)
        if i in (1, 4):
            (fprime,) = torch.autograd.grad(out.sum(), a_in)  # elementwise: f'(x)
            g = rule_by_hand(rule, g, fprime, leak, gain)
        else:
            (g,) = torch.autograd.grad(out, a_in, g)
    return g


def rule_by_hand(rule, g, fprime, leak, gain):
    if rule == "gradient":
        return g * fprime
    if rule == "deconvnet":
        return torch.where(g > 0, gain * g, leak * g)
    if rule == "guided":
        return torch.where((g > 0) & (fprime > 0), g * fprime, torch.zeros_like(g))
    return torch.where((g < 0) & (fprime > 0), g * fprime, torch.zeros_like(g))


def engine_grad(net, x, seed, rule):
    return Engine(net).forward(x).grad("logits", seed, to="input", rule=rule)


X = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
SEED = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 0.3, 2.0, -0.7]], dtype=torch.float64)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_rule_matches_its_definition(name, rule):
    act, leak, gain = ACTIVATIONS[name]
    net = make_net(act)
    got = engine_grad(net, X, SEED, rule)
    torch.testing.assert_close(got, reference(net, X, SEED, rule, leak, gain))


@pytest.mark.parametrize("name", ["silu", "gelu", "hardswish", "mish", "elu"])
def test_gradient_rule_is_the_true_gradient(name):
    net = make_net(ACTIVATIONS[name][0])
    x = X.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(net(x), x, SEED)
    assert torch.equal(engine_grad(net, X, SEED, "gradient"), true)


@pytest.mark.parametrize("name", ["silu", "gelu", "hardswish", "mish"])
def test_guided_is_no_longer_the_plain_gradient(name):
    # The old engine hooked ReLU-family nodes only: guided gave the gradient bit for bit.
    net = make_net(ACTIVATIONS[name][0])
    plain = engine_grad(net, X, SEED, "gradient")
    for rule in ("guided", "deconvnet", "guided_neg"):
        assert not torch.equal(engine_grad(net, X, SEED, rule), plain), rule


def test_guided_passes_positive_gradients_only_on_a_gated_unit():
    # SiLU's f' < 0 below x = -1.28: g * f'(x) is negative there even where g > 0.
    x = torch.tensor([-3.0, -2.0, 1.0], dtype=torch.float64).view(1, 1, 1, 3)
    net = nn.Sequential(nn.SiLU(), nn.Flatten()).double()
    seed = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64)
    guided = engine_grad(net, x, seed, "guided")
    assert guided.flatten()[:2].tolist() == [0.0, 0.0] and guided.flatten()[2] > 0
    assert engine_grad(net, x, seed, "guided_neg").flatten().tolist() == [0.0, 0.0, 0.0]


def test_warns_once_per_attribution_call(caplog):
    net = make_net(nn.SiLU())
    image = X[:1].float()
    net = net.float()
    with caplog.at_level(logging.WARNING, logger="cnnscope.engine.rules"):
        attribute(net, image, "smoothgrad", base="guided_backprop", samples=6, batch_size=2)
    notes = [r.getMessage() for r in caplog.records if r.name == "cnnscope.engine.rules"]
    assert len(notes) == 1, notes
    assert notes[0] == (
        "rule 'guided' met activations that are not ReLU-family: generalised to 2 SiLU calls;"
        " passed the true gradient through 1 Sigmoid calls (not rectifiers)"
        " (see docs/methods.md, backward rules)"
    )


def test_warns_once_per_forward_and_rule(caplog):
    net = make_net(nn.GELU())
    fwd = Engine(net).forward(X)
    with caplog.at_level(logging.WARNING, logger="cnnscope.engine.rules"):
        for rule in ("guided", "guided", "deconvnet", "gradient"):
            fwd.grad("logits", SEED, rule=rule)
    notes = [r.getMessage() for r in caplog.records if r.name == "cnnscope.engine.rules"]
    assert [n.split()[1] for n in notes] == ["'guided'", "'deconvnet'"]


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_neg"])
def test_method_with_nothing_to_shape_raises_one_line(method):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Tanh(), SqueezeExcite(4), nn.Flatten(), nn.Linear(4 * 7 * 7, 3)
    )
    with pytest.raises(CnnscopeError, match="no ReLU-family or rectifying activation") as err:
        attribute(net.eval(), X[:1].float(), method)
    assert "\n" not in str(err.value) and "1 Sigmoid, 1 Tanh" in str(err.value)
    attribute(net.eval(), X[:1].float(), "gradient")  # the true gradient needs no rule


def test_hardsigmoid_gate_keeps_its_true_gradient():
    net = make_net(nn.Hardswish(), gate=F.hardsigmoid)
    torch.testing.assert_close(
        engine_grad(net, X, SEED, "guided"), reference(net, X, SEED, "guided", 0.0, 1.0)
    )


def test_builtin_model_has_relu_family_activations_only(caplog):
    module = load_model().module
    x = torch.randn(1, 3, 224, 224)
    fwd = Engine(module).forward(x)
    with caplog.at_level(logging.WARNING, logger="cnnscope.engine.rules"):
        fwd.grad("logits", torch.eye(1000)[:1], rule="guided")
    assert not [r for r in caplog.records if r.name == "cnnscope.engine.rules"]
    found = attach_rules([fwd.output], RuleState())
    assert {act.family for act in found} == {"relu"}


@pytest.mark.parametrize("name", ["efficientnet_se", "mobilenetv3_se", "convnext"])
@pytest.mark.parametrize(
    "method", ["guided_backprop", "deconvnet", "guided_neg", "guided_grad_cam"]
)
def test_lookalikes_of_the_issue_are_shaped_by_the_rule(name, method, caplog):
    # efficientnet_b0 (SiLU), mobilenetv3 (hardswish), convnext_tiny (GELU): the old engine
    # returned their plain gradient (guided_grad_cam: times Grad-CAM) under these names.
    net = lookalikes()[name]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="cnnscope.engine.rules"):
        shaped = attribute(net, x, method, target=1).tensor
    assert len([r for r in caplog.records if r.name == "cnnscope.engine.rules"]) == 1
    if method != "guided_grad_cam":
        assert not torch.allclose(shaped, attribute(net, x, "gradient", target=1).tensor)


@pytest.mark.parametrize("name", ["silu", "mish", "selu"])
def test_batched_seeds_vmapped_or_looped_agree(name):
    fwd = Engine(make_net(ACTIVATIONS[name][0])).forward(X)
    seeds = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for rule in ("guided", "deconvnet", "guided_neg"):
        fwd.batch_strategy = "vmap"
        vmapped = fwd.grad("logits", seeds, rule=rule, batched=True)
        fwd.batch_strategy = "loop"
        torch.testing.assert_close(vmapped, fwd.grad("logits", seeds, rule=rule, batched=True))
