"""Fixtures shared by the test modules: use these rather than a module's own copy."""

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


@pytest.fixture(scope="session")
def model():
    """The built-in EfficientNet-Lite0, one for the whole run: no test may change it (its
    values, grads, hooks and modes are checked against a snapshot when the run ends)."""
    from cnnscope.models import load_model
    from tests.side_effects import assert_unchanged, snapshot

    loaded = load_model()
    before = snapshot(loaded.module)
    yield loaded
    try:
        assert_unchanged(before, snapshot(loaded.module))
    except AssertionError as e:
        raise AssertionError(f"a test changed the shared `model` fixture: {e}") from None


@pytest.fixture(scope="module")
def explorer(model):
    """An :class:`~cnnscope.tree.Explorer` of the built-in model (one per module)."""
    from cnnscope.tree import Explorer

    return Explorer(model)


@pytest.fixture(scope="module")
def x(explorer):
    """The built-in model's input for the gallery image chelsea."""
    from cnnscope.images import load_gallery_image

    return explorer.input(load_gallery_image("chelsea"))


@pytest.fixture(scope="module")
def active(model):
    """Whether a unit (``LAYER:CHANNEL``, ``~`` or ``#``) is nonzero somewhere on chelsea:
    the browser tests' pictures of such a unit may not be flat."""
    from cnnscope.images import load_gallery_image
    from cnnscope.tree import Explorer

    ex = Explorer(model)
    fwd = ex.forward(ex.input(load_gallery_image("chelsea")))

    def is_active(unit: str) -> bool:
        layer, channel = unit.replace("~", "#").split("@")[0].rsplit(":", 1)
        return bool(fwd.activation(layer)[0, int(channel)].abs().max() > 0)

    return is_active
