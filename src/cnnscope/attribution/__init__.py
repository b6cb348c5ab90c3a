"""Attribution: which input pixels (or feature-map positions) a prediction owes most to.

One verb, :func:`attribute`, runs any method of the registry :data:`METHODS` on a model
loaded by :func:`cnnscope.load_model` (or a bare ``nn.Module``) and returns an
:class:`Attribution`: the raw signed map at input resolution plus renderings.

One module per job: :mod:`.registry` (methods, their titles and options),
:mod:`.targets` (what is explained), :mod:`.inputs` (pictures, paths and tensors as
model input), :mod:`.context` (what a method function gets), :mod:`.result` (the
:class:`Attribution`) and :mod:`.api` (the verb). The methods themselves live in
:mod:`.gradient`, :mod:`.cam` and :mod:`.lrp`; a new one is one decorated function there.

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

# The method modules register their methods in the registry as they are imported.
from ..errors import warn_renamed
from . import cam, gradient, lrp  # noqa: F401
from .api import attribute
from .context import Context
from .evaluate import (
    completeness,
    conservation,
    deletion_insertion,
    evaluate,
    randomization_check,
)
from .figures import STYLES, render_map
from .lrp import COMPOSITES, Composite, LrpRule, fold_batchnorms
from .registry import METHODS, Method, MethodOutput, get_method, method_names, register
from .result import Attribution
from .targets import Target

__all__ = [
    "COMPOSITES",
    "METHODS",
    "STYLES",
    "Attribution",
    "Composite",
    "Context",
    "LrpRule",
    "Method",
    "MethodOutput",
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


def __getattr__(name: str):
    """``Rule``: the old name of :class:`LrpRule`, with a DeprecationWarning."""
    if name == "Rule":
        warn_renamed("cnnscope.attribution.Rule", "LrpRule")
        return LrpRule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
