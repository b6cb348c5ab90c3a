"""Each backward rule's tree against a hand-written reference, over three levels.

The reference re-implements the tree on a small network in float64: transposed
convolutions written directly, the fully connected layer and the average pool by hand,
and every ReLU rule as its own mask (tests/mixed_net.py's ``_act_back``). It follows the
definitions of :mod:`cnnscope.tree.explorer`:

- ``path`` scoring: ``w_c = mean(A_c * G_c)`` with ``G`` read before the child's own
  activation; the kept channel is negated when ``w_c`` goes against the rule's polarity,
  then crosses the child's activation under the rule;
- ``seed`` scoring (cnn_treevis): ``G`` taken through the child's rule first,
  ``w_c = |mean(A_c * G_c)|``, the gain measured there, no orientation.

Children, weights, edge signs, shares and the reconstructions of every level are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnscope.engine import Unit
from cnnscope.engine.rules import POLARITY, RULES
from cnnscope.models.base import LoadedModel, Preprocessing
from cnnscope.tree import Explorer

from .mixed_net import _act_back, _conv_back

SIZE = (12, 12)
CHAIN = ["logits", "act3", "relu2b", "relu1"]


class TinyNet(nn.Module):
    """conv-ReLU [chain] - conv-ReLU (hidden) - conv-ReLU [chain] - conv-ReLU6 [chain] - fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv2b = nn.Conv2d(6, 7, 1)
        self.relu2b = nn.ReLU()
        self.conv3 = nn.Conv2d(7, 8, 3, padding=1)
        self.act3 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.conv3.weight.mul_(30.0)  # some act3 units saturate at 6

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        h = self.act3(self.conv3(self.relu2b(self.conv2b(h))))
        return self.fc(torch.flatten(self.pool(h), 1))


class Reference:
    """The tree of TinyNet written out by hand (float64, no autograd, no engine)."""

    def __init__(self, net: TinyNet, x: torch.Tensor, rule: str, gain: str, scoring: str):
        self.net, self.rule, self.gain, self.scoring = net, rule, gain, scoring
        d = {n: m.double().requires_grad_(False) for n, m in _copies(net).items()}
        self.conv = d
        with torch.no_grad():
            t = {"x": x.double()}
            t["z1"] = d["conv1"](t["x"])
            t["h1"] = t["z1"].clamp(min=0)
            t["z2"] = d["conv2"](t["h1"])
            t["h2"] = t["z2"].clamp(min=0)
            t["z2b"] = d["conv2b"](t["h2"])
            t["h2b"] = t["z2b"].clamp(min=0)
            t["z3"] = d["conv3"](t["h2b"])
            t["h3"] = t["z3"].clamp(0, 6)
        self.t = t
        self.post = {"act3": "h3", "relu2b": "h2b", "relu1": "h1"}
        self.pre = {"act3": "z3", "relu2b": "z2b", "relu1": "z1"}

    def from_logit(self, cls: int) -> torch.Tensor:
        """G at act3's output: fc then the average pool, backwards."""
        w = self.net.fc.weight.detach().double()[cls]
        h3 = self.t["h3"]
        return (w[None, :, None, None] / (h3.shape[2] * h3.shape[3])).expand_as(h3).clone()

    def down(self, layer: str, seed: torch.Tensor) -> torch.Tensor:
        """From a seed at ``layer``'s pre-activation to the next chain layer's output."""
        t, c, r = self.t, self.conv, self.rule
        if layer == "act3":
            return _conv_back(c["conv3"], t["h2b"], seed)
        if layer == "relu2b":
            g = _act_back(r, t["z2"], _conv_back(c["conv2b"], t["h2"], seed))
            return _conv_back(c["conv2"], t["h1"], g)
        return _conv_back(c["conv1"], t["x"], seed)  # relu1: to the input

    def to_input(self, layer: str, seed: torch.Tensor) -> torch.Tensor:
        order = ["act3", "relu2b", "relu1"]
        for i in range(order.index(layer), len(order)):
            g = self.down(order[i], seed)
            if i + 1 < len(order):
                seed = _act_back(self.rule, self.t[self.pre[order[i + 1]]], g)
        return g

    def enter(self, layer: str, g: torch.Tensor) -> torch.Tensor:
        """Cross ``layer``'s own activation under the rule, as a ReLU (no top clip)."""
        return _act_back(self.rule, self.t[self.pre[layer]], g)

    def keep(self, g: torch.Tensor, c: int) -> torch.Tensor:
        out = torch.zeros_like(g)
        mult = 1.0
        if self.gain == "auto":
            kept = float(g[:, c].abs().sum())
            mult = float(g.abs().sum()) / kept if kept > 0 else 0.0
        out[:, c] = g[:, c] * mult
        return out

    def level(self, layer: str, g: torch.Tensor):
        """(w per channel, the reading G, seed of child c) for children in ``layer``."""
        if self.scoring == "seed":
            g = self.enter(layer, g)
        a = self.t[self.post[layer]]
        w = (a[0] * g[0]).reshape(a.shape[1], -1).mean(1)

        def child_seed(c: int) -> torch.Tensor:
            kept = self.keep(g, c)
            if self.scoring == "seed":
                return kept
            if float(w[c]) * POLARITY[self.rule] < 0:
                kept = -kept
            return self.enter(layer, kept)

        return w, child_seed


