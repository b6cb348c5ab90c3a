"""Attribution: which input pixels (or feature-map positions) a prediction owes most to.

One verb, :func:`attribute`, runs any method of the registry :data:`METHODS` on a model
loaded by :func:`cnnscope.load_model` (or a bare ``nn.Module``) and returns an
:class:`Attribution`: the raw signed map at input resolution plus renderings.

Examples
--------
>>> from cnnscope.models import load_model
>>> from cnnscope.images import load_gallery_image
>>> from cnnscope.attribution import attribute
>>> model = load_model()
>>> attr = attribute(model, load_gallery_image("chelsea"), "grad_cam")
>>> attr.target.label, attr.array.shape
('Egyptian cat', (224, 224))
"""

from . import cam, gradient, lrp  # noqa: F401  (register the methods)
from .core import (
    METHODS,
    Attribution,
    Context,
    Method,
    MethodOutput,
    Target,
    attribute,
    get_method,
    method_names,
    register,
)
from .evaluate import (
    completeness,
    conservation,
    deletion_insertion,
    evaluate,
    randomization_check,
)
from .lrp import COMPOSITES, Composite, Rule, fold_batchnorms
from .render import STYLES, render_map

__all__ = [
    "COMPOSITES",
    "METHODS",
    "STYLES",
    "Attribution",
    "Composite",
    "Context",
    "Method",
    "MethodOutput",
    "Rule",
    "Target",
    "attribute",
    "completeness",
    "conservation",
    "deletion_insertion",
    "evaluate",
    "fold_batchnorms",
    "get_method",
    "method_names",
    "randomization_check",
    "register",
    "render_map",
]
