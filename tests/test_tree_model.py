"""The explorer on the built-in EfficientNet-Lite0 and the gallery image chelsea."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnscope.engine import Unit


@pytest.fixture(scope="module")
def ex(explorer):
    return explorer  # conftest's Explorer of the built-in model, under this module's short name


def test_default_chain_is_cut_of_expanded_activations(ex):
    assert ex.chain[:3] == ["logits", "head_act", "blocks.15.expand_act"]
    assert ex.chain[-1] == "stem_act"
    fwd_layers = ex.engine.layer_names(ex.input_size)
    assert all(name in fwd_layers for name in ex.chain)


def test_zeroing_top_children_drops_parent_more_than_random(ex, x):
    root = "logits:285"
    kids = ex.children(x, root, k=5)
    f = ex.faithfulness(x, root, [n.unit for n in kids], draws=4)
    assert f["target"] == "max" and f["value"] == pytest.approx(
        float(ex.forward(x).activation("logits")[0, 285]), rel=1e-4
    )
    assert f["drop"] > f["random_drop"] + 3 * f["random_std"]
    assert f["drop"] > 0.05
    # one level down, along the path
    kids2 = ex.children(x, kids[0].path, k=5)
    f2 = ex.faithfulness(x, kids[0].path, [n.unit for n in kids2], draws=4)
    assert f2["target"] == "path"
    assert f2["drop"] > f2["random_drop"] + 3 * f2["random_std"]
    # the least contributing channels make a weak set: random does about as well
    everything = ex.children(x, root, k=1280, sign="abs")
    w = [n.weight for n in everything]
    tail = [n.unit for n in everything][-5:]
    weak = ex.faithfulness(x, root, tail, draws=1)
    assert abs(weak["drop"]) < f["drop"] / 10 and abs(w[-1]) < abs(w[0]) / 100


def test_saturated_relu6_root_is_not_blank(ex, x):
    fwd = ex.forward(x)
    act = fwd.activation("head_act")[0]
    saturated = int((act.reshape(act.shape[0], -1).amax(1) >= 6).nonzero()[0])
    grad = ex.input_gradients(x, [(Unit("head_act", saturated),)])[0]
    assert grad.abs().sum() > 0
    picture = ex.reconstruction(x, (Unit("head_act", saturated),))
    assert picture.std() > 2


def test_deep_reconstructions_are_neither_blank_nor_saturated(ex, x):
    path = ex.check_path("logits:285")
    for _ in range(5):
        kids = ex.children(x, path, k=3)
        assert len(kids) == 3
        pictures = ex.reconstructions(x, [n.path for n in kids])
        for pic in pictures:
            extreme = np.mean((pic == 0) | (pic == 255))
            assert pic.std() > 2, "blank reconstruction"
            assert extreme < 0.02, "saturated reconstruction"
        path = kids[0].path
    assert len(path) == 6 and path[-1].layer == ex.chain[5]


def test_local_and_path_scores_differ(ex, x):
    path = ex.children(x, "logits:285", k=2)[1].path
    local = ex.children(x, path, k=5, scoring="local")
    along = ex.children(x, path, k=5, scoring="path")
    assert [n.unit for n in local] != [n.unit for n in along]


def test_inhibitory_children(ex, x):
    neg = ex.children(x, "logits:285", k=5, sign="neg")
    assert len(neg) == 5 and all(n.weight < 0 and n.sign == "neg" for n in neg)
    pos = ex.children(x, "logits:285", k=5, sign="pos", rule="gradient")
    # under the true gradient the logit decomposes exactly over head_act channels
    fwd = ex.forward(x)
    a = fwd.activation("head_act")[0].mean((1, 2))
    w = ex.model.module.classifier.weight[285].detach()
    exact = (a * w) / 49.0  # mean over the 7x7 positions of A * G, G = w / 49
    for n in pos + neg:
        assert n.weight == pytest.approx(float(exact[n.unit.channel]), rel=1e-4, abs=1e-7)
    assert [n.unit.channel for n in neg] == torch.argsort(exact)[:5].tolist()


def test_parents_of_a_head_unit_are_logits(ex, x):
    kid = ex.children(x, "logits:285", k=1)[0].unit
    parents = ex.parents(x, kid, k=3)
    assert [p.unit.layer for p in parents] == ["logits"] * 3
    w = ex.model.module.classifier.weight[:, kid.channel].detach()
    a = ex.forward(x).activation("head_act")[0, kid.channel].mean()
    exact = w * a / 49.0  # guided = true gradient here: no ReLU between head_act and logits
    assert [p.unit.channel for p in parents] == torch.argsort(exact.abs(), descending=True)[
        :3
    ].tolist()
