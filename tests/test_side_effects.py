"""Property test: no public entry point leaves a trace on the caller's model or tensors.

Random calls (valid and invalid) are drawn against a model in an arbitrary training mode
with a mix of frozen and trainable parameters; after each, the snapshot must be equal.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnscope.engine import RULES, Engine
from cnnscope.errors import CnnscopeError

from .mixed_net import INPUT_SIZE, MixedNet
from .side_effects import assert_unchanged, snapshot

LAYERS = ["input", "conv1", "shared#1", "inplace", "depthwise", "shared#3", "act6", "fc", "logits"]


def _net(train: bool, frozen: bool) -> MixedNet:
    net = MixedNet().train(train)
    net.conv1.weight.requires_grad_(not frozen)
    return net


def _call_engine(net, x, op, rule, top, low, batched):
    engine = Engine(net)
    if op == "layers":
        return engine.layers(INPUT_SIZE)
    fwd = engine.forward(x)
    if op == "forward":
        return fwd.activation(top)
    act = fwd.activation(top)
    seed = torch.ones((3, *act.shape)) if batched else torch.ones_like(act)
    return fwd.grad(top, seed, to=low, rule=rule, batched=batched)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(["layers", "forward", "grad"]),
    rule=st.sampled_from(RULES),
    top=st.sampled_from(LAYERS + ["nope"]),
    low=st.sampled_from(LAYERS + ["bad#9"]),
    batched=st.booleans(),
    train=st.booleans(),
    frozen=st.booleans(),
)
def test_engine_calls_leave_no_trace(op, rule, top, low, batched, train, frozen):
    net = _net(train, frozen)
    x = torch.randn(1, 3, *INPUT_SIZE, requires_grad=True)
    before = snapshot(net, x)
    try:
        _call_engine(net, x, op, rule, top, low, batched)
    except CnnscopeError:
        pass  # a clear error is fine; a trace is not
    assert_unchanged(before, snapshot(net, x))


def test_model_that_raises_leaves_no_trace():
    class Broken(MixedNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    net = Broken().train()
    x = torch.randn(1, 3, *INPUT_SIZE)
    before = snapshot(net, x)
    with pytest.raises(RuntimeError, match="boom"):
        Engine(net).forward(x)
    assert_unchanged(before, snapshot(net, x))


def test_snapshot_detects_changes():
    """The checker itself can fail (otherwise the property test proves nothing)."""
    net = MixedNet()
    x = torch.randn(1, 3, *INPUT_SIZE)
    before = snapshot(net, x)
    net.train(False)
    with pytest.raises(AssertionError, match="training"):
        assert_unchanged(before, snapshot(net, x))
    net = MixedNet()
    before = snapshot(net, x)
    handle = net.conv1.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="hooks"):
        assert_unchanged(before, snapshot(net, x))
    handle.remove()
    x.add_(1)
    with pytest.raises(AssertionError, match="input"):
        assert_unchanged(before, snapshot(net, x))
