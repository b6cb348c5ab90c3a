"""The engine against a hand-written backward pass, plus addressing and batching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cnnscope.engine import RULES, Engine, Unit, weights_fingerprint
from cnnscope.errors import CnnscopeError, UnitSpecError, UnknownLayerError
from cnnscope.index import model_fingerprint

from .mixed_net import INPUT_SIZE, MixedNet, reference_grad


@pytest.fixture(scope="module")
def net():
    return MixedNet()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, *INPUT_SIZE)


@pytest.mark.parametrize("rule", RULES)
def test_rules_match_hand_written_backward(net, x, rule):
    fwd = Engine(net).forward(x)
    torch.manual_seed(2)
    seed = torch.randn_like(fwd.activation("logits"))
    ref = reference_grad(net, x, seed, rule)
    got_input, got_conv1 = fwd.grad("logits", seed, to=["input", "conv1"], rule=rule)
    torch.testing.assert_close(got_input.double(), ref["input"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_conv1.double(), ref["conv1"], rtol=1e-4, atol=1e-5)
    # the rules differ from each other on this network (the test can tell them apart)
    if rule != "gradient":
        plain = reference_grad(net, x, seed, "gradient")["input"]
        assert not torch.allclose(plain, ref["input"])


def test_rules_change_result_between_calls_on_one_forward(net, x):
    fwd = Engine(net).forward(x)
    seed = torch.ones_like(fwd.activation("logits"))
    guided = fwd.grad("logits", seed, rule="guided")
    plain = fwd.grad("logits", seed, rule="gradient")
    guided_again = fwd.grad("logits", seed, rule="guided")
    torch.testing.assert_close(guided, guided_again)
    assert not torch.allclose(guided, plain)


def test_reused_module_is_addressed_per_call(net, x):
    engine = Engine(net)
    names = engine.layer_names(INPUT_SIZE)
    assert {"shared#1", "shared#2", "shared#3"} <= set(names)
    assert "shared" not in names
    fwd = engine.forward(x)
    assert fwd.activation("shared#2").shape == (2, 8, *INPUT_SIZE)
    assert fwd.activation("shared#3").shape == (2, 8, 5, 7)
    # the bare name is the first call
    torch.testing.assert_close(fwd.activation("shared"), fwd.activation("shared#1"))
    assert engine.resolve("shared", INPUT_SIZE) == "shared#1"


def test_inplace_relu_keeps_pre_activation_recorded(net, x):
    fwd = Engine(net).forward(x)
    pre = fwd.activation("branch_b")
    post = fwd.activation("inplace")
    assert (pre < 0).any(), "branch_b output must keep its negative (pre-ReLU) values"
    torch.testing.assert_close(post, pre.clamp(min=0))


def test_batched_seeds_equal_separate_backwards(net, x):
    fwd = Engine(net).forward(x)
    act = fwd.activation("shared#3")
    torch.manual_seed(3)
    seeds = torch.randn(5, *act.shape)
    for strategy in ("auto", "vmap", "loop"):
        fwd.batch_strategy = strategy
        for rule in RULES:
            batched = fwd.grad("shared#3", seeds, to=["conv1", "input"], rule=rule, batched=True)
            for i, layer in enumerate(("conv1", "input")):
                separate = torch.stack(
                    [fwd.grad("shared#3", s, to=layer, rule=rule) for s in seeds]
                )
                assert batched[i].shape == (5, *fwd.activation(layer).shape)
                torch.testing.assert_close(batched[i], separate, rtol=1e-5, atol=1e-6)


def test_gradient_rule_equals_autograd(net, x):
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    seed = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, xr, seed)
    got = Engine(net).forward(x).grad("logits", seed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_forward_is_cached_per_input(net, x):
    engine = Engine(net)
    assert engine.forward(x) is engine.forward(x.clone())
    assert engine.forward(x) is not engine.forward(x + 1)


def test_cache_is_bounded():
    engine = Engine(MixedNet(), cache_bytes=1)
    for i in range(4):
        engine.forward(torch.full((1, 3, *INPUT_SIZE), float(i)))
    assert len(engine._cache) == 1


def test_unknown_layer_suggests_close_names(net, x):
    fwd = Engine(net).forward(x)
    with pytest.raises(UnknownLayerError, match="did you mean.*branch_a"):
        fwd.activation("branch-a")
    with pytest.raises(CnnscopeError, match="not below"):
        fwd.grad("conv1", torch.ones_like(fwd.activation("conv1")), to="fc")


def test_seed_shape_is_checked(net, x):
    fwd = Engine(net).forward(x)
    with pytest.raises(CnnscopeError, match="seed shape"):
        fwd.grad("logits", torch.ones(3))


def test_unit_parsing():
    assert Unit.parse("blocks.3.expand_act:12@4,5") == Unit("blocks.3.expand_act", 12, (4, 5))
    assert Unit.parse("logits:285") == Unit("logits", 285)
    assert str(Unit.parse("a#2:3")) == "a#2:3"
    for bad in ["logits", "x:y", "a:1@2", ":3", "a:-1"]:
        with pytest.raises(UnitSpecError):
            Unit.parse(bad)


def test_receptive_fields_of_a_chain():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # rf 3, stride 1
        nn.MaxPool2d(2),  # rf 4, stride 2
        nn.Conv2d(4, 4, 3, stride=2),  # rf 4 + 2*2 = 8, stride 4
    )
    infos = {i.name: i for i in Engine(net).layers((32, 20))}
    assert infos["0"].field.size == (3, 3) and infos["0"].field.offset == (0.0, 0.0)
    assert infos["1"].field.size == (4, 4) and infos["1"].field.stride == (2, 2)
    assert infos["1"].field.offset == (0.5, 0.5)
    assert infos["2"].field.size == (8, 8) and infos["2"].field.stride == (4, 4)
    assert infos["2"].field.offset == (2.5, 2.5)
    assert infos["2"].shape == (4, 7, 4)


class _Functional(nn.Module):
    """One conv, then the activation under test written as a free function."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x)).sum(dim=(2, 3))


