"""Presets reproducing the style of cnn-vis's example gallery, adapted to EfficientNet-Lite0.

cnn-vis's ``examples/*.sh`` (seed-features.md §3.10) ran GoogLeNet. Each preset here keeps
the example's recipe (noise or photo start, multiscale schedule, RMSProp, p-norm, aux
p-norm, TV, pixel learning rates) and maps its GoogLeNet layer to the EfficientNet-Lite0
layer at the same relative depth and resolution:

==========================  ====================  =========================================
GoogLeNet layer             EfficientNet-Lite0    why
==========================  ====================  =========================================
inception_3a/1x1            blocks.4.expand_act   first 28x28 stage, a ReLU'd 1x1 conv
inception_3a/3x3_reduce     blocks.3.expand_act   a ReLU'd 1x1 reduction before a 3x3
inception_4b/3x3_reduce     blocks.6.expand_act   early 14x14 stage, 1x1 + ReLU
inception_4b/5x5_reduce     blocks.6.depthwise_act early 14x14 stage
inception_4c/output         blocks.8              middle of the 14x14 stages, block output
inception_4c/pool           blocks.8.depthwise_act  a spatial op in the same block
inception_4d/3x3_reduce     blocks.9.expand_act   late 14x14, 1x1 + ReLU
inception_4d/output         blocks.9              late 14x14, block output
inception_4d/pool           blocks.9.depthwise_act  a spatial op in the same block
inception_4e/output         blocks.10             last 14x14 block
==========================  ====================  =========================================

The prior weights are in cnn-vis's units (a run divides them by the model's input std,
128 here: see ``render.prior_gain``) and re-tuned for EfficientNet-Lite0; in those units
the TV and photo p-norm weights lie within 0.08x-2.6x of the examples' own numbers (as
raw weights they were 50x-1700x smaller). The presets add a random jitter, which
EfficientNet's stride-2 "SAME" convolutions need to avoid a fine grid pattern. cnn-vis's
photos (scream, lake, sky, starry night, bliss) are replaced by gallery photos; the Places205 model of examples 5 and 6 by the
ImageNet model. ``quick`` holds the smaller settings used for the documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CnnscopeError
from .config import SynthesisConfig

__all__ = ["PRESETS", "Preset", "get_preset", "preset_config"]


@dataclass(frozen=True)
class Preset:
    """A named set of :class:`SynthesisConfig` options."""

    name: str
    title: str
    example: int
    original: str
    options: dict
    quick: dict = field(default_factory=dict)

    def config(self, quick: bool = False, **overrides) -> SynthesisConfig:
        """The preset's config (with its ``quick`` settings if asked), then ``overrides``."""
        opts = dict(self.options)
        if quick:
            opts.update(self.quick)
        opts.update(overrides)
        return SynthesisConfig(**opts).validate()


# What every example shares: RMSProp on 8 tiles a pass, TV (beta 2.5, 0.128), a 16 px jitter.
_EXAMPLE = dict(batch_size=8, optimizer="rmsprop", beta=2.5, tv_reg=0.128, jitter=16)

# Shared recipe of the noise examples (cnn-vis ex 1-6): 270x480 -> 1080x1920, 5 sizes.
_NOISE = dict(
    _EXAMPLE,
    initial_size="270x480",
    final_size="1080x1920",
    num_sizes=5,
    resize_type="geometric",
    num_steps=100,
    learning_rate=5.0,
    decay_rate=0.25,
    alpha=6.0,
    p_reg=1.28e-08,
    grad_blur=1.5,
    output_iter=25,
)
_NOISE_QUICK = dict(initial_size="96x170", final_size="192x340", num_sizes=3, num_steps=25)

# Shared recipe of the photo examples (cnn-vis ex 7-13): p-norm pulls toward the photo.
_PHOTO = dict(
    _EXAMPLE,
    num_steps=50,
    learning_rate=2.0,
    decay_rate=0.9,
    alpha=2.0,
    p_reg=0.256,
    grad_blur=1.0,
    output_iter=10,
)
_PHOTO_QUICK = dict(num_steps=20)

# cnn-vis's aux p-norm (alpha 8, 5e-11, scale 1) held |x| well below ~50; this one only
# pushes back pixels near the ends of the 0..255 range.
_AUX = dict(alpha_aux=8.0, p_scale_aux=128.0, p_reg_aux=6400.0, use_pixel_learning_rates=True)


