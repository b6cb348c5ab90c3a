"""Small look-alikes of real architectures for the LRP tests (random weights, no downloads).

Each reproduces the structure that matters to LRP: timm's fused ``BatchNormAct2d``, a
DenseNet block (BatchNorm on a concatenation), Inception branches (conv -> BN -> in-place
functional ReLU), squeeze-excitation gates (EfficientNet / RegNetY with SiLU, MobileNetV3
with hardswish), and a ConvNeXt block (LayerNorm and Linear over channels-last tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


class BatchNormAct2d(nn.BatchNorm2d):
    """Look-alike of timm's fused ``BatchNormAct2d``: BN, dropout and activation in one module."""

    def __init__(self, num_features: int, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return self.act(self.drop(x))


def _head(c: int, classes: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class VGGLike(nn.Sequential):
    """conv-ReLU-conv-ReLU-maxpool-conv-ReLU, average pool, two dense layers."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )


class _Basic(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class ResNetLike(nn.Module):
    """A ResNet stem and two basic blocks with identity shortcuts."""

    def __init__(self, fused: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8) if fused else nn.BatchNorm2d(8)
        self.relu = nn.Identity() if fused else nn.ReLU()
        self.layer1 = nn.Sequential(_Basic(8), _Basic(8))
        self.fc = _head(8)

    def forward(self, x):
        return self.fc(self.layer1(self.relu(self.bn1(self.conv1(x)))))


class FusedNet(nn.Module):
    """timm style: conv -> fused BatchNormAct2d (ReLU, then SiLU), twice; ``fused=False``: its twin."""

    def __init__(self, fused: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        if fused:
            self.bn1, self.bn2 = BatchNormAct2d(8), BatchNormAct2d(8, nn.SiLU)
        else:
            self.bn1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
            self.bn2 = nn.Sequential(nn.BatchNorm2d(8), nn.SiLU())
        self.head = _head(8)

    def forward(self, x):
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))))


def unfused_twin(fused: FusedNet) -> FusedNet:
    """The plain-BN twin of ``fused`` with the same weights: the same function."""
    twin = FusedNet(fused=False)
    state = {}
    for k, v in fused.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("bn1", "bn2"):
            k = ".".join([parts[0], "0", *parts[1:]])
        state[k] = v
    twin.load_state_dict(state)
    return twin.eval()


def _norm_relu(c: int, fused: bool) -> tuple[nn.Module, nn.Module]:
    if fused:  # timm: one BatchNormAct2d
        return BatchNormAct2d(c), nn.Identity()
    return nn.BatchNorm2d(c), nn.ReLU(inplace=True)  # torchvision


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, fused: bool):
        super().__init__()
        self.norm1, self.relu1 = _norm_relu(c_in, fused)
        self.conv1 = nn.Conv2d(c_in, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = _norm_relu(2 * growth, fused)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)  # BN on a concatenation: nothing to fold it into
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseLike(nn.Module):
    """DenseNet: pre-activation layers whose BatchNorm reads the concat of earlier features
    (``fused``: timm's form, with BatchNormAct2d)."""

    def __init__(self, growth: int = 4, fused: bool = True):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm0, self.relu0 = _norm_relu(8, fused)
        self.layers = nn.ModuleList([_DenseLayer(8 + i * growth, growth, fused) for i in range(3)])
        c = 8 + 3 * growth
        self.transition = nn.Sequential(*_norm_relu(c, fused), nn.Conv2d(c, 8, 1, bias=False))
        self.pool = nn.AvgPool2d(2)
        self.norm5 = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        features = [self.relu0(self.norm0(self.conv0(x)))]
        for layer in self.layers:
            features.append(layer(features))
        y = F.relu(self.norm5(self.pool(self.transition(torch.cat(features, 1)))), inplace=True)
        return self.classifier(F.adaptive_avg_pool2d(y, 1).flatten(1))


class BasicConv2d(nn.Module):
    """Inception unit: conv -> BN -> ReLU; timm's fused BatchNormAct2d, or torchvision's
    BN and functional in-place ReLU."""

    def __init__(self, c_in: int, c_out: int, fused: bool = True, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = BatchNormAct2d(c_out) if fused else nn.BatchNorm2d(c_out, eps=0.001)
        self.fused = fused

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if self.fused else F.relu(y, inplace=True)


class InceptionLike(nn.Module):
    """A stem and one Inception block of four branches, each conv -> BN -> ReLU."""

    def __init__(self, fused: bool = True):
        super().__init__()
        unit = lambda c_in, c_out, k: BasicConv2d(c_in, c_out, fused, kernel_size=k, padding=k // 2)  # noqa: E731
        self.stem = unit(3, 8, 3)
        self.b1 = unit(8, 4, 1)
        self.b3 = nn.Sequential(unit(8, 4, 1), unit(4, 4, 3))
        self.b5 = nn.Sequential(unit(8, 4, 1), unit(4, 4, 5))
        self.bp = unit(8, 4, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        pool = F.avg_pool2d(x, 3, stride=1, padding=1)
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pool)], 1)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class SqueezeExcite(nn.Module):
    """``x * gate(fc2(act(fc1(mean(x)))))``: the channel gate of EfficientNet / RegNetY / MBv3."""

    def __init__(self, c: int, act=nn.SiLU, gate=nn.Sigmoid, frozen: bool = False):
        super().__init__()
        self.fc1, self.act = nn.Conv2d(c, max(c // 4, 1), 1), act()
        self.fc2, self.gate = nn.Conv2d(max(c // 4, 1), c, 1), gate()
        self.frozen = frozen  # the gate computed from a detached input: a constant for autograd

    def forward(self, x):
        s = (x.detach() if self.frozen else x).mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MBConvLike(nn.Module):
    """EfficientNet (SiLU, sigmoid gate) or, with ``hard=True``, MobileNetV3 (hardswish,
    hard-sigmoid gate): stem, inverted residual with depthwise conv and SE, head.
    ``frozen_gate``: the same function with the SE gate detached from the graph."""

    def __init__(self, hard: bool = False, frozen_gate: bool = False):
        super().__init__()
        act = nn.Hardswish if hard else nn.SiLU
        gate = nn.Hardsigmoid if hard else nn.Sigmoid
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), act())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), act())
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), act()
        )
        self.se = SqueezeExcite(16, nn.ReLU if hard else nn.SiLU, gate, frozen_gate)
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), act())
        self.fc = _head(16)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.fc(self.head(x))


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm as timm and torchvision write it (permute, normalise, permute)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # channels last
        y = self.pwconv2(self.act(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    """ConvNeXt: patchify stem + LayerNorm2d, two blocks, pooled LayerNorm + Linear head."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, stride=4), LayerNorm2d(c, eps=1e-6))
        self.blocks = nn.Sequential(_ConvNeXtBlock(c), _ConvNeXtBlock(c))
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = self.blocks(self.stem(x)).mean((2, 3))
        return self.fc(self.norm(x))


def lookalikes() -> dict[str, nn.Module]:
    """Each look-alike, seeded and in eval mode, by name."""
    makers = {
        "vgg": VGGLike,
        "resnet": ResNetLike,
        "fused_bn_act": FusedNet,
        "densenet": DenseLike,
        "densenet_torchvision": lambda: DenseLike(fused=False),
        "inception": InceptionLike,
        "inception_torchvision": lambda: InceptionLike(fused=False),
        "efficientnet_se": MBConvLike,
        "mobilenetv3_se": lambda: MBConvLike(hard=True),
        "convnext": ConvNeXtLike,
    }
    out = {}
    for i, (name, make) in enumerate(makers.items()):
        torch.manual_seed(i)
        out[name] = randomize_batchnorms(make(), seed=i)
    return out
