"""A node with no child of the asked sign says why, in one line (issue 15)."""

from __future__ import annotations

import logging

import pytest
import torch

from cnnscope.models import load_model
from cnnscope.tree import Explorer
from tests.lookalike_models import lookalikes


@pytest.fixture(scope="module")
def case():
    net = lookalikes()["resnet"]
    ex = Explorer(load_model(net, input_size=64))
    torch.manual_seed(0)
    return net, ex, torch.randn(1, 3, 64, 64)


def _head_contributions(net, x, cls: int) -> torch.Tensor:
    """By hand: the logit's children in the pooled features are ``A_c * W[cls, c]``."""
    with torch.no_grad():
        pooled = net.fc[1](net.fc[0](net.layer1(net.relu(net.bn1(net.conv1(x))))))
    return pooled[0] * net.fc[2].weight[cls]


def test_a_logit_carried_by_its_bias_says_why_it_has_no_children(case, caplog):
    net, ex, x = case
    w = _head_contributions(net, x, 0)
    assert bool((w <= 0).all())  # the reference: no excitatory child of logit 0
    with caplog.at_level(logging.INFO, logger="cnnscope.tree.explorer"):
        assert ex.children(x, "logits:0", k=3) == []
    (line,) = [r.getMessage() for r in caplog.records if "evidence" in r.getMessage()]
    assert line == ex.no_children(x, "logits:0")
    n = int((w < 0).sum())
    assert "no unit of fc.0 carries excitatory evidence for logits:0 under guided" in line
    assert (f"all {n}" if n == w.numel() else f"{n} of {w.numel()}") in line
    bias = float(net.fc[2].bias[0].detach())
    assert f"bias of {bias:+.3g}" in line and "try the inhibiting sign" in line
    assert len(ex.children(x, "logits:0", k=3, sign="neg")) == 3


def test_no_reason_when_there_are_children_and_one_at_the_bottom(case):
    _, ex, x = case
    assert ex.no_children(x, "logits:1") is None
    bottom = ex.children(x, "logits:1", k=1)[0].path
    while ex.below(bottom[-1].layer) is not None:
        bottom = ex.children(x, bottom, k=1, sign="abs")[0].path
    assert (
        ex.no_children(x, bottom)
        == f"{bottom[-1]} is in the bottom layer of the chain: it has no children"
    )
