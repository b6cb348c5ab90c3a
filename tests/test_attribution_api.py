"""The attribution API on the mixed network: every method, targets, batches, errors,
renderings, no side effects, and the command line (exit status 2, one line, on errors).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnscope.attribution import METHODS, attribute, method_names
from cnnscope.attribution.figures import STYLES
from cnnscope.cli import main
from cnnscope.errors import CnnscopeError, UnitSpecError, UnknownLayerError

from .mixed_net import INPUT_SIZE, MixedNet
from .side_effects import assert_unchanged, snapshot

FAST = {
    "integrated_gradients": {"steps": 4},
    "guided_ig": {"steps": 4},
    "smoothgrad": {"samples": 3},
    "smoothgrad_sq": {"samples": 3},
    "vargrad": {"samples": 3},
}


@pytest.fixture(scope="module")
def net():
    return MixedNet().eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(11)
    return torch.randn(3, 3, *INPUT_SIZE)


@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_on_the_mixed_network(net, x, name):
    attr = attribute(net, x, name, **FAST.get(name, {}))
    spec = METHODS[name]
    shape = (3, 3, *INPUT_SIZE) if spec.output == "pixel" else (3, *INPUT_SIZE)
    assert tuple(attr.tensor.shape) == shape
    assert torch.isfinite(attr.tensor).all()
    assert float(attr.tensor.abs().sum()) > 0, "an all-zero map"
    with torch.no_grad():
        top = net(x).argmax(1)
    assert [t.channel for t in attr.targets] == top.tolist()
    for style in STYLES:
        pic = attr[0].render(style)
        assert pic.shape == (*INPUT_SIZE, 3) and pic.dtype == np.uint8
    # the batch is the same as one image at a time
    one = attribute(net, x[1:2], name, **FAST.get(name, {}))
    torch.testing.assert_close(one.tensor[0], attr.tensor[1], rtol=1e-4, atol=1e-5)


def test_chunking_does_not_change_results(net, x):
    for name, opts in [("ig", {"steps": 7}), ("smoothgrad", {"samples": 5}), ("score_cam", {})]:
        a = attribute(net, x, name, batch_size=2, **opts).tensor
        b = attribute(net, x, name, batch_size=64, **opts).tensor
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _autograd_input_grad(net, x, objective):
    xx = x.clone().requires_grad_(True)
    captured = {}
    handle = net.conv2.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        out = net(xx)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(objective(out, captured["a"]), xx)
    return g


def test_targets(net, x):
    # class index, per-image list, unit (channel sum) and neuron, against autograd
    g = _autograd_input_grad(net, x, lambda out, a: out[:, 3].sum())
    torch.testing.assert_close(
        attribute(net, x, "gradient", target=3).tensor, g, rtol=1e-4, atol=1e-6
    )
    per = attribute(net, x, "gradient", target=[0, 1, 2])
    assert [t.channel for t in per.targets] == [0, 1, 2]
    g1 = _autograd_input_grad(net, x[1:2], lambda out, a: out[:, 1].sum())
    torch.testing.assert_close(per.tensor[1:2], g1, rtol=1e-4, atol=1e-6)
    unit = attribute(net, x, "gradient", target="conv2:3")
    torch.testing.assert_close(
        unit.tensor, _autograd_input_grad(net, x, lambda o, a: a[:, 3].sum()), rtol=1e-4, atol=1e-6
    )
    assert str(unit.target) == "conv2:3" and unit.target.kind == "unit"
    neuron = attribute(net, x, "gradient", target="conv2:3@2,4")
    torch.testing.assert_close(
        neuron.tensor,
        _autograd_input_grad(net, x, lambda o, a: a[:, 3, 2, 4].sum()),
        rtol=1e-4,
        atol=1e-6,
    )
    # a unit's score is its value; CAMs below a unit work, above it they are refused
    cam = attribute(net, x, "grad_cam", target="conv2:3", layer="depthwise")
    assert cam.layer == "depthwise"
    with pytest.raises(CnnscopeError, match="not below"):
        attribute(net, x, "grad_cam", target="conv2:3", layer="act6")
    # the reused module: a call of it is a layer of its own
    assert attribute(net, x, "gradient", target="shared#2:1").target.layer == "shared#2"


def test_class_names_on_the_builtin_model():
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model

    model = load_model()
    img = load_gallery_image("chelsea")
    attr = attribute(model, [img, img], "grad_cam", target=["tabby", 285])
    assert [t.channel for t in attr.targets] == [281, 285] and attr.target.label.startswith("tabby")
    assert attr.tensor.shape == (2, 224, 224) and len(attr.pictures) == 2
    assert attr.layer == "head_act"
    assert not torch.allclose(attr.tensor[0], attr.tensor[1])
    one = attribute(model, img, "grad_cam")
    assert one.target.channel == 285 and one.array.shape == (224, 224)
    torch.testing.assert_close(one.tensor, attr.tensor[1], rtol=1e-4, atol=1e-6)
    assert one._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(one._repr_png_())).size == (224, 224)
    with pytest.raises(UnitSpecError, match="did you mean"):
        attribute(model, img, "gradient", target="tabbby cat")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "gradcamm"}, CnnscopeError, "did you mean grad"),
        ({"method": "ig", "stepz": 3}, CnnscopeError, "no option 'stepz'"),
        ({"method": "gradient", "layer": "conv2"}, CnnscopeError, "takes no layer"),
        ({"method": "grad_cam", "layer": "conv22"}, UnknownLayerError, "did you mean conv2"),
        ({"method": "grad_cam", "layer": "fc"}, CnnscopeError, "no spatial map"),
        ({"method": "gradient", "target": 9}, UnitSpecError, "out of range"),
        ({"method": "gradient", "target": "conv2:99"}, UnitSpecError, "out of range"),
        ({"method": "gradient", "target": "conv2:1@9,9"}, UnitSpecError, "outside"),
        ({"method": "gradient", "target": "conv2"}, UnitSpecError, "class name"),
        ({"method": "gradient", "target": "nolayer:1"}, UnknownLayerError, "unknown layer"),
        ({"method": "gradient", "target": "conv2:x"}, UnitSpecError, "bad unit"),
        ({"method": "gradient", "target": [1, 2]}, UnitSpecError, "one per image"),
        ({"method": "ig", "steps": 0}, CnnscopeError, "steps must be > 0"),
        ({"method": "ig", "baseline": "grey"}, CnnscopeError, "unknown baseline"),
        ({"method": "ig", "integration": "simpson"}, CnnscopeError, "unknown integration"),
        ({"method": "smoothgrad", "base": "grad_cam"}, CnnscopeError, "noise tunnel wraps"),
        ({"method": "lrp", "composite": "fancy"}, CnnscopeError, "unknown LRP composite"),
        ({"method": "lrp", "rules": {"conv2": "magic"}}, CnnscopeError, "unknown LRP rule"),
        ({"method": "lrp", "rules": {"conv2": "box"}}, CnnscopeError, "only for the first layer"),
        (
            {"method": "layer_cam", "layer": ["conv2", "act6"], "fusion": "sum"},
            CnnscopeError,
            "unknown fusion",
        ),
        ({"method": "score_cam", "score": "prob"}, CnnscopeError, "unknown score"),
        ({"method": "gradient", "batch_size": 0}, CnnscopeError, "batch_size"),
    ],
)
def test_bad_input_gives_one_line_errors(net, x, kwargs, error, match):
    kwargs = dict(kwargs)
    method = kwargs.pop("method")
    with pytest.raises(error, match=match) as info:
        attribute(net, x, method, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_images_and_models(net):
    with pytest.raises(CnnscopeError, match="preprocessing"):
        attribute(net, Image.new("RGB", (8, 8)), "gradient")
    with pytest.raises(CnnscopeError, match="3 x H x W"):
        attribute(net, torch.zeros(3, 4), "gradient")
    with pytest.raises(CnnscopeError, match="cannot explain"):
        attribute("resnet", torch.zeros(1, 3, 4, 4), "gradient")


def test_views_take_images_as_attribute_does():
    from cnnscope.attribution.inputs import as_pil
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model
    from cnnscope.views._common import to_input

    model = load_model()
    img = load_gallery_image("chelsea")
    array = np.asarray(img, dtype=np.float32) / 255.0  # float in [0, 1], as attribute takes
    assert np.array_equal(np.asarray(as_pil(array)), np.asarray(img.convert("RGB")))
    torch.testing.assert_close(to_input(model, array), model.preprocess(img), rtol=0, atol=0)
    torch.testing.assert_close(to_input(model, "chelsea"), model.preprocess(img), rtol=0, atol=0)
    with pytest.raises(CnnscopeError, match="H x W x 3"):
        to_input(model, np.zeros((2, 2, 5)))


def test_rendering_and_saving(net, x, tmp_path):
    attr = attribute(net, x[:1], "guided_backprop")
    one = attr[0]
    with pytest.raises(CnnscopeError, match="unknown style"):
        one.render("rainbow")
    with pytest.raises(CnnscopeError, match="colormap"):
        one.render("heatmap", cmap="nope")
    png = one.save(tmp_path / "a.png", "overlay", alpha=0.3)
    assert Image.open(png).size == (INPUT_SIZE[1], INPUT_SIZE[0])
    npy = one.save(tmp_path / "a.npy")
    raw = np.load(npy)
    assert raw.dtype == np.float32 and raw.shape == (3, *INPUT_SIZE)
    np.testing.assert_allclose(raw, one.array)
    assert attr.render().shape == (*INPUT_SIZE, 3)
    # the overlay shows the picture the model saw where the heat is low
    cam = attribute(net, x[:1], "grad_cam")[0]
    over = cam.render("overlay", alpha=0.0)
    assert np.array_equal(over, cam.pictures[0])


def test_no_side_effects(net, x):
    net.train()  # a caller's model in training mode stays so
    try:
        x_in = x.clone()
        before = snapshot(net, x_in)
        for name in (
            "guided_backprop",
            "ig",
            "smoothgrad",
            "grad_cam",
            "score_cam",
            "ablation_cam",
            "lrp",
        ):
            attribute(net, x_in, name, **FAST.get(name, {}))
        from cnnscope.attribution import deletion_insertion, randomization_check

        attr = attribute(net, x_in, "gradient")
        deletion_insertion(net, x_in, attr, steps=4)
        randomization_check(net, x_in[:1], "gradient", stages=2)
        assert_unchanged(before, snapshot(net, x_in))
        assert net.training
    finally:
        net.eval()


# ---------------------------------------------------------------------------------------
# Command line

MIXED = ["--model", "tests.mixed_net:MixedNet", "--input-size", "10x14"]


def _png(tmp_path, name="img.png"):
    path = tmp_path / name
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_cli_attribute_writes_pngs_and_npy(tmp_path, capsys):
    img = _png(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "attribute",
            img,
            "--method",
            "grad_cam",
            "--out",
            str(out),
            "--save-npy",
            str(tmp_path / "m.npy"),
            "--style",
            "heatmap,overlay",
            *MIXED,
        ]
    )
    assert code == 0
    assert (out / "img_grad_cam_heatmap.png").is_file() and (
        out / "img_grad_cam_overlay.png"
    ).is_file()
    assert np.load(tmp_path / "m.npy").shape == (10, 14)
    code = main(
        ["attribute", img, img, "-m", "ig", "--opt", "steps=3", "--out", str(out), "--json", *MIXED]
    )
    assert code == 0 and (out / "img_integrated_gradients.png").is_file()
    assert "completeness" in capsys.readouterr().out
    assert main(["attribute", "--list"]) == 0
    assert "score_cam" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["attribute", "{img}", "--method", "nope"], "unknown attribution method"),
        (["attribute", "{img}", "--target", "conv2:99"], "out of range"),
        (["attribute", "{img}", "-m", "grad_cam", "--layer", "conv9"], "unknown layer"),
        (["attribute", "{img}", "--style", "rainbow"], "unknown style"),
        (["attribute", "{img}", "{img}", "--save-npy", "x.npy"], "exactly one"),
        (["attribute", "{img}", "--opt", "steps"], "KEY=VALUE"),
        (["attribute", "{img}", "-m", "ig", "--opt", "stepz=3"], "no method here has an option"),
        (["compare", "{img}", "--methods", "gradient,nope"], "unknown attribution method"),
        (["evaluate", "{img}", "--methods", "gradient", "--steps", "0"], "--steps"),
        (["attribute", "missing.png"], "not found"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys, argv, match):
    img = _png(tmp_path)
    code = main(
        [a.replace("{img}", img) for a in argv]
        + ["--out", str(tmp_path)] * (argv[0] == "attribute")
        + MIXED
    )
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_compare_and_evaluate(tmp_path, capsys):
    img = _png(tmp_path)
    fig = tmp_path / "fig.png"
    assert (
        main(["compare", img, "--methods", "gradient,grad_cam,lrp", "--out", str(fig), *MIXED]) == 0
    )
    assert Image.open(fig).size[0] > Image.open(fig).size[1] > 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                img,
                "--methods",
                "gradient,ig,lrp",
                "--opt",
                "steps=4",
                "--steps",
                "4",
                *MIXED,
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].split()[0] == "gradient" and lines[3].split()[0] == "integrated_gradients"


def test_cli_quirks_and_its_old_spelling(tmp_path, capsys, caplog):
    img = _png(tmp_path)
    npy = {
        flag: tmp_path / f"{flag.strip('-') or 'plain'}.npy"
        for flag in ("", "--quirks", "--legacy")
    }
    for flag, path in npy.items():
        argv = ["attribute", img, "-m", "grad_cam", "--save-npy", str(path), "--out", str(tmp_path)]
        argv += MIXED
        assert main(argv + ([flag] if flag else [])) == 0
    plain, quirks, legacy = (np.load(p) for p in npy.values())
    assert np.array_equal(quirks, legacy) and not np.array_equal(plain, quirks)
    assert "--legacy is deprecated: use --quirks" in caplog.text
    assert "--legacy" not in capsys.readouterr().out


def test_lrp_rule_old_names_warn():
    import cnnscope.attribution as attribution
    import cnnscope.attribution.lrp as lrp

    with pytest.warns(DeprecationWarning, match="Rule is deprecated: use LrpRule"):
        assert attribution.Rule is attribution.LrpRule
    for old, new in lrp._RENAMED.items():
        with pytest.warns(DeprecationWarning, match=f"lrp.{old} is deprecated: use {new}"):
            assert getattr(lrp, old) is getattr(lrp, new)


def test_cli_builtin_model(tmp_path, capsys):
    code = main(["attribute", "chelsea", "-m", "grad_cam", "--out", str(tmp_path)])
    assert code == 0
    assert "285 (Egyptian cat)" in capsys.readouterr().out
    pic = np.asarray(Image.open(tmp_path / "chelsea_grad_cam.png"))
    assert pic.shape == (224, 224, 3) and pic.std() > 10


def test_the_registry_says_which_methods_run_many_passes():
    """The explorer's slow lane reads ``Method.slow``: every multi-pass method, no other."""
    from cnnscope.attribution import METHODS

    slow = {name for name, m in METHODS.items() if m.slow}
    assert slow == {
        "integrated_gradients",
        "guided_ig",
        "smoothgrad",
        "smoothgrad_sq",
        "vargrad",
        "score_cam",
        "ablation_cam",
    }