def _copies(net: TinyNet) -> dict:
    import copy

    return {n: copy.deepcopy(getattr(net, n)) for n in ("conv1", "conv2", "conv2b", "conv3")}


def _top(w: torch.Tensor, k: int, sign: str, rule: str) -> list[int]:
    along = w.numpy() * POLARITY[rule]
    if sign == "abs":
        order = [int(c) for c in np.argsort(-np.abs(along), kind="stable")]
    elif sign == "pos":
        order = [int(c) for c in np.argsort(-along, kind="stable") if along[c] > 0]
    else:
        order = [int(c) for c in np.argsort(along, kind="stable") if along[c] < 0]
    return order[:k]


@pytest.fixture(scope="module")
def net():
    return TinyNet().eval()


@pytest.fixture(scope="module")
def ex(net):
    pre = Preprocessing(SIZE, (0.5,) * 3, (0.5,) * 3, resize="resize")
    return Explorer(LoadedModel(net, pre, [f"c{i}" for i in range(5)], "tiny", CHAIN, "fc"))


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(7)
    return torch.randn(1, 3, *SIZE)


def test_the_tiny_net_saturates_and_the_chain_reads_pre_activations(ex, net, x):
    fwd = ex.forward(x)
    assert ex.chain == CHAIN
    assert [ex.grad_layer(fwd, n) for n in CHAIN[1:]] == ["conv3", "conv2b", "conv1"]
    assert float(fwd.activation("act3").max()) == 6.0  # a ReLU6 node is saturated


def test_the_overview_scores_saturated_units_by_their_pre_activation(ex, x):
    fwd = ex.forward(x)
    (row,) = [r for r in ex.overview(x, per_layer=8) if r["layer"] == "act3"]
    pre = fwd.activation("conv3")[0].reshape(8, -1).amax(1).double()
    assert int((pre > 6).sum()) >= 2  # units that would all read 6 after the ReLU6
    order = pre.argsort(descending=True, stable=True).tolist()
    assert [u["unit"] for u in row["units"]] == [f"act3:{c}" for c in order]
    assert [u["score"] for u in row["units"]] == pytest.approx(pre[order].tolist())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    ("scoring", "sign", "gain"),
    [
        ("path", "pos", "auto"),
        ("path", "neg", "auto"),
        ("path", "pos", "none"),
        ("seed", "abs", "auto"),
    ],
)
def test_three_levels_match_the_reference(net, ex, x, rule, scoring, sign, gain):
    ref = Reference(net, x, rule, gain, scoring)
    path = (Unit("logits", 3),)
    g = ref.from_logit(3)
    parent_w = None
    for layer in CHAIN[1:]:
        w, child_seed = ref.level(layer, g)
        kids = ex.children(x, path, k=3, rule=rule, scoring=scoring, gain=gain, sign=sign)
        top = _top(w, 3, sign, rule)
        assert top, f"the reference has no {sign} children in {layer}"
        assert [n.unit for n in kids] == [Unit(layer, c) for c in top]
        np.testing.assert_allclose([n.weight for n in kids], w[top].numpy(), rtol=1e-4, atol=1e-9)
        # the edge's sign is relative to the parent: the root's seed raises it; a deeper
        # node's seed has the rule's polarity (path) or its own weight's sign (seed)
        if parent_w is None:
            facing = 1.0
        elif scoring == "path" or rule != "gradient":
            facing = POLARITY[rule]
        else:
            facing = float(np.sign(parent_w))
        edges = np.where(w.numpy() * facing < 0, -1, 1)
        assert [n.sign for n in kids] == ["pos" if edges[c] > 0 else "neg" for c in top]
        same = edges == edges[top[0]]
        share = abs(float(w[top[0]])) / float(w[torch.from_numpy(same)].abs().sum())
        assert kids[0].share == pytest.approx(share, rel=1e-4)
        # reconstructions: each child's seed down to the input, under the rule
        seeds = [child_seed(c) for c in top]
        expected = torch.stack([ref.to_input(layer, s)[0] for s in seeds])
        got = ex.input_gradients(x, [n.path for n in kids], rule, gain, scoring)
        scale = float(expected.abs().max().detach())
        assert scale > 0, f"{rule}: the reference pictures of {layer} are blank"
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * scale)
        # next level: below the first child
        path, g, parent_w = kids[0].path, ref.down(layer, seeds[0]), float(w[top[0]])
    assert ex.children(x, path, rule=rule, scoring=scoring, gain=gain, sign=sign) == []


