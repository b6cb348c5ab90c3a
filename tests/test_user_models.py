"""Handing over your own model: a bare module at every entry point, timm / torchvision
metadata, factory arguments, the current folder, TorchScript and the cached probe."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnscope.cli import main
from cnnscope.errors import CnnscopeError, ModelSpecError
from cnnscope.images import load_gallery_image
from cnnscope.index import build_index, open_index
from cnnscope.models import LoadedModel, as_loaded, load_model
from cnnscope.synthesis import visualize_units
from cnnscope.tree import Explorer, parse_path

from .mixed_net import INPUT_SIZE, MixedNet
from .test_index import write_images
from .toy_models import Toy


def make_net(width: int = 4, classes: int = 3, bias: bool = True) -> nn.Module:
    """A factory with arguments, as ``tests.test_user_models:make_net(width=6)``."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


CALLED: list[str] = []


def record_call() -> nn.Module:
    CALLED.append("called")
    return make_net()


class TimmLike(Toy):
    """A model that carries timm's metadata (``pretrained_cfg``), as timm models do."""

    def __init__(self) -> None:
        super().__init__()
        self.pretrained_cfg = {
            "architecture": "toynet",
            "input_size": (3, 20, 24),
            "mean": (0.5, 0.4, 0.3),
            "std": (0.25, 0.25, 0.5),
            "crop_pct": 0.9,
            "crop_mode": "center",
            "num_classes": 3,
            "label_names": ["n01", "n02", "n03"],
            "label_descriptions": {"n01": "cat", "n02": "dog"},
        }


class _Transforms:
    """What a torchvision weights enum's ``transforms()`` returns (ImageClassification)."""

    crop_size, resize_size = [299], [342]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class WeightsLike:
    """A torchvision weights enum member: ``meta["categories"]`` and ``transforms()``."""

    meta = {"categories": ["tench", "goldfish", "shark"]}

    def transforms(self):
        return _Transforms()


def one_line(error: BaseException) -> str:
    text = str(error)
    assert isinstance(error, CnnscopeError) and "\n" not in text, text
    return text


def forward_counter(net: nn.Module) -> list[int]:
    calls = [0]
    net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------ a bare module everywhere


@pytest.fixture(scope="module")
def net():
    return MixedNet().eval()


def test_explorer_takes_a_bare_module(net):
    ex = Explorer(net)
    assert isinstance(ex.model, LoadedModel) and ex.model.logits_layer == "fc"
    x = ex.input(load_gallery_image("chelsea"))
    assert ex.children(x, parse_path("logits:1"), k=2)


def test_visualize_units_takes_a_bare_module(net):
    images = visualize_units(net, ["conv1:0"], steps=2, size=16)
    assert len(images) == 1 and images[0].shape == (16, 16, 3)


def test_build_index_takes_a_bare_module(tmp_path):
    net = MixedNet().eval()
    net.pretrained_cfg = {"input_size": (3, *INPUT_SIZE), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    write_images(tmp_path / "images", range(3))
    out = build_index(net, tmp_path / "images", ["conv1"], top_k=2, out=tmp_path / "ix", workers=0)
    index = open_index(out)
    assert index.manifest["preprocessing"]["input_size"] == list(INPUT_SIZE)
    assert len(index.examples("conv1:0")) == 2


def test_load_model_wraps_a_module_without_touching_it():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)
    )
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = load_model(net, input_size=32, labels=["cat", "dog"])
    assert model.module is net and model.label(1) == "dog" and model.logits_layer == "3"
    assert all(m.training for m in net.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    ("thing", "message"),
    [(42, "expected a LoadedModel or a torch.nn.Module"), ("lite0", "cnnscope.load_model")],
)
def test_anything_else_is_one_line(thing, message):
    for call in (as_loaded, Explorer):
        with pytest.raises(ModelSpecError, match=message) as info:
            call(thing)
        one_line(info.value)


def test_labels_must_fit(tmp_path):
    with pytest.raises(ModelSpecError, match="2 labels given, but the model has 3 classes"):
        load_model(Toy(), input_size=16, labels=["a", "b"])
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n\n")
    assert load_model(Toy(), input_size=16, labels=tmp_path / "names.txt").labels == [
        "red",
        "green",
        "blue",
    ]


