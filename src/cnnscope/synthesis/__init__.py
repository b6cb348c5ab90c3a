"""Feature synthesis: images that show what a unit, a layer or a class wants to see.

Activation maximization of units, channels, class logits, directions and layers
(cnn-vis amplification, DeepDream), with pixel or Fourier parameterizations,
random transforms, cnn-vis's regularizers and RMSProp, multiscale schedules and tiling
for large images, inversion of representations and class images. Every gradient goes
through the engine.

Examples
--------
>>> from cnnscope.models import load_model
>>> from cnnscope.synthesis import visualize_units
>>> images = visualize_units(load_model(), ["blocks.5:3"], steps=2, size=64)
>>> images[0].shape
(64, 64, 3)
"""

from .api import (
    CLASS_DEFAULTS,
    DREAM_DEFAULTS,
    INVERT_DEFAULTS,
    VISUALIZE_DEFAULTS,
    class_image,
    deepdream,
    driven_unit,
    invert,
    unit_visualization,
    visualize_config,
    visualize_units,
)
from .config import SynthesisConfig
from .loop import SynthesisResult, synthesize
from .objectives import (
    Amplify,
    Batch,
    Channel,
    ClassLogit,
    DeepDream,
    Direction,
    Diversity,
    Inversion,
    LayerObjective,
    ModelBinding,
    Neuron,
    Objective,
    parse_objective,
    unit_objective,
)
from .outputs import save_gif, save_result
from .params import FourierParam, ImageSpace, PixelParam
from .presets import PRESETS, Preset, get_preset, preset_config

__all__ = [
    "Amplify",
    "Batch",
    "CLASS_DEFAULTS",
    "Channel",
    "ClassLogit",
    "DREAM_DEFAULTS",
    "DeepDream",
    "Direction",
    "Diversity",
    "FourierParam",
    "INVERT_DEFAULTS",
    "ImageSpace",
    "Inversion",
    "LayerObjective",
    "ModelBinding",
    "Neuron",
    "Objective",
    "PRESETS",
    "PixelParam",
    "Preset",
    "SynthesisConfig",
    "SynthesisResult",
    "VISUALIZE_DEFAULTS",
    "class_image",
    "deepdream",
    "driven_unit",
    "get_preset",
    "invert",
    "parse_objective",
    "preset_config",
    "save_gif",
    "save_result",
    "synthesize",
    "unit_objective",
    "unit_visualization",
    "visualize_config",
    "visualize_units",
]
