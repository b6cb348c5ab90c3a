"""cnnscope: see inside convolutional networks.

Examples
--------
>>> import cnnscope
>>> model = cnnscope.load_model()
>>> model.label(285)
'Egyptian cat'
"""

from .attribution import attribute
from .engine import Engine, Unit
from .errors import CnnscopeError
from .images import load_image
from .models import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "attribute",
    "CnnscopeError",
    "Engine",
    "LoadedModel",
    "Unit",
    "load_image",
    "load_model",
]
