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
