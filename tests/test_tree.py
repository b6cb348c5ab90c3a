"""The explorer on MixedNet: children, seeds, gains and reconstructions against references.

The references are (a) a backward pass written by hand with the building blocks of
tests/mixed_net.py and w_c computed in numpy, and (b) brute force: separate, uncached
engine backwards hop by hop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnscope.engine import Engine, Unit
from cnnscope.engine.rules import POLARITY
from cnnscope.errors import CnnscopeError, UnitSpecError, UnknownLayerError
from cnnscope.models.base import LoadedModel, Preprocessing
from cnnscope.render import gradient_image
from cnnscope.tree import Explorer, Node, format_path, parse_path

from .mixed_net import INPUT_SIZE, MixedNet, _act_back, _conv_back

CHAIN = ["logits", "shared#3", "shared#2", "conv1"]


def _loaded(net: nn.Module, chain=None) -> LoadedModel:
    pre = Preprocessing(INPUT_SIZE, (0.5,) * 3, (0.5,) * 3, resize="resize")
    labels = [f"class {i}" for i in range(5)]
    return LoadedModel(net, pre, labels, "mixed", list(chain or CHAIN), "fc")


@pytest.fixture(scope="module")
def net():
    return MixedNet().eval()


@pytest.fixture(scope="module")
def ex(net):
    return Explorer(_loaded(net))


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(3)
    return torch.randn(1, 3, *INPUT_SIZE)


# ---------------------------------------------------------------- hand-written reference
def _hand_forward(net, x):
    """Every intermediate of MixedNet in float64 (as in mixed_net.reference_grad)."""
    names = ("conv1", "branch_a", "branch_b", "depthwise", "conv2")
    conv = {n: _double(getattr(net, n)) for n in names}
    with torch.no_grad():
        t = {"x": x.double()}
        t["z1"] = conv["conv1"](t["x"])
        t["h1"] = t["z1"].clamp(min=0)
        t["za"], t["zb"] = conv["branch_a"](t["h1"]), conv["branch_b"](t["h1"])
        t["a"], t["b"] = t["za"].clamp(min=0), t["zb"].clamp(min=0)
        t["cat"] = torch.cat([t["a"], t["b"]], 1)
        t["zd"] = conv["depthwise"](t["cat"])
        t["d"] = t["zd"].clamp(min=0)
        t["r"] = t["d"] + t["cat"]
        t["z2"] = conv["conv2"](t["r"])
        t["c2"] = t["z2"].clamp(min=0)
        t["z6"] = t["c2"] * 3.0
        t["c6"] = t["z6"].clamp(0, 6)
    return t, conv


def _double(conv: nn.Conv2d) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=conv.groups,
    ).double()
    with torch.no_grad():
        out.weight.copy_(conv.weight.double())
        out.bias.copy_(conv.bias.double())
    return out


@torch.no_grad()
def _from_logit(net, t, cls, rule):
    """Gradient at c2 (shared#3's output) from logit ``cls``, by hand."""
    seed = torch.zeros(1, net.fc.out_features, dtype=torch.float64)
    seed[0, cls] = 1.0
    g_pool = seed @ net.fc.weight.double()
    hw = t["c6"].shape[-2] * t["c6"].shape[-1]
    g = g_pool[:, :, None, None].expand_as(t["c6"]) / hw
    g = _act_back(rule, t["c6"], g)
    g = _act_back(rule, t["z6"], g, 0.0, 6.0)
    return g * 3.0


@torch.no_grad()
def _c2_to_d(conv, t, g_c2, rule):
    """From a seed at c2 (through shared#3's own rule) to the gradient at d."""
    g_z2 = _act_back(rule, t["z2"], g_c2)
    return _conv_back(conv["conv2"], t["r"], g_z2)  # r = d + cat: dr/dd = 1


@torch.no_grad()
def _d_to_z1(conv, t, g_d, rule):
    """From a seed at d (through shared#2's own rule) to the gradient at z1 (conv1 output)."""
    g_cat = _conv_back(conv["depthwise"], t["cat"], _act_back(rule, t["zd"], g_d))
    g_a, g_b = g_cat[:, :4], g_cat[:, 4:]
    g_h1 = _conv_back(conv["branch_a"], t["h1"], _act_back(rule, t["za"], g_a))
    g_h1 = g_h1 + _conv_back(conv["branch_b"], t["h1"], _act_back(rule, t["zb"], g_b))
    return _act_back(rule, t["z1"], g_h1)


def _keep_np(g: np.ndarray, c: int, gain: str) -> np.ndarray:
    out = np.zeros_like(g)
    if gain == "auto":
        kept = np.abs(g[:, c]).sum()
        mult = np.abs(g).sum() / kept if kept > 0 else 0.0
    else:
        mult = 1.0
    out[:, c] = g[:, c] * mult
    return out


def _oriented(g: np.ndarray, c: int, gain: str, w: np.ndarray, rule: str) -> np.ndarray:
    """The kept channel, negated when its weight goes against the rule (its polarity)."""
    flip = -1.0 if w[c] * POLARITY[rule] < 0 else 1.0
    return flip * _keep_np(g, c, gain)


def _w_np(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """w_c = mean over positions of A_c * G_c, in numpy."""
    return (a[0] * g[0]).reshape(a.shape[1], -1).mean(1)


def _top(w: np.ndarray, k: int, sign: str = "pos") -> list[int]:
    if sign == "pos":
        order = [int(c) for c in np.argsort(-w, kind="stable") if w[c] > 0]
    elif sign == "neg":
        order = [int(c) for c in np.argsort(w, kind="stable") if w[c] < 0]
    else:
        order = [int(c) for c in np.argsort(-np.abs(w), kind="stable")]
    return order[:k]


def _assert_top(kids, w: np.ndarray, k: int, sign: str = "pos") -> None:
    """``kids`` are the top ``k`` channels of the hand-computed weights ``w``, with those weights."""
    top = _top(w, k, sign)
    assert [n.unit.channel for n in kids] == top
    np.testing.assert_allclose([n.weight for n in kids], w[top], rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------- tests
def test_chain_is_canonical_and_ordered(net):
    ex = Explorer(_loaded(net, ["conv1", "fc", "shared~2".replace("~", "#"), "shared#3"]))
    assert ex.chain == CHAIN
    with pytest.raises(UnknownLayerError):
        Explorer(_loaded(net, ["logits", "nope"]))
    with pytest.raises(CnnscopeError):
        Explorer(_loaded(net, ["input"]))


def test_gradient_is_read_below_own_activation(ex):
    fwd = ex.forward(torch.zeros(1, 3, *INPUT_SIZE))
    assert ex.grad_layer(fwd, "shared#3") == "conv2"
    assert ex.grad_layer(fwd, "shared#2") == "depthwise"
    assert ex.grad_layer(fwd, "conv1") == "conv1"
    # act6's input is conv2's ReLU times 3, not the layer recorded before it
    assert ex.grad_layer(fwd, "act6") == "act6"


@pytest.mark.parametrize("rule", ["guided", "gradient", "deconvnet"])
@pytest.mark.parametrize("gain", ["auto", "none"])
def test_children_match_hand_written_numpy(net, ex, x, rule, gain):
    t, conv = _hand_forward(net, x)
    cls = 2
    # level 1: children of the logit in shared#3 (c2)
    g_c2 = _from_logit(net, t, cls, rule)
    w1 = _w_np(t["c2"].numpy(), g_c2.numpy())
    kids = ex.children(x, f"logits:{cls}", k=3, rule=rule, gain=gain)
    _assert_top(kids, w1, 3)
    assert all(n.path == (Unit("logits", cls), n.unit) for n in kids)
    # level 2: children of the first child (shared#3:j) in shared#2 (d), conditioned on the path
    s2 = torch.from_numpy(_oriented(g_c2.numpy(), kids[0].unit.channel, gain, w1, rule))
    g_d = _c2_to_d(conv, t, s2, rule)
    w2 = _w_np(t["d"].numpy(), g_d.numpy())
    kids2 = ex.children(x, kids[0].path, k=4, rule=rule, gain=gain, sign="abs")
    _assert_top(kids2, w2, 4, "abs")
    # level 3: children in conv1 (a layer without its own activation: A is signed)
    s3 = torch.from_numpy(_oriented(g_d.numpy(), kids2[0].unit.channel, gain, w2, rule))
    g_z1 = _d_to_z1(conv, t, s3, rule)
    w3 = _w_np(t["z1"].numpy(), g_z1.numpy())
    kids3 = ex.children(x, kids2[0].path, k=6, rule=rule, gain=gain, sign="abs")
    _assert_top(kids3, w3, 6, "abs")
    assert [n.sign for n in kids3] == ["pos" if w3[c] >= 0 else "neg" for c in _top(w3, 6, "abs")]
    # the bottom of the chain has no children
    assert ex.children(x, kids3[0].path, rule=rule, gain=gain) == []
    # the reconstruction of the deepest node: its kept channel (oriented) down to the input
    kept = torch.from_numpy(_oriented(g_z1.numpy(), 0, gain, w3, rule))
    g_x = _conv_back(conv["conv1"], t["x"], kept)
    got = ex.input_gradients(x, [kids3[0].path[:-1] + (Unit("conv1", 0),)], rule, gain)
    torch.testing.assert_close(got[0].double(), g_x[0], rtol=1e-4, atol=1e-7)


def test_children_match_brute_force_engine_backwards(net, x):
    """Separate, uncached engine backwards hop by hop, w_c in numpy."""
    ex = Explorer(_loaded(net))
    fwd = Engine(net).forward(x, cache=False)  # a private forward: nothing shared with ex
    rule, gain = "guided", "auto"
    seed = torch.zeros_like(fwd.activation("logits"))
    seed[0, 4] = 1.0
    g = fwd.grad("logits", seed, to="shared#3", rule=rule)
    w = _w_np(fwd.activation("shared#3").numpy(), g.numpy())
    top = _top(w, 2, "abs")
    path = (Unit("logits", 4), Unit("shared#3", top[1]))  # the second child
    s = torch.from_numpy(_keep_np(g.numpy(), top[1], gain))
    g2 = fwd.grad("shared#3", s, to="shared#2", rule=rule)
    w2 = _w_np(fwd.activation("shared#2").numpy(), g2.numpy())
    kids = ex.children(x, path, k=8, rule=rule, gain=gain, sign="abs")
    assert [n.unit.channel for n in kids] == _top(w2, 8, "abs")
    pos = ex.children(x, path, k=8, rule=rule, gain=gain)
    assert [n.unit.channel for n in pos] == _top(w2, 8, "pos")
    # reconstructions of all of them, one by one, against the batched call
    separate = []
    for n in kids:
        s3 = torch.from_numpy(_keep_np(g2.numpy(), n.unit.channel, gain))
        separate.append(fwd.grad("shared#2", s3, to="input", rule=rule)[0])
    batched = ex.input_gradients(x, [n.path for n in kids], rule, gain)
    torch.testing.assert_close(batched, torch.stack(separate), rtol=1e-5, atol=1e-7)
    pictures = ex.reconstructions(x, [n.path for n in kids], rule, gain)
    for pic, grad in zip(pictures, separate):
        np.testing.assert_array_equal(pic, gradient_image(grad))


def test_children_cost_one_backward_and_reconstructions_one_batched(net, x, monkeypatch):
    ex = Explorer(_loaded(net))
    path = (Unit("logits", 1),)
    ex.children(x, path, k=3)  # warm: the forward is recorded
    calls = []
    fwd = ex.forward(x)
    original = type(fwd).grad

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("batched", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(fwd), "grad", counting)
    kids = ex.children(x, path, k=3)
    assert calls == [False]
    kids2 = ex.children(x, kids[0].path, k=3)
    assert calls == [False, False]  # the path's seed is cached, not recomputed
    calls.clear()
    ex.reconstructions(x, [n.path for n in kids2])
    assert calls == [True]


def test_auto_gain_gives_the_channel_the_layer_mass(ex, x):
    fwd = ex.forward(x)
    root = (Unit("logits", 0),)
    at, s = ex.node_seed(fwd, root, "guided", "auto")
    g = fwd.grad(at, s, to="shared#3", rule="guided")
    for c in range(g.shape[1]):
        if g[:, c].abs().sum() == 0:
            continue
        _, kept = ex.node_seed(fwd, root + (Unit("shared#3", c),), "guided", "auto")
        assert float(kept.abs().sum()) == pytest.approx(float(g.abs().sum()), rel=1e-5)
        assert float(kept[:, c].abs().sum()) == pytest.approx(float(kept.abs().sum()))
        _, none = ex.node_seed(fwd, root + (Unit("shared#3", c),), "guided", "none")
        torch.testing.assert_close(none[:, c], g[:, c])
        _, fixed = ex.node_seed(fwd, root + (Unit("shared#3", c),), "guided", "fixed")
        torch.testing.assert_close(fixed[:, c], g[:, c] * g.shape[1])


class _DeadChannel(nn.Module):
    """conv -> ReLU -> conv that ignores input channel 2 -> ReLU -> pool -> fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 5)
        with torch.no_grad():
            self.conv2.weight[:, 2] = 0.0

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


def test_dead_channel_gives_zeros_not_nan(x):
    ex = Explorer(_loaded(_DeadChannel(), ["fc", "relu2", "relu1"]))
    kids = ex.children(x, "logits:0", k=4, sign="abs")
    path = kids[0].path + (Unit("relu1", 2),)
    fwd = ex.forward(x)
    _, seed = ex.node_seed(fwd, path, "guided", "auto")
    assert torch.isfinite(seed).all() and seed.abs().sum() == 0
    grad = ex.input_gradients(x, [path])
    assert torch.isfinite(grad).all() and grad.abs().sum() == 0
    picture = ex.reconstruction(x, path)
    assert picture.dtype == np.uint8 and (picture == 128).all()
    weights = {n.unit.channel: n.weight for n in ex.children(x, kids[0].path, k=4, sign="abs")}
    assert weights[2] == 0.0 and all(np.isfinite(list(weights.values())))


def test_local_scoring_seeds_the_node_alone(net, ex, x):
    t, conv = _hand_forward(net, x)
    path = ex.children(x, "logits:3", k=2)[1].path
    j = path[-1].channel
    # local: shared#3:j seeded with 1 at its pre-activation maximum (conv2's output)
    pos = int(t["z2"][0, j].reshape(-1).argmax())
    seed = torch.zeros_like(t["z2"])
    seed[0, j].view(-1)[pos] = 1.0
    g_d = _c2_to_d(conv, t, seed, "guided")  # z2 > 0 at its max: the rule passes the seed
    w = _w_np(t["d"].numpy(), g_d.numpy())
    local = ex.children(x, path, k=3, scoring="local")
    _assert_top(local, w, 3)
    conditioned = ex.children(x, path, k=3, scoring="path")
    assert [n.weight for n in local] != pytest.approx([n.weight for n in conditioned])
    # the same node as a root gives the local children
    root = ex.children(x, (Unit("shared#3", j),), k=3)
    assert [n.unit for n in root] == [n.unit for n in local]


def test_negative_children_are_inhibitory_under_true_gradient(net, ex, x):
    t, _ = _hand_forward(net, x)
    for cls in range(5):
        g_c2 = _from_logit(net, t, cls, "gradient")
        w = _w_np(t["c2"].numpy(), g_c2.numpy())
        neg = ex.children(x, f"logits:{cls}", k=3, rule="gradient", sign="neg")
        assert [n.unit.channel for n in neg] == _top(w, 3, "neg")
        assert all(n.weight < 0 and n.sign == "neg" for n in neg)
        pos = ex.children(x, f"logits:{cls}", k=3, sign="pos", rule="gradient")
        assert all(n.weight > 0 and n.sign == "pos" for n in pos)
        assert not {n.unit for n in pos} & {n.unit for n in neg}


def test_root_position_and_saturation(net, ex, x):
    # a root with an explicit position is seeded there
    fwd = ex.forward(x)
    at, seed = ex.node_seed(fwd, parse_path("shared#3:1@2,3"), "guided")
    assert at == "conv2" and seed[0, 1, 2, 3] == 1.0 and seed.sum() == 1.0
    assert ex.position(x, "shared#3:1@2,3") == (2, 3)
    with pytest.raises(UnitSpecError):
        ex.check_path("shared#3:1@9,9")


def test_path_validation(ex, x):
    with pytest.raises(UnitSpecError, match="comes shared#2"):
        ex.check_path("logits:1/shared#3:1/conv1:0")
    with pytest.raises(UnitSpecError, match="out of range"):
        ex.check_path("logits:7")
    with pytest.raises(UnknownLayerError):
        ex.check_path("nolayer:1")
    with pytest.raises(UnitSpecError):
        ex.check_path("input:0")
    with pytest.raises(CnnscopeError):
        ex.children(x, "logits:1", rule="magic")
    with pytest.raises(CnnscopeError):
        ex.children(x, "logits:1", gain="loud")
    with pytest.raises(CnnscopeError, match="unknown sign 'both': choose one of pos, neg, abs"):
        ex.children(x, "logits:1", sign="both")
    with pytest.raises(CnnscopeError, match="unknown scoring 'deep'"):
        ex.focus(x, "logits:1", scoring="deep")
    with pytest.raises(CnnscopeError, match="unknown gain 'loud'"):
        ex.input_gradients(x, ["logits:1"], gain="loud")
    with pytest.raises(CnnscopeError, match="unknown scoring 'deep'"):
        ex.faithfulness(x, "logits:1", [], scoring="deep")
    with pytest.raises(CnnscopeError, match="unknown rule 'magic'"):
        ex.parents(x, "shared#3:0", rule="magic")
    with pytest.raises(CnnscopeError):
        ex.children(x, "logits:1", k=0)
    with pytest.raises(CnnscopeError):
        ex.children(torch.zeros(2, 3, *INPUT_SIZE), "logits:1")
    # the model's logits module is an alias of logits
    assert ex.check_path("fc:1") == (Unit("logits", 1),)
    assert format_path(ex.check_path("logits:1/shared~3:2")) == "logits:1/shared~3:2"


def test_overview_and_predictions(ex, x):
    fwd = ex.forward(x)
    ov = ex.overview(x, per_layer=3)
    assert [row["layer"] for row in ov] == CHAIN
    for row in ov:
        pre = fwd.activation(fwd.pre_activation(row["layer"]))[0]  # the units' strength
        best = pre.reshape(pre.shape[0], -1).amax(1)
        scores = [u["score"] for u in row["units"]]
        assert scores == pytest.approx(sorted(best.tolist(), reverse=True)[:3])
    preds = ex.predictions(x, k=5)
    probs = torch.softmax(fwd.activation("logits")[0], 0)
    assert [p["index"] for p in preds] == probs.argsort(descending=True).tolist()
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0)


def test_parents_match_local_children(ex, x):
    unit = Unit("shared#2", 5)
    parents = ex.parents(x, unit, k=3)
    assert all(p.unit.layer == "shared#3" for p in parents)
    # each parent's weight is the unit's weight as the parent's local child
    for p in parents:
        assert p.path == (p.unit, unit)
        kids = ex.children(x, (p.unit,), k=8, sign="abs")
        w = {n.unit.channel: n.weight for n in kids}
        assert p.weight == pytest.approx(w[5], rel=1e-4, abs=1e-9)
    # ranked by magnitude over every channel of the layer above
    fwd = ex.forward(x)
    everything = []
    for c in range(fwd.activation("shared#3").shape[1]):
        kids = ex.children(x, (Unit("shared#3", c),), k=8, sign="abs")
        everything.append(next(n.weight for n in kids if n.unit.channel == 5))
    best = np.argsort(-np.abs(everything), kind="stable")[:3]
    best = [c for c in best.tolist() if everything[c] != 0]
    assert [p.unit.channel for p in parents] == best
    assert ex.parents(x, "logits:0") == []


def test_a_unit_that_feeds_nothing_has_no_parents():
    """On chelsea, blocks.15.expand_act:3 fires everywhere, but its depthwise channel is
    silent, so no unit of head_act gets anything from it: no parent, rather than six
    zero-weight ones."""
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model

    lite = Explorer(load_model())
    image = lite.input(load_gallery_image("chelsea"))
    fwd = lite.forward(image)
    assert float(fwd.activation("blocks.15.expand_act")[0, 3].min()) > 0
    assert float(fwd.activation("blocks.15.depthwise_act")[0, 3].abs().max()) == 0.0
    assert lite.parents(image, "blocks.15.expand_act:3", k=5) == []
    fed = lite.parents(image, "blocks.15.expand_act:5", k=5)
    assert fed and all(p.weight != 0 for p in fed)


def test_node_to_dict():
    node = Node(Unit("conv1", 2), 0.25, parse_path("logits:1/shared~3:0"), "pos")
    assert node.to_dict() == {
        "unit": "conv1:2",
        "weight": 0.25,
        "path": "logits:1/shared~3:0",
        "sign": "pos",
        "share": None,
    }
