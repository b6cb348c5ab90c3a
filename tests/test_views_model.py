"""Layer views on real networks: weight gradients against finite differences, mosaics of
the built-in model, pruning against hand-zeroed copies, and the command line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cnnscope.cli import main
from cnnscope.errors import CnnscopeError, UnknownLayerError
from cnnscope.models import load_model
from cnnscope.render import colorize
from cnnscope.views import (
    filter_importance,
    mosaic,
    order_channels,
    prune_filters,
    pruning_sweep,
    read_vox,
    weight_gradients,
)

from .mixed_net import INPUT_SIZE, MixedNet
from .side_effects import assert_unchanged, snapshot

MIXED = "tests.mixed_net:MixedNet"


def _central_differences(net, x, target, weight, indices, eps=1e-6):
    """d net(x)[0, target] / d weight[idx] by central differences (float64, restored)."""
    out = []
    with torch.no_grad():
        for idx in indices:
            old = weight[idx].item()
            weight[idx] = old + eps
            up = net(x)[0, target].item()
            weight[idx] = old - eps
            down = net(x)[0, target].item()
            weight[idx] = old
            out.append((up - down) / (2 * eps))
    return np.array(out)


def _sample(shape, n, seed):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(s)) for s in shape) for _ in range(n)]


@pytest.mark.parametrize("layer", ["conv1", "depthwise", "conv2"])
def test_weight_gradient_matches_finite_differences_mixed_net(layer):
    net = copy.deepcopy(MixedNet()).double()
    torch.manual_seed(3)
    x = torch.randn(1, 3, *INPUT_SIZE, dtype=torch.float64)
    before = snapshot(net, x)
    g = weight_gradients(net, [x], layer, 2)[0]
    assert_unchanged(before, snapshot(net, x))
    weight = dict(net.named_modules())[layer].weight
    assert g.gradient.shape == tuple(weight.shape)
    indices = _sample(weight.shape, 10, seed=len(layer))
    probe = copy.deepcopy(net)
    numeric = _central_differences(probe, x, 2, dict(probe.named_modules())[layer].weight, indices)
    analytic = np.array([g.gradient[i] for i in indices])
    assert np.abs(analytic).max() > 1e-4  # the sampled weights matter
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        logits = net(x)
    assert g.logit == pytest.approx(float(logits[0, 2]))
    assert g.predicted == int(logits[0].argmax())


def test_frozen_weights_are_differentiated_on_a_copy():
    net = copy.deepcopy(MixedNet()).double()
    x = torch.randn(1, 3, *INPUT_SIZE, dtype=torch.float64)
    free = weight_gradients(net, [x], "conv1", 1)[0].gradient
    for p in net.parameters():
        p.requires_grad_(False)
    before = snapshot(net, x)
    frozen = weight_gradients(net, [x], "conv1", 1)[0].gradient
    assert_unchanged(before, snapshot(net, x))
    assert not net.conv1.weight.requires_grad
    np.testing.assert_allclose(frozen, free, rtol=1e-12)


def test_weight_gradient_matches_finite_differences_builtin_convs(model):
    # The built-in model's first layers (its SameConv2d convs, depthwise and strided), in
    # float64 with a small classifier on top, on a small input.
    from collections import OrderedDict

    src = model.module
    parts = OrderedDict(
        stem=src.stem,
        stem_bn=src.stem_bn,
        stem_act=src.stem_act,
        b0=src.blocks[0],
        b1=src.blocks[1],
    )
    net = torch.nn.Sequential(OrderedDict((k, copy.deepcopy(v)) for k, v in parts.items()))
    torch.manual_seed(5)
    net.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", torch.nn.Flatten())
    net.add_module("fc", torch.nn.Linear(24, 10))
    net = net.double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for layer, target in (
        ("stem", 3),
        ("b0.depthwise_conv", 7),
        ("b1.depthwise_conv", 1),
        ("b1.expand_conv", 5),
    ):
        g = weight_gradients(net, [x], layer, target)[0]
        probe = copy.deepcopy(net)
        weight = dict(probe.named_modules())[layer].weight
        indices = _sample(weight.shape, 8, seed=len(layer))
        numeric = _central_differences(probe, x, target, weight, indices)
        analytic = np.array([g.gradient[i] for i in indices])
        assert np.abs(analytic).max() > 1e-6, layer
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-10, err_msg=layer)


def test_mosaic_of_builtin_layer_maps_tiles_to_activations(model):
    from cnnscope.engine import Engine

    before = snapshot(model.module)
    m = mosaic(model, "chelsea", "stem_act", normalize="channel", cmap="gray")
    assert_unchanged(before, snapshot(model.module))
    from cnnscope.images import resolve_image

    x = model.preprocess(resolve_image("chelsea")[1])
    acts = Engine.for_module(model.module).forward(x).activation("stem_act")[0].numpy()
    assert len(m.tiles) == acts.shape[0] == 32
    for t in m.tiles[::5]:
        a = acts[t.channel]
        span = a.max() - a.min()
        expected = colorize((a - a.min()) / span if span > 0 else np.zeros_like(a), "gray")
        if (t.h, t.w) != a.shape:
            expected = np.asarray(Image.fromarray(expected).resize((t.w, t.h), Image.NEAREST))
        np.testing.assert_array_equal(m.image[t.y : t.y + t.h, t.x : t.x + t.w], expected)
    ordered = mosaic(model, x, "blocks.4", order="pca")
    ref = order_channels(
        Engine.for_module(model.module).forward(x).activation("blocks.4")[0], "pca"
    )
    assert ordered.permutation.tolist() == ref.permutation.tolist()
    assert [t.channel for t in ordered.tiles] == ref.permutation.tolist()


def test_bad_layer_names_give_one_line_errors(model):
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(UnknownLayerError) as err:
        mosaic(model, x, "blocks.99")
    assert "\n" not in str(err.value) and "did you mean" in str(err.value)
    with pytest.raises(CnnscopeError, match="not channel maps"):
        mosaic(model, x, "logits")
    with pytest.raises(UnknownLayerError, match="did you mean stem"):
        weight_gradients(model, [x], "stm", 1)
    with pytest.raises(CnnscopeError, match="no 4-D conv weight"):
        weight_gradients(model, [x], "stem_bn", 1)


# ----------------------------------------------------------------------------- pruning


@pytest.fixture(scope="module")
def mixed():
    return load_model(MIXED, input_size=INPUT_SIZE, resize="resize")


def _write_images(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        pixels = rng.integers(0, 256, size=(INPUT_SIZE[0], INPUT_SIZE[1], 3), dtype=np.uint8)
        path = folder / f"{k}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _predict(module, model, paths):
    x = torch.cat([model.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return module(x).argmax(1).numpy()


def test_pruning_sweep_against_hand_zeroed_models(mixed, tmp_path):
    staging = _write_images(tmp_path / "staging", 8, seed=6)
    preds = _predict(mixed.module, mixed, staging)
    target = int(preds[0])
    # four images labelled with the model's own prediction, four with another class
    root = tmp_path / "labelled"
    truth = []
    for k, path in enumerate(staging):
        label = int(preds[k]) if k < 4 else (int(preds[k]) + 1) % 5
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        path.rename(root / str(label) / path.name)
        truth.append((root / str(label) / path.name, label))
    before = snapshot(mixed.module)
    sweep = pruning_sweep(mixed, root, "conv1", target, thresholds=[0.0, 0.5, 1.01], progress=False)
    assert_unchanged(before, snapshot(mixed.module))
    assert sweep.images == 8
    assert sweep.accuracy[0] == pytest.approx(4 / 8)  # nothing zeroed: the labels above
    norm = sweep.importance.normalized
    for t, pruned, acc in zip(sweep.thresholds, sweep.pruned, sweep.accuracy):
        filters = np.flatnonzero(norm < t)
        assert pruned == len(filters)
        hand = copy.deepcopy(mixed.module)
        with torch.no_grad():
            hand.conv1.weight[filters] = 0
            hand.conv1.bias[filters] = 0
        paths = [p for p, _ in sorted(truth, key=lambda pc: (pc[1], pc[0].name))]
        labels = np.array([c for _, c in sorted(truth, key=lambda pc: (pc[1], pc[0].name))])
        assert acc == pytest.approx(float((_predict(hand, mixed, paths) == labels).mean()))
    assert sweep.pruned[-1] == 6  # 1.01 zeroes every filter
    assert set(sweep.single) == {"least", "most"}


def test_top1_predictions_against_the_module_and_the_old_name(mixed, tmp_path):
    import cnnscope.views as views

    paths = _write_images(tmp_path / "imgs", 5, seed=8)
    inputs = [mixed.preprocess(Image.open(p).convert("RGB")) for p in paths]
    want = _predict(mixed.module, mixed, paths)
    assert views.top1_predictions(mixed.module, inputs, batch=2).tolist() == want.tolist()
    with pytest.warns(DeprecationWarning, match="evaluate is deprecated: use top1_predictions"):
        assert views.evaluate is views.top1_predictions


def test_filter_importance_is_the_mean_gradient_norm(mixed, tmp_path):
    paths = _write_images(tmp_path / "imgs", 3, seed=7)
    imp = filter_importance(mixed, [str(p) for p in paths], "conv1", 3, progress=False)
    net = copy.deepcopy(mixed.module)
    total = np.zeros(6)
    for p in paths:  # reference: plain autograd on a copy
        logits = net(mixed.preprocess(Image.open(p).convert("RGB")))
        (g,) = torch.autograd.grad(logits[0, 3], net.conv1.weight)
        total += g.reshape(6, -1).norm(dim=1).numpy()
    np.testing.assert_allclose(imp.values, total / 3, rtol=1e-5)
    assert imp.count == 3
    assert imp.normalized.min() == 0 and imp.normalized.max() == 1


def test_prune_filters_works_on_a_copy(mixed):
    before = snapshot(mixed.module)
    pruned = prune_filters(mixed.module, "branch_b", [0, 2])
    assert_unchanged(before, snapshot(mixed.module))
    assert pruned.branch_b.weight[[0, 2]].abs().sum() == 0
    assert torch.equal(pruned.branch_b.weight[1], mixed.module.branch_b.weight[1])
    with pytest.raises(CnnscopeError, match="filter numbers"):
        prune_filters(mixed.module, "branch_b", [9])


def test_pruning_zeroes_the_following_batchnorm(model, mixed):
    from cnnscope.views.importance import following_batchnorm

    assert following_batchnorm(model.module, "stem") == "stem_bn"
    assert following_batchnorm(model.module, "blocks.3.depthwise_conv") == "blocks.3.depthwise_bn"
    assert following_batchnorm(model.module, "blocks.3.project_conv") == "blocks.3.project_bn"
    assert following_batchnorm(mixed.module, "conv1") is None
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU6())
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].bias.uniform_(0.5, 1)  # a positive shift: a zeroed conv alone still outputs it
    net.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        through = prune_filters(net, "0", [1, 3])(x)
        conv_only = prune_filters(net, "0", [1, 3], through_bn=False)(x)
        full = net(x)
    assert through[:, [1, 3]].abs().max() == 0
    assert conv_only[:, [1, 3]].min() > 0  # the batch norm's constant
    torch.testing.assert_close(through[:, [0, 2]], full[:, [0, 2]])


# ----------------------------------------------------------------------------- CLI


def _image(tmp_path):
    return str(_write_images(tmp_path / "cli", 1, seed=8)[0])


def test_cli_activations_json_and_exports(tmp_path, capsys, mixed):
    img = _image(tmp_path)
    vox = tmp_path / "out" / "a.vox"
    code = main(
        ["activations", img, "--layer", "conv1", "--order", "kmeans", "--clusters", "2",
         "--model", MIXED, "--input-size", "10x14", "--resize", "resize",
         "--vox", str(vox), "--nrrd", str(tmp_path / "a.nrrd"), "--npy", str(tmp_path / "a.npy"),
         "--json"]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # conv1's output by hand: a plain convolution of the preprocessed image
    x = mixed.preprocess(Image.open(img).convert("RGB"))
    net = mixed.module
    with torch.no_grad():
        ref = F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1)[0]
    assert out["shape"] == [6, *INPUT_SIZE]
    for row in out["channels"]:
        c = row["channel"]
        assert row["max"] == pytest.approx(float(ref[c].max()), rel=1e-5, abs=1e-6)
        assert row["mean"] == pytest.approx(float(ref[c].mean()), rel=1e-5, abs=1e-6)
    perm = out["ordering"]["permutation"]
    assert sorted(perm) == list(range(6)) and len(out["ordering"]["separators"]) == 1
    vol = read_vox(vox)
    assert vol.shape == (6, *INPUT_SIZE)
    r = ref.numpy().astype(np.float64)[perm]
    expected = np.rint((r - r.min()) / (r.max() - r.min()) * 255).astype(np.uint8)
    assert np.abs(vol.astype(int) - expected).max() <= 1
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ref.numpy()[perm], rtol=1e-5, atol=1e-6)


def test_cli_bad_layer_exits_2_with_one_line(tmp_path, capsys):
    img = _image(tmp_path)
    base = ["--model", MIXED, "--input-size", "10x14"]
    assert main(["activations", img, "--layer", "conv9", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown layer 'conv9'" in err and "conv1" in err
    assert main(["weightgrad", img, "--layer", "conv9", "--target", "1", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown conv layer 'conv9'" in err
    assert main(["weightgrad", img, "--layer", "shared", "--target", "1", *base]) == 2
    assert "(ReLU) has no 4-D conv weight" in capsys.readouterr().err
    assert (
        main(["prune", str(tmp_path / "missing"), "--layer", "conv1", "--target", "1", *base]) == 2
    )
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_weightgrad_and_filters(tmp_path, capsys):
    imgs = [str(p) for p in _write_images(tmp_path / "wg", 3, seed=9)]
    base = ["--model", MIXED, "--input-size", "10x14", "--resize", "resize"]
    gif = tmp_path / "g.gif"
    code = main(
        ["weightgrad", *imgs, "--layer", "conv1", "--target", "2", "--out", str(gif),
         "--scale", "binary", "--vox-dir", str(tmp_path / "vox"), "--json", *base]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weight_shape"] == [6, 3, 3, 3] and len(out["images"]) == 3
    assert Image.open(gif).n_frames == 3
    vols = [read_vox(p) for p in out["files"]["vox"]]
    assert all(v.shape == (6, 3, 3) for v in vols)
    assert set(np.unique(np.concatenate([v.ravel() for v in vols]))) <= {0, 1}
    assert main(["filters", "--out", str(tmp_path / "f.png"), *base]) == 0
    assert Image.open(tmp_path / "f.png").size[0] > 50


def test_cli_prune_writes_the_sweep(tmp_path, capsys, mixed):
    for label, seed in ((1, 10), (3, 11)):
        _write_images(tmp_path / "data" / str(label), 2, seed=seed)
    plot, grid = tmp_path / "sweep.png", tmp_path / "grid.png"
    code = main(
        ["prune", str(tmp_path / "data"), "--layer", "conv1", "--target", "1",
         "--thresholds", "0,0.5,1.01", "--out", str(plot), "--grid", str(grid), "--json",
         "--model", MIXED, "--input-size", "10x14", "--resize", "resize"]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["threshold"] for r in out["rows"]] == [0.0, 0.5, 1.01]
    assert out["rows"][-1]["pruned"] == 6 and out["images"] == 4 and out["target_images"] == 2
    assert Image.open(plot).size[0] > 100 and Image.open(grid).size[0] > 100
    assert main(["prune", str(tmp_path / "data"), "--layer", "conv1", "--target", "1",
                 "--thresholds", "-0.5", "--model", MIXED]) == 2  # fmt: skip
