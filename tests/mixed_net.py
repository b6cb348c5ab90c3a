"""A small network with every awkward pattern the engine must handle.

It has a functional ReLU, an in-place ReLU, one ReLU module reused three times, a
residual add, a concatenation of two branches, a depthwise convolution, a ReLU6 and a
``clamp(min=0)``, and it takes non-square inputs. :func:`reference_grad` is an
independent, hand-written backward pass of the same network under each rule.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = (10, 14)


class MixedNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.ReLU()  # reused three times
        self.inplace = nn.ReLU(inplace=True)
        self.branch_a = nn.Conv2d(6, 4, 1)
        self.branch_b = nn.Conv2d(6, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.act6 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h1 = F.relu(self.conv1(x))  # functional
        a = self.shared(self.branch_a(h1))  # shared call 1
        b = self.inplace(self.branch_b(h1))  # in-place module
        cat = torch.cat([a, b], dim=1)  # concatenation
        d = self.shared(self.depthwise(cat))  # shared call 2, depthwise
        r = d + cat  # residual
        c2 = self.shared(self.conv2(r))  # shared call 3
        c3 = self.act6(c2 * 3.0).clamp(min=0)  # ReLU6 then clamp(min=0)
        return self.fc(torch.flatten(self.pool(c3), 1))


def _act_back(rule, x, g, lo=0.0, hi=float("inf")):
    """The rule applied at an activation whose forward input is x (hand-written)."""
    inside = ((x > lo) & (x < hi)).double()
    if rule == "gradient":
        return g * inside
    if rule == "deconvnet":
        return g * (g > 0)
    if rule == "guided":
        return g * inside * (g > 0)
    if rule == "guided_neg":
        return g * inside * (g < 0)
    raise ValueError(rule)


def _conv_back(conv, x, g):
    """Gradient of conv(x) w.r.t. x, by the transpose convolution, written directly."""
    return torch.nn.grad.conv2d_input(
        x.shape,
        conv.weight.double(),
        g,
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
    )


def reference_grad(net: MixedNet, x: torch.Tensor, seed_logits: torch.Tensor, rule: str) -> dict:
    """Gradients at the input and at named points, from ``seed_logits``, by hand."""
    x = x.double()
    net = copy.deepcopy(net).double()
    names = {"c1": "conv1", "a": "branch_a", "b": "branch_b", "d": "depthwise", "c2": "conv2"}
    conv = {short: getattr(net, name) for short, name in names.items()}
    with torch.no_grad():
        z1 = conv["c1"](x)
        h1 = z1.clamp(min=0)
        za, zb = conv["a"](h1), conv["b"](h1)
        a, b = za.clamp(min=0), zb.clamp(min=0)
        cat = torch.cat([a, b], 1)
        zd = conv["d"](cat)
        d = zd.clamp(min=0)
        r = d + cat
        z2 = conv["c2"](r)
        c2 = z2.clamp(min=0)
        z6 = c2 * 3.0
        c6 = z6.clamp(0, 6)
        # backward
        g_pool = seed_logits.double() @ net.fc.weight.double()  # (N, 8)
        hw = c6.shape[-2] * c6.shape[-1]
        g_c3 = g_pool[:, :, None, None].expand_as(c6) / hw
        g_c6 = _act_back(rule, c6, g_c3)  # clamp(min=0) on c6 (input c6)
        g_z6 = _act_back(rule, z6, g_c6, 0.0, 6.0)
        g_c2 = g_z6 * 3.0
        g_z2 = _act_back(rule, z2, g_c2)
        g_r = _conv_back(conv["c2"], r, g_z2)
        g_d = g_r
        g_cat = g_r + _conv_back(conv["d"], cat, _act_back(rule, zd, g_d))
        g_a, g_b = g_cat[:, :4], g_cat[:, 4:]
        g_h1 = _conv_back(conv["a"], h1, _act_back(rule, za, g_a)) + _conv_back(
            conv["b"], h1, _act_back(rule, zb, g_b)
        )
        g_z1 = _act_back(rule, z1, g_h1)
        g_x = _conv_back(conv["c1"], x, g_z1)
    return {"input": g_x, "cat": g_cat, "conv1": g_z1}
