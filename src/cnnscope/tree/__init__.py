"""Neuron trees: how one image's features are built from the features below them.

Examples
--------
>>> from cnnscope.tree import parse_path, format_path
>>> format_path(parse_path("logits:285/head_act:12"))
'logits:285/head_act:12'
"""

from ..engine import Unit
from .explorer import GAINS, SCORINGS, SIGNS, Explorer, Node, render_gradient, zoom_picture
from .paths import Path, format_path, parse_path

__all__ = [
    "GAINS",
    "SCORINGS",
    "SIGNS",
    "Explorer",
    "Node",
    "Path",
    "Unit",
    "format_path",
    "parse_path",
    "render_gradient",
    "zoom_picture",
]
