"""Channels-last tensors (ConvNeXt's LayerNorm and Linear over N x H x W x C) are no maps.

Found by ``bench/architectures.py``: the default CAM layer and tree chain of a ConvNeXt
look-alike were ``blocks.1.pwconv2``, an N x H x W x C tensor that Grad-CAM, the tree and
the views read as H "channels" of W x C maps.
"""

from __future__ import annotations

import torch

from cnnscope import attribute, load_model
from tests.lookalike_models import ConvNeXtLike, randomize_batchnorms


def _convnext():
    torch.manual_seed(0)
    return load_model(randomize_batchnorms(ConvNeXtLike()), input_size=64)


def test_convnext_default_cam_layer_is_a_channels_first_map():
    model = _convnext()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    attr = attribute(model, x, "grad_cam", target=1)
    assert attr.layer == "blocks"
    assert tuple(attr.meta["cam"]["blocks"].shape[-2:]) == (16, 16)  # H x W, not W x C


def test_convnext_default_chain_has_no_channels_last_layer():
    chain = _convnext().default_chain
    assert chain == ["fc", "blocks", "stem"], chain
    assert not any(part in name for name in chain for part in ("pwconv", "norm", "act"))
