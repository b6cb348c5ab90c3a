"""Models that went through the engine are freed once the caller drops them.

Every per-model cache (the shared engine and its forwards, LRP's rewritten copy, the
default CAM layer, the explorer's seeds) must let the model go: after ``del model`` and
``gc.collect()``, weak references to the model and to one of its parameters are dead.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from cnnscope.attribution import attribute
from cnnscope.attribution.lrp import LRPModel
from cnnscope.engine import Engine
from cnnscope.images import load_gallery_image
from cnnscope.models import clear_cache, load_model
from cnnscope.models.base import LoadedModel, Preprocessing
from cnnscope.tree import Explorer

LRP_METHODS = ("lrp", "lrp_epsilon", "lrp_zplus", "lrp_alpha_beta")
METHODS = ("gradient", "grad_cam", "integrated_gradients", *LRP_METHODS)


class _Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> ReLU -> pool -> fc: a class of its own, to find its
    LRP copies among all live objects."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.bn(self.conv1(x)))))
        return self.fc(h.mean(dim=(2, 3)))


def _small() -> LoadedModel:
    pre = Preprocessing((10, 10), (0.5,) * 3, (0.5,) * 3, resize="resize")
    labels = [f"c{i}" for i in range(4)]
    return LoadedModel(_Net().eval(), pre, labels, "small", ["logits", "relu2", "relu1"], "fc")


def _use(model: LoadedModel, x: torch.Tensor, use: str) -> None:
    if use == "engine":
        fwd = Engine.for_module(model.module).forward(x)
        fwd.grad("logits", torch.ones_like(fwd.activation("logits")), rule="guided")
    elif use == "explorer":
        Explorer(model).children(x, "logits:1", k=2)
    else:
        options = {"steps": 4} if use == "integrated_gradients" else {}
        attribute(model, x, use, target=1, **options)


def _refs(model: LoadedModel) -> tuple[weakref.ref, weakref.ref]:
    return weakref.ref(model.module), weakref.ref(next(model.module.parameters()))


def _twin(model: LoadedModel) -> LoadedModel:
    """The same model on an independent module (its own engine and caches)."""
    twin = _small()
    twin.module.load_state_dict(model.module.state_dict())
    return twin


def _lrp_copies() -> list[LRPModel]:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is LRPModel and type(o.module) is _Net]


@pytest.mark.parametrize("use", ["engine", "explorer", *METHODS])
def test_a_dropped_model_is_freed(use):
    model = _small()
    _use(model, torch.randn(1, 3, 10, 10), use)
    module_ref, param_ref = _refs(model)
    del model
    gc.collect()
    assert module_ref() is None, f"the model outlives its last use ({use})"
    assert param_ref() is None, f"a parameter outlives its model ({use})"


def test_lrp_keeps_one_rewritten_copy_per_model():
    model = _small()
    x = torch.randn(1, 3, 10, 10)
    for method in LRP_METHODS:
        _use(model, x, method)
    assert len(_lrp_copies()) <= 1
    torch.testing.assert_close(  # the copy kept is the one of the last method
        attribute(model, x, LRP_METHODS[-1], target=1).tensor,
        attribute(_twin(model), x, LRP_METHODS[-1], target=1).tensor,
    )
    del model
    assert _lrp_copies() == []


def test_efficientnet_lite0_is_freed_after_every_use():
    clear_cache()  # a module of our own, not the zoo's shared one
    model = load_model()
    clear_cache()
    x = model.preprocess(load_gallery_image("chelsea"))
    for use in ("engine", "explorer", *METHODS):
        _use(model, x, use)
    module_ref, param_ref = _refs(model)
    del model
    gc.collect()
    assert module_ref() is None and param_ref() is None


def test_a_private_engine_keeps_its_model_and_a_kept_forward_outlives_it():
    x = torch.randn(1, 3, 10, 10)
    engine = Engine(_Net().eval())  # the engine holds the only reference to its model
    gc.collect()
    assert engine.forward(x).activation("logits").shape == (1, 4)
    model = _small()
    kept = Engine.for_module(model.module).forward(x)
    expected = kept.grad("logits", torch.ones(1, 4), rule="guided")
    del model
    gc.collect()
    torch.testing.assert_close(kept.grad("logits", torch.ones(1, 4), rule="guided"), expected)