@pytest.mark.parametrize("rule", RULES)
def test_every_child_of_either_sign_has_a_picture(ex, x, rule):
    """The bugs: guided_neg's children were blanked by their own rule (and had no
    children of their own), and inhibitory children were blank under guided."""
    level = [(Unit("logits", 3),)]
    for _ in range(3):
        nxt = []
        for path in level:
            for sign in ("pos", "neg"):
                kids = ex.children(x, path, k=2, rule=rule, sign=sign)
                if sign == "pos":
                    assert kids, f"{rule}: {path[-1]} has no children"
                    nxt.extend(n.path for n in kids)
                grads = ex.input_gradients(x, [n.path for n in kids], rule)
                for n, grad in zip(kids, grads):
                    assert float(grad.abs().max()) > 0, f"{rule}: {n.unit} ({sign}) is blank"
        level = nxt[:2]


def test_guided_neg_passes_negative_evidence(ex, x):
    """Under guided_neg the root's children lower it; guided_neg(g) = -guided(-g)."""
    kids = ex.children(x, "logits:3", k=3, rule="guided_neg")
    assert all(n.weight < 0 and n.sign == "neg" for n in kids)
    fwd = ex.forward(x)
    for n in kids:
        at, seed = ex.node_seed(fwd, n.path, "guided_neg")
        assert float(seed.max()) <= 0 < float(-seed.min())  # negative gradients go down
        grad = fwd.grad(at, seed, to="input", rule="guided_neg")
        mirror = fwd.grad(at, -seed, to="input", rule="guided")
        torch.testing.assert_close(grad, -mirror)
    deeper = ex.children(x, kids[0].path, k=3, rule="guided_neg")
    assert deeper and all(n.weight < 0 and n.sign == "pos" for n in deeper)  # they drive it


