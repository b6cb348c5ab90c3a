"""Models: the built-in EfficientNet-Lite family, loaders for user models, and
:func:`as_loaded`, which every entry point uses to accept a bare ``torch.nn.Module``.

Example
-------
>>> from cnnscope.models import load_model
>>> model = load_model()  # EfficientNet-Lite0 with ImageNet weights
>>> model.label(285)
'Egyptian cat'
"""

from cnnscope.models.base import LoadedModel, Preprocessing, imagenet_labels
from cnnscope.models.efficientnet_lite import EfficientNetLite, efficientnet_lite
from cnnscope.models.user import as_loaded
from cnnscope.models.zoo import BUILTIN_MODELS, builtin_name, clear_cache, load_model

__all__ = [
    "BUILTIN_MODELS",
    "EfficientNetLite",
    "LoadedModel",
    "Preprocessing",
    "as_loaded",
    "builtin_name",
    "clear_cache",
    "efficientnet_lite",
    "imagenet_labels",
    "load_model",
]
