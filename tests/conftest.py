"""Fixtures shared by test modules (a module's own fixture of the same name wins)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared, oversubscribed machine this is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """The built-in EfficientNet-Lite0."""
    from cnnscope.models import load_model

    return load_model()


@pytest.fixture(scope="module")
def active():
    """Whether a unit (``LAYER:CHANNEL``, ``~`` or ``#``) is nonzero somewhere on chelsea:
    the browser tests' pictures of such a unit may not be flat."""
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model
    from cnnscope.tree import Explorer

    ex = Explorer(load_model())
    fwd = ex.forward(ex.input(load_gallery_image("chelsea")))

    def is_active(unit: str) -> bool:
        layer, channel = unit.replace("~", "#").split("@")[0].rsplit(":", 1)
        return bool(fwd.activation(layer)[0, int(channel)].abs().max() > 0)

    return is_active
