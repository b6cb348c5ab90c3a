"""Neuron trees: how one image's features are built from the features below them.

Examples
--------
>>> from cnnscope.tree import parse_path, format_path
>>> format_path(parse_path("logits:285/head_act:12"))
'logits:285/head_act:12'
"""

from ..engine import Unit
from . import paths as _paths
from .explorer import Explorer
from .node import Node
from .options import GAINS, SCORINGS, SIGNS
from .paths import TreePath, format_path, parse_path
from .pictures import render_gradient, zoom_picture

__all__ = [
    "GAINS",
    "SCORINGS",
    "SIGNS",
    "Explorer",
    "Node",
    "TreePath",
    "Unit",
    "format_path",
    "parse_path",
    "render_gradient",
    "zoom_picture",
]


def __getattr__(name: str):
    """``Path``: the old name of :data:`TreePath`, with a DeprecationWarning."""
    return _paths.__getattr__(name)