_FORMS = {
    "x.relu()": (lambda z: z.relu(), 0.0, float("inf"), 0.0),
    "torch.relu_": (lambda z: torch.relu_(z), 0.0, float("inf"), 0.0),
    "F.relu inplace": (lambda z: torch.nn.functional.relu(z, inplace=True), 0.0, float("inf"), 0.0),
    "clamp_min_(0)": (lambda z: z.clamp_min_(0), 0.0, float("inf"), 0.0),
    "clamp(min=0)": (lambda z: z.clamp(min=0), 0.0, float("inf"), 0.0),
    "F.relu6": (lambda z: torch.nn.functional.relu6(z * 8), 0.0, 6.0, 0.0),
    "F.hardtanh_": (lambda z: torch.nn.functional.hardtanh_(z), -1.0, 1.0, 0.0),
    "F.leaky_relu": (lambda z: torch.nn.functional.leaky_relu(z, 0.2), 0.0, float("inf"), 0.2),
    "F.threshold": (lambda z: torch.nn.functional.threshold(z, 0.0, 0.0), 0.0, float("inf"), 0.0),
}


@pytest.mark.parametrize("form", list(_FORMS))
@pytest.mark.parametrize("rule", RULES)
def test_every_functional_form_follows_the_rule(form, rule):
    act, lo, hi, leak = _FORMS[form]
    net = _Functional(act)
    x = torch.randn(1, 2, 5, 6)
    seed = torch.tensor([[1.0, -2.0, 0.5]])
    got = Engine(net).forward(x).grad("logits", seed, to="conv", rule=rule)
    # hand-written: the conv output z, the incoming gradient g (sum over positions)
    with torch.no_grad():
        z = net.conv(x)
        if form == "F.relu6":
            z, scale = z * 8, 8.0
        else:
            scale = 1.0
    g = seed[:, :, None, None].expand_as(z)
    slope = torch.where(z > lo, torch.ones_like(z), torch.full_like(z, leak)) * (z < hi)
    if rule == "gradient":
        expected = g * slope
    elif rule == "guided":
        expected = g * slope * (g > 0)
    elif rule == "guided_neg":
        expected = g * slope * (g < 0)
    else:
        expected = torch.where(g > 0, g, g * leak)
    torch.testing.assert_close(got, expected * scale)


def test_clamp_with_other_bounds_is_not_a_relu():
    net = _Functional(lambda z: z.clamp(min=-0.5))
    x = torch.randn(1, 2, 5, 6)
    seed = torch.tensor([[1.0, -2.0, 0.5]])
    fwd = Engine(net).forward(x)
    with pytest.raises(CnnscopeError, match="no ReLU-family or rectifying activation"):
        fwd.grad("logits", seed, to="conv", rule="guided")  # nothing the rule could shape


def test_cache_notices_weight_edits():
    net = MixedNet()
    engine = Engine(net)
    x = torch.randn(1, 3, *INPUT_SIZE)
    first = engine.forward(x)
    with torch.no_grad():
        net.fc.bias.add_(1.0)
    second = engine.forward(x)
    assert second is not first
    torch.testing.assert_close(second.activation("logits"), first.activation("logits") + 1.0)


