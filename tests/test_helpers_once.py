"""Helpers that used to be written several times (issue 16): each is one function now, and
every former copy's caller gets its answer from it. Each test compares to an independent
reference, so that a copy that came back (or the helper going wrong) fails here."""

from __future__ import annotations

import copy
import hashlib
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnscope.engine import Engine, find_layer, model_fingerprint, resolve_layer
from cnnscope.errors import UnknownLayerError
from cnnscope.render import safe_file_name, save_gif

# -- model_fingerprint -------------------------------------------------------------------------


def _reference_digest(module: nn.Module) -> str:
    """SHA-256 of the class name and every state-dict tensor, written out here again."""
    h = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _WithScratch(nn.Module):
    """A conv net with a non-persistent buffer: scratch space, not part of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.register_buffer("scratch", torch.zeros(5), persistent=False)

    def forward(self, x):
        return self.net(x)


def test_model_fingerprint_is_the_state_dict_digest_and_follows_weights():
    net = _WithScratch()
    first = model_fingerprint(net)
    assert first == _reference_digest(net) == Engine(net).model_fingerprint()
    assert model_fingerprint(copy.deepcopy(net)) == first  # same weights, another object

    net.scratch.add_(1.0)  # a buffer of no consequence: the cheap token changes, not this
    assert model_fingerprint(net) == first

    net.net[0].weight.data[0, 0, 0, 0] += 1.0  # behind autograd's back, a sampled value
    second = model_fingerprint(net)
    assert second != first and second == _reference_digest(net)

    net.net[1].running_var.mul_(2.0)  # a persistent buffer counts
    assert model_fingerprint(net) not in (first, second)
    assert model_fingerprint(net) == _reference_digest(net)


def test_model_fingerprint_is_cached_on_the_engine_memo():
    net = _WithScratch()
    engine = Engine.for_module(net)
    digest = model_fingerprint(net)
    assert digest in [v[1] for v in engine.memo.values() if isinstance(v, tuple)]
    from cnnscope import index

    assert index.model_fingerprint is model_fingerprint  # the index's is this one


# -- resolve_layer -----------------------------------------------------------------------------


class _Twice(nn.Module):
    """``act`` runs twice, ``conv`` once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(self.act(x)))


def _reference_resolve(layer: str, names: list[str]) -> str | None:
    if layer in names:
        return layer
    base, _, call = layer.partition("#")
    call = call or "1"  # a bare name is its first call
    if call == "1" and base in names:
        return base
    return f"{base}#{call}" if f"{base}#{call}" in names else None


@pytest.mark.parametrize("layer", ["conv", "conv#1", "act#1", "act#2", "act", "conv#2", "nope"])
def test_resolve_layer_is_what_engine_and_forward_use(layer):
    net = _Twice()
    engine = Engine(net)
    names = engine.layer_names((4, 4))
    assert names == ["input", "act#1", "conv", "act#2", "logits"]
    fwd = engine.forward(torch.zeros(1, 3, 4, 4))
    want = _reference_resolve(layer, names)
    assert find_layer(layer, names) == want
    if want is None:
        for call in (
            lambda: resolve_layer(layer, names),
            lambda: engine.resolve(layer, (4, 4)),
            lambda: fwd.resolve(layer),
        ):
            with pytest.raises(UnknownLayerError):
                call()
    else:
        assert resolve_layer(layer, names) == engine.resolve(layer, (4, 4)) == want
        assert fwd.resolve(layer) == want


# -- safe_file_name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("blocks.4:7@2,3", "blocks.4_7_2_3"),
        ("efficientnet_lite0", "efficientnet_lite0"),
        ("../../etc/passwd", "etc_passwd"),
        ("a  b\t\nc", "a_b_c"),
        ("katze-ü.jpg", "katze-_.jpg"),
        ("", "fallback"),
        ("...", "fallback"),
    ],
)
def test_safe_file_name(text, want):
    got = safe_file_name(text, "fallback")
    assert got == want
    assert re.fullmatch(r"[A-Za-z0-9._-]+", got) and not got.startswith(".")
    assert len(safe_file_name("x" * 100, max_len=60)) == 60


def test_file_names_of_callers_come_from_safe_file_name(tmp_path):
    from cnnscope.index import default_index_path
    from cnnscope.models import load_model

    model = load_model()
    odd = copy.copy(model)
    odd.name = "../my model: v2"
    folder = tmp_path / "my photos!"
    folder.mkdir()
    path = default_index_path(odd, tmp_path, folder)
    assert path.parent == tmp_path / "indexes"
    head, fingerprint, what, _digest = path.name.split("-")
    assert head == safe_file_name(odd.name, "model", max_len=60) == "my_model_v2"
    assert fingerprint == model_fingerprint(model.module)[:12]
    assert what == safe_file_name(folder.name) == "my_photos"


# -- save_gif ----------------------------------------------------------------------------------


@pytest.mark.parametrize("duration_ms", [120, 1200])
def test_save_gif_takes_the_callers_frame_time(tmp_path, duration_ms):
    frames = [np.zeros((6, 6, 3), np.uint8), np.full((3, 4, 3), 200, np.uint8)]
    path = save_gif(frames, tmp_path / "sub" / "a.gif", duration_ms)
    with Image.open(path) as im:
        assert im.n_frames == 2 and im.size == (4, 3)  # resized to the last frame
        assert im.info["loop"] == 0
        for i in range(2):
            im.seek(i)
            assert im.info["duration"] == duration_ms
            values = np.asarray(im.convert("RGB"))
            assert int(values.mean()) == (0 if i == 0 else 200)


def test_one_save_gif(tmp_path):
    from cnnscope import views

    frames = [np.zeros((6, 6, 3), np.uint8), np.full((6, 6, 3), 200, np.uint8)]
    mine = views.save_gif(frames, tmp_path / "views.gif")  # weight gradients' frame time
    assert Image.open(mine).info["duration"] == views.weightgrad.FRAME_MS == 1200
    same = save_gif(frames, tmp_path / "render.gif", 1200)  # the one writer underneath
    assert mine.read_bytes() == same.read_bytes()


# -- top_classes -------------------------------------------------------------------------------


def test_top_classes_of_every_caller(model, explorer, x):
    from cnnscope.cli.core import top_classes

    with torch.no_grad():
        logits = model.module(x)[0].double()
    probs = torch.exp(logits - torch.logsumexp(logits, 0))  # softmax, written out
    best = sorted(range(len(probs)), key=lambda i: -float(probs[i]))[:3]
    for got in (explorer.predictions(x, k=3), top_classes(model, x, 3)):
        assert [g["index"] for g in got] == best
        assert [g["label"] for g in got] == [model.labels[i] for i in best]
        np.testing.assert_allclose(
            [g["probability"] for g in got], [float(probs[i]) for i in best], rtol=1e-4
        )
    assert len(model.top_classes(logits, k=10_000)) == len(model.labels)


# -- TreePath ----------------------------------------------------------------------------------


def test_tree_path_is_treepath_and_path_is_deprecated():
    import pathlib

    import cnnscope.tree as tree
    from cnnscope.tree import TreePath, paths

    with pytest.warns(DeprecationWarning, match="TreePath"):
        assert tree.Path is TreePath
    with pytest.warns(DeprecationWarning):
        assert paths.Path is TreePath
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        assert tree.TreePath is TreePath
    assert TreePath is not pathlib.Path