def _amp(layer: str) -> str:
    return f"amplify({layer})"


# ex7 and ex8 (cnn-vis's ex8 is "as ex7"): the astronaut at x0.5 -> x0.8 in 2 sizes.
_ASTRONAUT = {
    "p_reg": 0.128,
    "initial_image": "astronaut",
    "initial_size": "x0.5",
    "final_size": "x0.8",
    "num_sizes": 2,
    "num_steps": 30,
}
_ASTRONAUT_QUICK = {**_PHOTO_QUICK, "initial_size": "x0.35", "final_size": "x0.5"}

# ex12 and ex13: x0.5 -> x1.0 in 3 sizes, 100 steps of a faster RMSProp.
_LONG = {
    "initial_size": "x0.5",
    "final_size": "x1.0",
    "num_sizes": 3,
    "num_steps": 100,
    "learning_rate": 5.0,
    "decay_rate": 0.85,
    "p_reg": 0.256,
}


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "ex1",
            "noise, amplify blocks.9.expand_act",
            1,
            "inception_4d/3x3_reduce, noise 270x480->1080x1920 (5), 100 steps, lr 10, decay 0.25, "
            "alpha 6 / p_reg 1e-10, beta 2.5 / tv_reg 0.5",
            {**_NOISE, "objective": _amp("blocks.9.expand_act")},
            _NOISE_QUICK,
        ),
        Preset(
            "ex2",
            "noise, amplify blocks.8 (gallery 'Noise init')",
            2,
            "inception_4c/output, same schedule as ex1",
            {**_NOISE, "objective": _amp("blocks.8")},
            _NOISE_QUICK,
        ),
        Preset(
            "ex3",
            "noise, amplify blocks.10",
            3,
            "inception_4e/output, same schedule as ex1",
            {**_NOISE, "objective": _amp("blocks.10")},
            _NOISE_QUICK,
        ),
        Preset(
            "ex4",
            "noise, amplify blocks.9.expand_act, 200 steps, weak TV",
            4,
            "inception_4d/3x3_reduce, 200 steps, batch 10, alpha 6 / p_reg 1e-11, tv_reg 1e-2",
            {
                **_NOISE,
                "objective": _amp("blocks.9.expand_act"),
                "num_steps": 200,
                "p_reg": 1.28e-09,
                "tv_reg": 0.0256,
            },
            {**_NOISE_QUICK, "num_steps": 40},
        ),
        Preset(
            "ex5",
            "noise, amplify blocks.6.expand_act (gallery 'Places')",
            5,
            "inception_4b/3x3_reduce of Places205 GoogLeNet, 200 steps, lr 5, decay 0.95, "
            "alpha 4 / p_reg 1e-9, beta 2 / tv_reg 0.3",
            {
                **_NOISE,
                "objective": _amp("blocks.6.expand_act"),
                "num_steps": 200,
                "learning_rate": 5.0,
                "decay_rate": 0.95,
                "alpha": 4.0,
                "p_reg": 1.28e-07,
                "beta": 2.0,
                "tv_reg": 0.128,
            },
            {**_NOISE_QUICK, "num_steps": 40},
        ),
        Preset(
            "ex6",
            "blurred strong noise, amplify blocks.8.depthwise_act",
            6,
            "inception_4c/pool of Places205 GoogLeNet, noise scale 10 blur 1, 150 steps, lr 2, "
            "decay 0.9, alpha 4 / p_reg 1e-9, beta 2.5 / tv_reg 1.0",
            {
                **_NOISE,
                "objective": _amp("blocks.8.depthwise_act"),
                "init_scale": 10.0,
                "init_blur": 1.0,
                "num_steps": 150,
                "learning_rate": 2.0,
                "decay_rate": 0.9,
                "alpha": 4.0,
                "p_reg": 1.28e-07,
                "tv_reg": 0.128,
                "output_iter": 50,
            },
            {**_NOISE_QUICK, "num_steps": 40},
        ),
        Preset(
            "ex7",
            "astronaut photo, amplify blocks.4.expand_act",
            7,
            "inception_3a/1x1 on scream.jpg, x0.08->x0.15 (2), 30 steps, lr 1, decay 0.9, "
            "alpha 2 / p_reg 0.5, beta 2.5 / tv_reg 5e-2",
            {**_PHOTO, "objective": _amp("blocks.4.expand_act"), **_ASTRONAUT},
            _ASTRONAUT_QUICK,
        ),
        Preset(
            "ex8",
            "astronaut photo, amplify blocks.3.expand_act",
            8,
            "inception_3a/3x3_reduce on scream.jpg, as ex7",
            {**_PHOTO, "objective": _amp("blocks.3.expand_act"), **_ASTRONAUT},
            _ASTRONAUT_QUICK,
        ),
        Preset(
            "ex9",
            "astronaut photo, amplify blocks.9",
            9,
            "inception_4d/output on scream.jpg, x0.12->x0.25 (3), 50 steps",
            {
                **_PHOTO,
                "objective": _amp("blocks.9"),
                "initial_image": "astronaut",
                "initial_size": "x0.5",
                "final_size": "x1.0",
                "num_sizes": 3,
                "output_iter": 25,
            },
            {**_PHOTO_QUICK, "initial_size": "x0.3", "final_size": "x0.5", "num_sizes": 2},
        ),
        Preset(
            "ex10",
            "temple photo, amplify blocks.9.depthwise_act",
            10,
            "inception_4d/pool on lake.jpg, x0.2->x0.75 (4), 50 steps, alpha 2 / p_reg 5, tv_reg 0.1",
            {
                **_PHOTO,
                "objective": _amp("blocks.9.depthwise_act"),
                "initial_image": "china",
                "initial_size": "x0.4",
                "final_size": "x1.0",
                "num_sizes": 4,
                "p_reg": 0.512,
                "tv_reg": 0.256,
            },
            {**_PHOTO_QUICK, "initial_size": "x0.3", "final_size": "x0.6", "num_sizes": 2},
        ),
        Preset(
            "ex11",
            "rocket photo, amplify blocks.9.depthwise_act, aux p-norm, pixel learning rates",
            11,
            "inception_4d/pool on sky.jpg, x0.25->x1.0 (5), 50 steps, decay 0.85, alpha 2 / p_reg 10, "
            "aux alpha 8 / 5e-11, tv_reg 1.0, pixel learning rates",
            {
                **_PHOTO,
                **_AUX,
                "objective": _amp("blocks.9.depthwise_act"),
                "initial_image": "rocket",
                "initial_size": "x0.4",
                "final_size": "x1.0",
                "num_sizes": 5,
                "decay_rate": 0.85,
                "p_reg": 0.768,
                "tv_reg": 0.512,
            },
            {**_PHOTO_QUICK, "initial_size": "x0.3", "final_size": "x0.6", "num_sizes": 2},
        ),
        Preset(
            "ex12",
            "coffee photo, amplify blocks.8 (the README hero image's recipe)",
            12,
            "inception_4c/output on starry_night.jpg, x0.2->x0.5 (3), 100 steps, lr 5, decay 0.85, "
            "alpha 2 / p_reg 0.5, aux alpha 8 / 5e-11, beta 2.5 / tv_reg 5.0, pixel learning rates",
            {
                **_PHOTO,
                **_AUX,
                "objective": _amp("blocks.8"),
                "initial_image": "coffee",
                **_LONG,
                "tv_reg": 1.28,
            },
            {**_PHOTO_QUICK, "initial_size": "x0.5", "final_size": "x0.7", "num_sizes": 2},
        ),
        Preset(
            "ex13",
            "flower photo, amplify blocks.6.depthwise_act",
            13,
            "inception_4b/5x5_reduce on bliss.jpg, x0.25->x0.5 (3), 100 steps, lr 5, decay 0.85, "
            "alpha 2 / p_reg 0.5, aux alpha 8 / 5e-11, tv_reg 0.5, pixel learning rates",
            {
                **_PHOTO,
                **_AUX,
                "objective": _amp("blocks.6.depthwise_act"),
                "initial_image": "flower",
                **_LONG,
                "tv_reg": 0.128,
            },
            {**_PHOTO_QUICK, "initial_size": "x0.5", "final_size": "x0.7", "num_sizes": 2},
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one-line error listing the names otherwise).

    Examples
    --------
    >>> get_preset("ex2").example
    2
    """
    key = name.strip().lower()
    if key not in PRESETS:
        raise CnnscopeError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


def preset_config(name: str, quick: bool = False, **overrides) -> SynthesisConfig:
    """The :class:`SynthesisConfig` of a preset, optionally quick, with overrides.

    Examples
    --------
    >>> preset_config("ex12", quick=True).initial_image
    'coffee'
    """
    return get_preset(name).config(quick=quick, **overrides)