def test_keep_graph_false_frees_the_graph_of_a_private_forward(net, x):
    engine = Engine(net)
    kept = engine.forward(x, cache=False)
    seed = torch.ones_like(kept.activation("logits"))
    expected = kept.grad("logits", seed, to="input", rule="guided")
    once = engine.forward(x, cache=False)
    got = once.grad("logits", seed, to="input", rule="guided", keep_graph=False)
    torch.testing.assert_close(got, expected)
    with pytest.raises(CnnscopeError, match="freed"):
        once.grad("logits", seed, to="input")
    batched = engine.forward(x, cache=False)
    seeds = torch.stack([seed, 2 * seed])
    two = batched.grad("logits", seeds, to="input", batched=True, keep_graph=False)
    torch.testing.assert_close(two[1], 2 * two[0])
    with pytest.raises(CnnscopeError, match="cached forward"):
        engine.forward(x).grad("logits", seed, keep_graph=False)
    engine.forward(x).grad("logits", seed)  # the cached forward still has its graph


# ---------------------------------------------------------------- weight edits and caches
def _bn_net() -> nn.Sequential:
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _train_step(net: nn.Module) -> None:
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 9, 9) + 1.0)  # updates BatchNorm's running statistics
    net.eval()


def _load_other(net: nn.Module) -> None:
    other = _bn_net()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5)
    net.load_state_dict(other.state_dict())


def _no_grad_add(net: nn.Module) -> None:
    with torch.no_grad():
        net[3].weight.add_(1.0)


# edits through .data (and of buffers) bypass autograd's version counter
WEIGHT_EDITS = {
    "param.data.mul_": lambda net: net[3].weight.data.mul_(2.0),
    "no_grad add_": _no_grad_add,
    "running_mean.data": lambda net: net[1].running_mean.data.add_(0.75),
    "train-mode forward": _train_step,
    "load_state_dict": _load_other,
}


def _tree_model(net: nn.Module):
    from cnnscope.models.base import LoadedModel, Preprocessing

    pre = Preprocessing((9, 9), (0.5,) * 3, (0.5,) * 3, resize="resize")
    return LoadedModel(net, pre, [f"c{i}" for i in range(4)], "bn", ["logits", "4", "2"], "7")


def _answers(net: nn.Module, x: torch.Tensor):
    """What the engine, a new explorer and LRP say about ``x``, through shared engines."""
    from cnnscope.attribution import attribute
    from cnnscope.tree import Explorer

    fwd = Engine.for_module(net).forward(x)
    seed = torch.ones_like(fwd.activation("logits"))
    grad = fwd.grad("logits", seed, to="input", rule="guided")
    nodes = Explorer(_tree_model(net)).children(x, "logits:1", k=3)
    lrp = attribute(net, x, "lrp_epsilon", target=1).tensor
    return fwd.activation("logits").clone(), grad, [(n.unit, n.weight) for n in nodes], lrp


@pytest.mark.parametrize("edit", list(WEIGHT_EDITS))
def test_caches_see_every_weight_edit(edit):
    net = _bn_net()
    x = torch.randn(1, 3, 9, 9)
    before = _answers(net, x)
    WEIGHT_EDITS[edit](net)
    fresh = copy.deepcopy(net)  # built after the edit: no cache has seen it
    got, expected = _answers(net, x), _answers(fresh, x)
    assert not torch.allclose(before[0], expected[0]), "the edit changes nothing"
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert [u for u, _ in got[2]] == [u for u, _ in expected[2]]
    np.testing.assert_allclose([w for _, w in got[2]], [w for _, w in expected[2]], rtol=1e-5)
    torch.testing.assert_close(got[3], expected[3])


def test_weights_fingerprint_reads_values_and_identity():
    net = _bn_net()
    first = weights_fingerprint(net)
    assert weights_fingerprint(net) == first
    assert Engine(net).weights_fingerprint() == first  # same value from any engine
    net[7].bias.data[0] += 1.0  # a write that autograd does not count
    second = weights_fingerprint(net)
    assert second != first
    net[7].bias = nn.Parameter(net[7].bias.detach().clone())  # same values, a new tensor
    assert weights_fingerprint(net) != second
    net = net.to(memory_format=torch.channels_last)  # non-contiguous weights are sampled too
    third = weights_fingerprint(net)
    net[3].weight.data.mul_(-1.0)
    assert weights_fingerprint(net) != third


def test_index_model_fingerprint_follows_weight_edits():
    net = _bn_net()
    before = model_fingerprint(net)
    net[3].weight.data.mul_(2.0)
    assert model_fingerprint(net) != before
    assert model_fingerprint(net) == model_fingerprint(copy.deepcopy(net))
