"""Parallel branches are no cuts: the engine's dataflow against a perturbation check (issue 15).

The reference holds one module's output constant (a forward hook that detaches it) and
asks whether the model's output still depends on the input: then some path goes around
that module. Inception look-alikes concatenate their branches in the top-level
``forward``: no branch may be the default CAM layer or a tree level.
"""

from __future__ import annotations

import pytest
import torch

from cnnscope.engine import Engine
from cnnscope.engine.structure import default_cam_layer
from cnnscope.models import load_model
from tests.lookalike_models import lookalikes

SIZE = (32, 32)


def _bypassed(net: torch.nn.Module, name: str) -> bool:
    """The reference: with ``name``'s output held constant, does the input still matter?"""
    hook = dict(net.named_modules())[name].register_forward_hook(lambda m, i, o: o.detach())
    try:
        x = torch.randn(1, 3, *SIZE, requires_grad=True)
        y = net(x)
        if not y.requires_grad:
            return False
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    finally:
        hook.remove()
    return g is not None and float(g.abs().max()) > 0


@pytest.fixture(scope="module")
def nets():
    return lookalikes()


@pytest.mark.parametrize("name", ["inception", "inception_torchvision", "densenet", "resnet"])
def test_dataflow_bypass_matches_the_perturbation_reference(nets, name):
    net = nets[name]
    flow = Engine.for_module(net).dataflow(SIZE)
    names = [n for n, m in net.named_modules() if n and flow.known(n)]
    assert len(names) > 5
    got = {n: flow.bypassed(n) for n in names}
    assert got == {n: _bypassed(net, n) for n in names}
    assert any(got.values()) and not all(got.values())


def test_inception_branches_feed_no_sibling(nets):
    flow = Engine.for_module(nets["inception"]).dataflow(SIZE)
    assert flow.feeds("stem", "b1") and flow.feeds("b3.0", "b3.1")
    assert not flow.feeds("b1", "b3") and not flow.feeds("b5", "bp")


@pytest.mark.parametrize("name", ["inception", "inception_torchvision"])
def test_a_branch_concatenated_at_the_top_is_no_default_layer(nets, name):
    """The bug: ``bp`` (4 of 16 channels) was the CAM layer, and bp, b5, b3, b1 the
    tree levels, each feeding none of the others."""
    net = nets[name]
    model = load_model(net, input_size=SIZE[0])
    layer = default_cam_layer(Engine.for_module(net), SIZE)
    assert layer == "stem" and not _bypassed(net, layer)
    assert model.default_chain == ["fc", "stem"]


def test_other_lookalikes_keep_their_dense_and_residual_levels(nets):
    chains = {n: load_model(nets[n], input_size=SIZE[0]).default_chain for n in nets}
    assert chains["densenet"] == ["classifier", "norm5", "transition", "layers.2", "norm0"]
    assert chains["efficientnet_se"][2:5] == ["head", "project", "se"]
    assert _bypassed(nets["densenet"], "layers.2")  # kept: it feeds the transition
