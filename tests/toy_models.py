"""Tiny models used by the model-loading tests (importable as ``tests.toy_models``)."""

from __future__ import annotations

from torch import nn


class Toy(nn.Module):
    """conv -> relu -> pool -> flatten -> fc, three classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


def make() -> Toy:
    """Factory with no arguments, as ``tests.toy_models:make``."""
    return Toy()


def not_a_module() -> int:
    """A factory that returns the wrong type."""
    return 5


def broken() -> Toy:
    """A factory that fails."""
    raise RuntimeError("boom")


def make_fixed32() -> nn.Sequential:
    """A model that only accepts 32x32 inputs (flatten straight into a linear layer)."""
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 32 * 32, 5))
