"""A unit's strength, position and seed (cnnscope.engine.strength): saturating activations.

The hand-built net's pre-activation is a tenth of the red (unit 0) and green (unit 1)
pixel values, so a ReLU6 after it saturates past pixel 60, and every answer is known:
the strength is the largest pixel / 10, the position is that pixel's, and the seed's
gradient at the input is 0.1 there and 0 elsewhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnscope.cli import main
from cnnscope.engine import (
    Engine,
    strength_at,
    strengths,
    strongest_units,
    unit_position,
    unit_seed,
)
from cnnscope.errors import CnnscopeError
from cnnscope.images import load_gallery_image
from cnnscope.index import IndexFormatError, build_index, open_index
from cnnscope.models import load_model

CLIP_NET = "tests.test_unit_strength:ClipNet"
SIZE = (4, 5)


class ClipNet(nn.Module):
    """``act = ReLU6(conv(x))`` with ``conv(x)[c] = x[c] / 10`` for c = 0, 1; then a head."""

    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.act = act if act is not None else nn.ReLU6()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = self.conv.weight[1, 1] = 0.1
            self.fc.weight.fill_(1.0), self.fc.bias.zero_()  # the same weights every time

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def red_green(red: np.ndarray, green: np.ndarray) -> torch.Tensor:
    """A 1 x 3 x H x W input with the given red and green planes (blue 0)."""
    planes = [
        torch.as_tensor(red, dtype=torch.float32),
        torch.as_tensor(green, dtype=torch.float32),
    ]
    return torch.stack([*planes, torch.zeros_like(planes[0])])[None]


# red: saturated (>= 60) from (0, 1) on; its largest value, 120, is at (1, 1)
RED = np.array([[1, 70, 65, 30, 0], [80, 120, 90, 5, 0], [10, 20, 30, 40, 0], [0, 0, 0, 0, 0]])
# green: saturated from (0, 0), largest 90 at (3, 4)
GREEN = np.array([[61, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 90]])


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.Hardtanh(-1.0, 2.0)], ids=["relu6", "hardtanh"])
def test_a_clipped_unit_is_measured_and_seeded_below_its_clip(act):
    net = ClipNet(act)
    fwd = Engine(net).forward(red_green(RED, GREEN))
    out = fwd.activation("act")[0]
    assert float(out[0].max()) == float(out[0, 0, 1])  # the clipped output ties at (0, 1)
    values, where = strengths(fwd, "act")
    assert values[0].tolist() == pytest.approx([12.0, 9.0])
    assert where[0].tolist() == [1 * 5 + 1, 3 * 5 + 4]
    assert unit_position(fwd, "act", 0) == (1, 1) and unit_position(fwd, "act", 1) == (3, 4)
    assert strength_at(fwd, "act", 0, [(0, 1)]).tolist() == pytest.approx([7.0])
    for rule in ("gradient", "guided"):
        at, seed = unit_seed(fwd, "act", 0)
        assert at == "conv"
        grad = fwd.grad(at, seed, rule=rule)[0]
        expected = torch.zeros(3, *SIZE)
        expected[0, 1, 1] = 0.1
        assert torch.allclose(grad, expected)
        # seeded at the clipped output, as before, the unit has no gradient at all
        one_hot = torch.zeros_like(fwd.activation("act"))
        one_hot[0, 0, 1, 1] = 1.0
        assert not fwd.grad("act", one_hot, rule=rule).any()
    # ranked by strength: both units read the clip, unit 0 goes further past it
    assert [(str(u), round(s, 4)) for u, s in strongest_units(fwd, "act", 2)] == [
        ("act:0", 12.0),
        ("act:1", 9.0),
    ]


def test_layers_without_an_activation_and_vectors_are_their_own_strength():
    net = ClipNet()
    x = red_green(RED, GREEN)
    fwd = Engine(net).forward(x)
    values, where = strengths(fwd, "conv")
    assert values[0].tolist() == pytest.approx([12.0, 9.0]) and where[0].tolist() == [6, 19]
    logits = fwd.activation("logits")
    values, where = strengths(fwd, "logits")
    assert torch.equal(values, logits) and not where.any()
    at, seed = unit_seed(fwd, "logits", 2)
    assert at == "logits" and seed[0].tolist() == [0.0, 0.0, 1.0]
    assert unit_position(fwd, "logits", 2) is None
    with pytest.raises(CnnscopeError, match="one position per image"):
        unit_seed(fwd, "act", 0, [(0, 0), (1, 1)])


# -- the index: ranking, positions and patches of a clipped unit ------------------------------


def grey_image(red_max: int, at: tuple[int, int]) -> Image.Image:
    """Red 100 everywhere (saturated: 10 > 6), ``red_max`` at ``at``; green 0."""
    a = np.zeros((*SIZE, 3), np.uint8)
    a[..., 0] = 100
    a[at[0], at[1], 0] = red_max
    return Image.fromarray(a)


# file-name order (a, b, c) is not strength order (b, a, c)
IMAGES = {"a.png": (200, (2, 3)), "b.png": (250, (1, 1)), "c.png": (150, (3, 4))}


@pytest.fixture(scope="module")
def clip_model():
    return load_model(CLIP_NET, input_size=SIZE, mean=0.0, std=1.0, scale=255.0, resize="resize")


@pytest.fixture(scope="module")
def clip_index(clip_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-images")
    for name, (value, at) in IMAGES.items():
        grey_image(value, at).save(folder / name)
    out = tmp_path_factory.mktemp("clip-ix") / "ix"
    build_index(clip_model, folder, ["act"], top_k=3, out=out, batch_size=2, workers=0)
    return out


def test_index_ranks_ties_at_the_clip_by_pre_activation(clip_index):
    ix = open_index(clip_index)
    got = [(e.image, e.position, round(e.activation, 4)) for e in ix.examples("act:0")]
    assert got == [("b.png", (1, 1), 25.0), ("a.png", (2, 3), 20.0), ("c.png", (3, 4), 15.0)]
    # unit 1 never fires (its pre-activation is 0 everywhere): a tie, kept in file order
    assert [e.image for e in ix.examples("act:1")] == ["a.png", "b.png", "c.png"]


def test_patches_of_a_saturated_unit_have_a_reconstruction(clip_index, clip_model, tmp_path):
    ix = open_index(clip_index)
    for patch, example in zip(ix.patches("act:0", clip_model), ix.examples("act:0")):
        y, x = example.position
        assert patch.activation == pytest.approx(example.activation)
        expected = np.zeros((3, *SIZE), np.float32)
        expected[0, y, x] = 0.1  # d(x/10)/dx at the unit's position, under guided
        np.testing.assert_allclose(patch.reconstruction, expected, atol=1e-7)
        assert patch.support_box == (y, x, y, x)
    png = tmp_path / "g.png"
    argv = ["examples", str(clip_index), "act:0", "--grid", str(png), "--tile", "8"]
    assert main([*argv, "--model", CLIP_NET]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape == (22, 49, 3)  # 2 x 2 tiles of 8 pixels per half, padded by 2
    for slot in range(3):  # each reconstruction: +0.1 in red, drawn light red, not grey
        y, x = 2 + 10 * (slot // 2), 27 + 2 + 10 * (slot % 2)
        assert (grid[y : y + 8, x : x + 8] == [255, 128, 128]).all(), slot


def test_an_index_of_format_1_is_refused_with_one_line(clip_index, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(clip_index, old)
    meta = json.loads((old / "index.json").read_text())
    meta["version"] = 1
    (old / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="index format 1.*rebuild it"):
        open_index(old)
    assert main(["examples", str(old), "act:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rebuild it" in err


def test_a_build_over_a_format_1_index_rebuilds_it(clip_index, clip_model, tmp_path, caplog):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(clip_index, old)
    meta = json.loads((old / "index.json").read_text())
    meta["version"] = 1
    (old / "index.json").write_text(json.dumps(meta))
    folder = open_index(clip_index).source.root
    with caplog.at_level("WARNING"):
        result = build_index(clip_model, folder, ["act"], top_k=3, out=old, batch_size=2)
    assert "index format 1" in caplog.text
    assert open_index(result).examples("act:0")[0].image == "b.png"


# -- the built-in model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea_forward(model):
    x = model.preprocess(load_gallery_image("chelsea"))
    return Engine.for_module(model.module).forward(x)


def test_a_saturated_unit_of_the_builtin_model_is_at_its_pre_activation_max(chelsea_forward):
    fwd = chelsea_forward
    layer, channel = "blocks.8.expand_act", 281
    out = fwd.activation(layer)[0, channel]
    pre = fwd.activation("blocks.8.expand_bn")[0, channel]
    assert float(out[0, 0]) == 6.0 and int((out == 6.0).sum()) > 1  # first of many at the clip
    assert unit_position(fwd, layer, channel) == (10, 13)
    assert float(pre[10, 13]) == float(pre.max()) > 13
    values, _ = strengths(fwd, layer)
    assert float(values[0, channel]) == float(pre.max())
    at, seed = unit_seed(fwd, layer, channel)
    assert at == "blocks.8.expand_bn"
    assert fwd.grad(at, seed, rule="guided").abs().max() > 0


def test_the_builtin_overview_is_not_a_wall_of_sixes(chelsea_forward):
    fwd = chelsea_forward
    for layer in ("blocks.8.expand_act", "blocks.15.expand_act", "head_act"):
        scores = [s for _, s in strongest_units(fwd, layer, 8)]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == 8
        assert min(scores) > 6.0  # each of them saturates, and by how much is shown
