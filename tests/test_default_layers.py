"""Default tree chain and default CAM layer, chosen from the graph's structure (issue 15)."""

from __future__ import annotations

import pytest
import torch

from cnnscope import attribute, load_model
from cnnscope.attribution import Context
from cnnscope.engine import Engine
from cnnscope.engine.structure import cam_layer_of, default_cam_layer
from cnnscope.models.user import probe_of
from tests.structure_models import (
    DenseNetLike,
    EfficientNetLike,
    InceptionLike,
    ResNetLike,
    VGGLike,
)

# model, input size, expected chain (logits first), expected default CAM layer
CASES = {
    "densenet": (
        DenseNetLike,
        64,
        [
            "classifier",
            "features.norm5",
            "features.denseblock3",
            "features.transition2.conv",
            "features.denseblock2",
            "features.transition1.conv",
            "features.denseblock1",
            "features.relu0",
        ],
        "features.norm5",
    ),
    "inception": (
        InceptionLike,
        80,
        ["fc", "dropout", "Mixed_7c", "Mixed_6a", "Mixed_5c", "Conv2d_2a_3x3", "Conv2d_1a_3x3"],
        "Mixed_7c",
    ),
    "efficientnet": (
        EfficientNetLike,
        64,
        ["classifier", "bn2", *[f"blocks.{i}" for i in range(5, -1, -1)], "bn1"],
        "bn2",
    ),
    "resnet": (
        ResNetLike,
        64,
        ["fc", "avgpool", "layer4", "layer3", "layer2", "layer1", "relu"],
        "layer4",
    ),
    "vgg": (
        VGGLike,
        64,
        ["classifier.3", "avgpool", "features.9", "features.4", "features.1"],
        "avgpool",
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    make, size, chain, cam = CASES[request.param]
    torch.manual_seed(0)
    return make().eval(), size, chain, cam


def test_chain_has_one_level_per_stage_or_resolution(case):
    net, size, chain, _ = case
    assert load_model(net, input_size=size).default_chain == chain


def test_chain_has_no_branch_or_inner_layer(case):
    net, size, _, _ = case
    chain = load_model(net, input_size=size).default_chain
    inner = ("branch", "denselayer", ".conv1", ".bn1", "downsample", "blocks.0.0")
    assert not [name for name in chain if any(part in name for part in inner)]


def test_default_cam_layer_is_the_full_final_map(case):
    net, size, _, cam = case
    assert default_cam_layer(Engine.for_module(net), (size, size)) == cam


def test_inception_cam_layer_has_every_channel_of_the_concatenation():
    net = InceptionLike().eval()
    infos = {i.name: i for i in Engine.for_module(net).layers((80, 80))}
    layer = default_cam_layer(Engine.for_module(net), (80, 80))
    assert infos[layer].shape == (net.fc.in_features, 8, 8)  # not one branch's 4 channels


def test_gradcam_uses_the_structural_layer():
    torch.manual_seed(0)
    net, x = InceptionLike().eval(), torch.randn(1, 3, 80, 80)
    default = attribute(net, x, "gradcam", target=1).tensor
    whole = attribute(net, x, "gradcam", target=1, layer="Mixed_7c").tensor
    branch = attribute(net, x, "gradcam", target=1, layer="Mixed_7c.branch_pool.bn").tensor
    torch.testing.assert_close(default, whole)
    assert not torch.allclose(default, branch)


def test_cam_layer_below_a_unit_target_is_the_cut_before_it():
    net = InceptionLike().eval()
    calls = [(i.name, i.shape) for i in Engine.for_module(net).layers((80, 80))]
    assert cam_layer_of(net, calls, before="Mixed_6a") == "Mixed_5c"
    assert cam_layer_of(net, calls, before="Mixed_5b.branch5x5_2") == "Conv2d_2a_3x3"


def test_cam_layer_and_batch_size_run_no_forward_of_their_own():
    net = ResNetLike().eval()
    x = torch.randn(2, 3, 64, 64)
    Engine.for_module(net).layers((64, 64))  # the shared trace, as any first call makes
    calls = [0]
    handle = net.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        ctx = Context(net, x, 0)
        assert ctx.default_cam_layer() == "layer4" and ctx.batch_size >= 1
    finally:
        handle.remove()
    assert calls[0] == 0


def test_probe_names_calls_as_the_engine_does():
    net = ResNetLike().eval()  # each block calls its relu twice: relu#1, relu#2
    probe = probe_of(net, "resnet", (64, 64))
    names = [i.name for i in Engine.for_module(net).layers((64, 64))][1:-1]
    assert [name for name, _ in probe.calls] == names
    assert "layer1.0.relu#2" in names


def test_builtin_model_keeps_its_chain_and_cam_layer():
    model = load_model()
    assert model.default_chain[:3] == ["classifier", "head_act", "blocks.15.expand_act"]
    assert default_cam_layer(Engine.for_module(model.module), (224, 224)) == "head_act"


def test_a_wrapped_backbone_is_opened():
    net = torch.nn.Sequential(torch.nn.Identity(), ResNetLike()).eval()  # e.g. a normalizer
    chain = load_model(net, input_size=64).default_chain
    stages = ["1.layer4", "1.layer3", "1.layer2", "1.layer1"]
    assert chain == ["1.fc", "1.avgpool", *stages, "1.relu", "0"]