def test_cli_labels_file(tmp_path, capsys):
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    spec = "tests.test_user_models:make_net"
    args = ["--model", spec, "--input-size", "8", "--labels", str(tmp_path / "names.txt")]
    assert main(["predict", "chelsea", "--top", "3", "--json", *args]) == 0
    out = capsys.readouterr().out
    assert {"red", "green", "blue"} <= {p["label"] for p in json.loads(out)[0]["predictions"]}


# ------------------------------------------------------------ timm and torchvision metadata


def test_timm_metadata_gives_preprocessing_and_names():
    model = load_model(TimmLike())
    pre = model.preprocess_config
    assert model.name == "toynet" and pre.input_size == (20, 24)
    assert (pre.mean, pre.std, pre.scale, pre.crop_fraction) == (
        (0.5, 0.4, 0.3),
        (0.25, 0.25, 0.5),
        1.0,
        0.9,
    )
    assert model.labels == ["cat", "dog", "n03"]
    assert load_model(TimmLike(), input_size=32).preprocess_config.input_size == (32, 32)


def test_torchvision_weights_give_preprocessing_and_names():
    model = load_model(Toy(), metadata=WeightsLike())
    pre = model.preprocess_config
    assert pre.input_size == (299, 299) and pre.crop_fraction == pytest.approx(299 / 342)
    assert pre.std == (0.229, 0.224, 0.225) and model.labels == ["tench", "goldfish", "shark"]


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Look-alike ``timm`` and ``torchvision`` packages (neither installs here)."""
    root = tmp_path / "site"
    (root / "timm").mkdir(parents=True)
    (root / "timm" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from . import data
            from tests.test_user_models import TimmLike

            def create_model(name, pretrained=False, **kwargs):
                if name != "toynet":
                    raise RuntimeError(f"Unknown model ({name})")
                net = TimmLike()
                net.kwargs = kwargs
                return net
            """
        )
    )
    (root / "timm" / "data.py").write_text("def infer_imagenet_subset(model):\n    return None\n")
    (root / "torchvision").mkdir()
    (root / "torchvision" / "__init__.py").write_text("from . import models\n")
    (root / "torchvision" / "models.py").write_text(
        textwrap.dedent(
            """
            from tests.test_user_models import Toy, WeightsLike

            class Inception_V3_Weights:
                DEFAULT = WeightsLike()

            def list_models(module=None):
                return ["inception_v3"]

            def get_model(name, weights=None):
                return Toy()

            def get_model_weights(name):
                return Inception_V3_Weights
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("timm", "torchvision")]:
        del sys.modules[name]


def test_torchvision_name_needs_no_input_size_by_hand(fake_packages, tmp_path):
    torch.save(Toy().state_dict(), tmp_path / "w.pth")
    model = load_model("inception_v3", tmp_path / "w.pth")
    assert model.preprocess_config.input_size == (299, 299) and model.labels[0] == "tench"


def test_timm_spec_with_weights_and_arguments(fake_packages, tmp_path):
    torch.manual_seed(0)
    state = TimmLike().state_dict()
    torch.save(state, tmp_path / "w.pth")
    model = load_model("timm:toynet(drop_rate=0.1)", tmp_path / "w.pth")
    assert model.module.kwargs == {"drop_rate": 0.1}
    assert torch.equal(model.module.fc.weight, state["fc.weight"])
    assert model.preprocess_config.input_size == (20, 24) and model.label(0) == "cat"
    for spec, weights, message in [
        ("timm:toynet", None, "needs --weights FILE"),
        ("timm:toynet(pretrained=True)", tmp_path / "w.pth", "never downloads"),
        ("timm:nonet", tmp_path / "w.pth", "timm cannot create 'nonet'"),
    ]:
        with pytest.raises(ModelSpecError, match=message) as info:
            load_model(spec, weights)
        one_line(info.value)


def test_timm_spec_without_timm(capsys):
    if "timm" in sys.modules or __import__("importlib").util.find_spec("timm"):
        pytest.skip("timm is installed")
    assert main(["layers", "--model", "timm:resnet50", "--weights", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs timm, which is not installed" in err


# ------------------------------------------------------------ factory arguments


def test_factory_arguments_are_literals():
    model = load_model("tests.test_user_models:make_net(6, classes=5, bias=False)", input_size=8)
    assert model.module[0].out_channels == 6 and model.module[0].bias is None
    assert len(model.labels) == 5


@pytest.mark.parametrize(
    "spec",
    [
        "tests.test_user_models:record_call(__import__('os').getcwd())",
        "tests.test_user_models:record_call(width=CALLED)",
        "tests.test_user_models:record_call(**{'a': 1})",
        "tests.test_user_models:record_call(1)(2)",
        "tests.test_user_models:record_call(",
    ],
)
def test_factory_arguments_are_never_evaluated(spec):
    CALLED.clear()
    with pytest.raises(ModelSpecError, match="literal values only") as info:
        load_model(spec)
    one_line(info.value)
    assert CALLED == []


def test_bad_factory_arguments_are_one_line():
    with pytest.raises(ModelSpecError, match="TypeError.*depth") as info:
        load_model("tests.test_user_models:make_net(depth=2)")
    one_line(info.value)


# ------------------------------------------------------------ the current folder


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    """The current folder is ``tmp_path``, which is not on the Python path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in ("mynet_in_cwd", "needs_a_dep"):
        sys.modules.pop(name, None)


def test_factory_in_the_current_folder(in_folder, capsys):
    (in_folder / "mynet_in_cwd.py").write_text(
        "from tests.test_user_models import make_net as make\n"
    )
    path_before = list(sys.path)
    model = load_model("mynet_in_cwd:make(width=5)", input_size=8)
    assert model.module[0].out_channels == 5 and sys.path == path_before
    sys.modules.pop("mynet_in_cwd")
    assert main(["layers", "--model", "mynet_in_cwd:make", "--input-size", "8"]) == 0
    assert "logits" in capsys.readouterr().out


def test_missing_module_says_where_it_looked(in_folder, capsys):
    assert main(["layers", "--model", "mynet_nowhere:make"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no module named 'mynet_nowhere'" in err and "the current folder" in err
    (in_folder / "needs_a_dep.py").write_text("import a_dependency_not_installed\n")
    with pytest.raises(
        ModelSpecError, match="No module named 'a_dependency_not_installed'"
    ) as info:
        load_model("needs_a_dep:make")
    assert "looked in" not in one_line(info.value)


# ------------------------------------------------------------ TorchScript and torch.export


@pytest.fixture
def scripted(tmp_path) -> Path:
    path = tmp_path / "toy_script.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Toy().eval()), str(path))
    return path


def test_torchscript_layer_features_are_one_line(scripted, tmp_path, capsys):
    model = load_model(str(scripted), input_size=32)
    for call in (
        lambda: Explorer(model),
        lambda: visualize_units(model, ["conv:0"], steps=1),
        lambda: build_index(model, None, ["conv"]),
    ):
        with pytest.raises(ModelSpecError, match="TorchScript") as info:
            call()
        assert "torch.export.unflatten" in one_line(info.value)
    args = ["--model", str(scripted), "--input-size", "32", "--out", str(tmp_path / "t.html")]
    code = main(["tree", "chelsea", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "toy_script is a TorchScript model" in err.splitlines()[-1]


def test_torchscript_pixel_attributions_still_work(scripted):
    from cnnscope import attribute

    model = load_model(str(scripted), input_size=32)
    x = torch.randn(3, 32, 32)
    assert attribute(model, x, "guided_backprop", target=0).tensor.shape == (3, 32, 32)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # inside torch.export.unflatten
def test_torch_export_unflatten_is_recorded_and_flat_program_is_refused():
    toy = Toy().eval()
    program = torch.export.export(toy, (torch.randn(1, 3, 16, 16),))
    ex = Explorer(as_loaded(torch.export.unflatten(program), input_size=16))
    assert ex.model.logits_layer == "fc" and "conv" in ex.engine.layer_names((16, 16))
    for thing, message in [(program, "ExportedProgram"), (program.module(), "unflatten")]:
        with pytest.raises(ModelSpecError, match=message) as info:
            Explorer(thing)
        one_line(info.value)


# ------------------------------------------------------------ the probe runs once


def test_probe_runs_once_per_model():
    net = make_net()
    calls = forward_counter(net)
    first, again = load_model(net, input_size=8), as_loaded(net, input_size=8)
    assert calls[0] == 1 and first.default_chain == again.default_chain
    Explorer(as_loaded(net, input_size=8))
    Explorer(as_loaded(net, input_size=8))
    assert calls[0] == 2  # plus the engine's own layer trace, once
    net[4] = nn.Linear(4, 7)  # another head: probed again
    assert len(as_loaded(net, input_size=8).labels) == 7 and calls[0] == 3


def test_probe_runs_on_the_module_device_and_dtype():
    net = make_net().double()
    model = as_loaded(net, input_size=8)
    assert model.logits_layer == "4" and np.isclose(model.preprocess_config.std[0], 0.229)
