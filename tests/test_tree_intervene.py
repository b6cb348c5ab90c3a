"""Engine.intervene: a forward with some layers' outputs replaced (the explorer's ablations)."""

from __future__ import annotations

import pytest
import torch

from cnnscope.engine import Engine
from cnnscope.errors import UnknownLayerError

from .mixed_net import INPUT_SIZE, MixedNet


@pytest.fixture(scope="module")
def net():
    return MixedNet().eval()


def _by_hand(net, x, zero_d=(), zero_conv1=()):
    """MixedNet's forward written out, with channels of d (shared#2) or z1 zeroed per row."""
    with torch.no_grad():
        z1 = net.conv1(x)
        for row, chans in enumerate(zero_conv1):
            z1[row, list(chans)] = 0
        h1 = torch.relu(z1)
        a, b = torch.relu(net.branch_a(h1)), torch.relu(net.branch_b(h1))
        cat = torch.cat([a, b], 1)
        d = torch.relu(net.depthwise(cat))
        for row, chans in enumerate(zero_d):
            d[row, list(chans)] = 0
        z2 = net.conv2(d + cat)
        c3 = torch.nn.functional.relu6(torch.relu(z2) * 3.0).clamp(min=0)
        return net.fc(torch.flatten(net.pool(c3), 1)), z2, d


def test_zeroing_channels_per_row_matches_hand_forward(net):
    torch.manual_seed(5)
    x = torch.randn(3, 3, *INPUT_SIZE)
    sets = [(), (3,), (0, 5, 7)]
    mask = torch.ones(3, 8)
    for row, chans in enumerate(sets):
        mask[row, list(chans)] = 0

    def zero(t):
        return t * mask.view(3, 8, 1, 1)

    out = Engine(net).intervene(x, {"shared#2": zero}, read=["logits", "conv2", "shared#2"])
    logits, z2, d = _by_hand(net, x, zero_d=sets)
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["conv2"], z2)
    torch.testing.assert_close(out["shared#2"], d)  # a read of an edited layer sees the edit
    # the unedited row equals the plain model; the edits change the others
    torch.testing.assert_close(out["logits"][0], net(x[:1])[0].detach())
    assert not torch.allclose(out["logits"][1], net(x[1:2])[0].detach())


def test_edit_of_one_call_of_a_reused_module_only(net):
    torch.manual_seed(6)
    x = torch.randn(2, 3, *INPUT_SIZE)
    engine = Engine(net)
    # shared#2 is the second call of one ReLU module: the first and third are untouched
    edited = engine.intervene(x, {"shared#2": lambda t: t * 0}, read=["shared#1", "shared#3"])
    plain = engine.forward(x, cache=False)
    torch.testing.assert_close(edited["shared#1"], plain.activation("shared#1"))
    assert not torch.allclose(edited["shared#3"], plain.activation("shared#3"))
    # conv1 edited: matches the hand forward
    out = engine.intervene(
        x, {"conv1": lambda t: t * torch.tensor([0, 1, 1, 1, 1, 0.0]).view(1, 6, 1, 1)}
    )
    logits, _, _ = _by_hand(net, x, zero_conv1=[(0, 5), (0, 5)])
    torch.testing.assert_close(out["logits"], logits)


def test_no_side_effects_even_when_an_edit_raises(net):
    x = torch.randn(1, 3, *INPUT_SIZE)
    keep = x.clone()
    net.train()
    try:
        engine = Engine(net)

        def boom(t):
            raise RuntimeError("edit failed")

        with pytest.raises(RuntimeError, match="edit failed"):
            engine.intervene(x, {"branch_a": boom})
        assert all(not m._forward_hooks for m in net.modules())
        assert net.training and all(m.training for m in net.modules())
        engine.intervene(x, {"branch_a": lambda t: t * 0})
        assert all(not m._forward_hooks for m in net.modules())
        assert net.training
        torch.testing.assert_close(x, keep)
    finally:
        net.eval()


def test_unknown_layer(net):
    with pytest.raises(UnknownLayerError):
        Engine(net).intervene(torch.randn(1, 3, *INPUT_SIZE), {"nope": lambda t: t})
