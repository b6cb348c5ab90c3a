"""Small look-alikes of torchvision / timm models, with the same module structure.

For the structural default layers (tests/test_default_layers.py): module names,
nesting and forward passes follow the originals (DenseNet, Inception v3, timm
EfficientNet-B0, ResNet, VGG); widths and depths are tiny. Input 64 x 64 (Inception 80).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    def __init__(self, width: int, growth: int):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(width), nn.ReLU()
        self.conv1 = nn.Conv2d(width, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(2 * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """Each layer reads the concatenation of all before it; the block returns them all."""

    def __init__(self, layers: int, width: int, growth: int):
        super().__init__()
        for i in range(layers):
            self[f"denselayer{i + 1}"] = DenseLayer(width + i * growth, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm, self.relu = nn.BatchNorm2d(width), nn.ReLU()
        self.conv = nn.Conv2d(width, out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNetLike(nn.Module):
    """torchvision's DenseNet: one ``features`` Sequential, then relu, pool and classifier."""

    def __init__(self, classes: int = 5, growth: int = 4):
        super().__init__()
        parts: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(3, 8, 7, 2, 3, bias=False),
            norm0=nn.BatchNorm2d(8),
            relu0=nn.ReLU(),
            pool0=nn.MaxPool2d(3, 2, 1),
        )
        width = 8
        for i in (1, 2, 3):
            parts[f"denseblock{i}"] = DenseBlock(2, width, growth)
            width += 2 * growth
            if i < 3:
                parts[f"transition{i}"] = Transition(width, width // 2)
                width //= 2
        parts["norm5"] = nn.BatchNorm2d(width)
        self.features = nn.Sequential(parts)
        self.width = width
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1)
        return self.classifier(torch.flatten(out, 1))


# ---------------------------------------------------------------------- Inception


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 8, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 6, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(6, 8, kernel_size=5, padding=2)
        self.branch_pool = BasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 3, 1, 1)
        parts = [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x))]
        return torch.cat([*parts, self.branch_pool(pooled)], 1)


class InceptionB(nn.Module):
    """A reduction block: a strided branch and a max-pooled bypass."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 16, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """Inception v3's last block: its last-called leaf is the narrow pooling branch."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 16, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 12, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(12, 12, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(12, 12, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.branch3x3_1(x)
        parts = [self.branch1x1(x), self.branch3x3_2a(mid), self.branch3x3_2b(mid)]
        return torch.cat([*parts, self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionLike(nn.Module):
    """torchvision's Inception3: a flat top level of convs, pools and Mixed blocks."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(8, 8, kernel_size=3)
        self.maxpool1 = nn.MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(8, 4)  # 8 + 8 + 4 = 20
        self.Mixed_5c = InceptionA(20, 8)  # 24
        self.Mixed_6a = InceptionB(24)  # 16 + 24 = 40
        self.Mixed_7b = InceptionE(40)  # 16 + 12 + 12 + 4 = 44
        self.Mixed_7c = InceptionE(44)  # 44
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(44, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Mixed_6a(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.avgpool(self.Mixed_7c(self.Mixed_7b(x)))
        return self.fc(torch.flatten(self.dropout(x), 1))


# ------------------------------------------------------------ timm EfficientNet-B0


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + activation: a BatchNorm2d with children."""

    def __init__(self, width: int):
        super().__init__(width)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = 2 * cin
        self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), BatchNormAct2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return out + x if self.residual else out


class SelectAdaptivePool2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


#: (blocks, out channels, first stride) of each stage
EFFICIENT_STAGES = [(1, 8, 1), (2, 12, 2), (2, 16, 2), (2, 24, 2), (1, 24, 1), (2, 32, 2)]


class EfficientNetLike(nn.Module):
    """timm's EfficientNet: ``blocks`` is a Sequential of stage Sequentials of blocks."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(8)
        stages, cin = [], 8
        for count, cout, stride in EFFICIENT_STAGES:
            blocks = []
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = nn.Conv2d(cin, 48, 1, bias=False), BatchNormAct2d(48)
        self.global_pool = SelectAdaptivePool2d()
        self.classifier = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return self.classifier(self.global_pool(self.bn2(self.conv_head(x))))


# ------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class ResNetLike(nn.Module):
    """torchvision's ResNet: stem, ``layer1`` .. ``layer4`` of two blocks, pool, fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [8, 16, 24, 32]
        cin = 8
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            setattr(self, f"layer{i + 1}", layer)
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------- VGG


class VGGLike(nn.Module):
    """torchvision's VGG: ``features`` Sequential of conv/relu/pool, pool, classifier."""

    def __init__(self, classes: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in (8, "M", 16, "M", 16, 16, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(width), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(8)  # as 7 x 7 at 224
        self.classifier = nn.Sequential(
            nn.Linear(cin * 64, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