# ---------------------------------------------------------------- SiLU: negative outputs
def _silu_back(rule: str, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each rule at a SiLU whose input is ``z``, by hand (engine.rules' table)."""
    s = torch.sigmoid(z)
    slope = s * (1 + z * (1 - s))
    if rule == "gradient":
        return g * slope
    if rule == "deconvnet":
        return g.clamp(min=0)
    passed = (g > 0) if rule == "guided" else (g < 0)
    return g * slope * passed * (slope > 0)


class SiluNet(nn.Module):
    """conv-SiLU [chain] - conv-SiLU - average pool [chain] - fc. Pooled channel 0 is
    negative (its SiLU input is near -1) and the fc weighs it by -3: an excitatory child
    (``A < 0``, ``G < 0``) of logit 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.SiLU()
        self.conv2, self.act2 = nn.Conv2d(4, 5, 3, padding=1), nn.SiLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(5, 3)
        with torch.no_grad():
            self.conv2.weight[0].mul_(0.1)
            self.conv2.bias[0] = -1.0
            self.fc.weight[1, 0] = -3.0

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(h), 1))


class SiluReference:
    """SiluNet's tree by hand (float64): ``path`` scoring, kept channels oriented by
    ``mean(|A_c| * G_c)``, which is what the rule passes where ``A_c`` can be negative."""

    def __init__(self, net: SiluNet, x: torch.Tensor, rule: str):
        self.rule = rule
        self.c1, self.c2 = (m.double().requires_grad_(False) for m in _silu_copies(net))
        self.fc = net.fc.weight.detach().double()
        with torch.no_grad():
            self.x = x.double()
            self.z1 = self.c1(self.x)
            self.h1 = nn.functional.silu(self.z1)
            self.z2 = self.c2(self.h1)
            self.h2 = nn.functional.silu(self.z2)
            self.p = self.h2.mean((2, 3), keepdim=True)

    def to_act1(self, seed_pool: torch.Tensor) -> torch.Tensor:
        g = (seed_pool / self.z2[0, 0].numel()).expand_as(self.z2)
        return _conv_back(self.c2, self.h1, _silu_back(self.rule, self.z2, g))

    def to_input(self, seed_act1: torch.Tensor) -> torch.Tensor:
        return _conv_back(self.c1, self.x, _silu_back(self.rule, self.z1, seed_act1))

    def child(self, a: torch.Tensor, g: torch.Tensor, c: int) -> torch.Tensor:
        kept = torch.zeros_like(g)
        kept[:, c] = g[:, c] * float(g.abs().sum()) / float(g[:, c].abs().sum())
        if float((a[:, c].abs() * g[:, c]).mean()) * POLARITY[self.rule] < 0:
            kept = -kept
        return kept


def _silu_copies(net: SiluNet):
    import copy

    return copy.deepcopy(net.conv1), copy.deepcopy(net.conv2)


@pytest.fixture(scope="module")
def silu():
    net = SiluNet().eval()
    pre = Preprocessing(SIZE, (0.5,) * 3, (0.5,) * 3, resize="resize")
    model = LoadedModel(net, pre, ["a", "b", "c"], "silu", ["logits", "pool", "act1"], "fc")
    return net, Explorer(model)


@pytest.mark.parametrize("rule", RULES)
def test_silu_children_with_negative_outputs_match_the_reference(silu, x, rule):
    """The bug: ``pool:0`` (A < 0, G < 0, w > 0) was kept with G's sign, which guided
    closes at the SiLU: a flat picture for an excitatory child."""
    net, ex = silu
    ref = SiluReference(net, x, rule)
    g = ref.fc[1].reshape(1, -1, 1, 1).clone()
    w = (ref.p * g).reshape(-1)
    assert float(ref.p[0, 0]) < 0 < float(w[0])  # the case: excitatory, negative output
    kids = ex.children(x, "logits:1", k=5, rule=rule, sign="abs")
    assert Unit("pool", 0) in [n.unit for n in kids]
    np.testing.assert_allclose(
        [n.weight for n in kids], w[[n.unit.channel for n in kids]], rtol=1e-4, atol=1e-9
    )
    seeds = [ref.child(ref.p, g, n.unit.channel) for n in kids]
    expected = torch.stack([ref.to_input(ref.to_act1(s))[0] for s in seeds])
    got = ex.input_gradients(x, [n.path for n in kids], rule)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * scale)
    first = kids[[n.unit for n in kids].index(Unit("pool", 0))]
    assert float(got[[n.unit for n in kids].index(first.unit)].abs().max()) > 0
    # one level down, below pool:0: the act1 children and their pictures
    g1 = ref.to_act1(seeds[kids.index(first)])
    w1 = (ref.h1 * g1)[0].reshape(4, -1).mean(1)
    deeper = ex.children(x, first.path, k=4, rule=rule, sign="abs")
    np.testing.assert_allclose(
        [n.weight for n in deeper], w1[[n.unit.channel for n in deeper]], rtol=1e-4, atol=1e-9
    )
    expected = torch.stack([ref.to_input(ref.child(ref.h1, g1, n.unit.channel))[0] for n in deeper])
    got = ex.input_gradients(x, [n.path for n in deeper], rule)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6 * scale)
