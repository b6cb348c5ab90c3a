"""Copies of a model with every ``nn.ReLU6`` swapped out, for comparisons with Captum.

Captum's GuidedBackprop and Deconvolution only override ``nn.ReLU`` modules, so the
Captum side of tests/test_attribution_captum.py and bench/attribution.py runs on such a
copy: ``ReluClamp6`` (a ReLU module, then ``clamp(max=6)``) or a plain ``nn.ReLU``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


class ReluClamp6(nn.Module):
    """``min(relu(x), 6)`` with the ReLU as an ``nn.ReLU`` module Captum can see."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return torch.clamp(self.relu(x), max=6.0)


def replace_relu6(model: nn.Module, make: Callable[[], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` (in eval mode) with each ``nn.ReLU6`` replaced by ``make()``.

    Examples
    --------
    >>> twin = replace_relu6(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU6()), nn.ReLU)
    >>> type(twin[1]).__name__, twin.training
    ('ReLU', False)
    """
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.ReLU6):
            parent, _, last = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, last, make())
    return twin.eval()
