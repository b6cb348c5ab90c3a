"""A model seen as a chain of layers: names, checked tree paths, one image's forward.

:class:`LayerChain` is the base of :class:`~cnnscope.tree.Explorer`: it puts the chain's
layers in execution order (top first), checks tree paths against it, and records the
forward of one image through the model's engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..engine import INPUT, LOGITS, Engine, Forward, Unit, strongest_units
from ..errors import CnnscopeError, UnitSpecError
from ..models import as_loaded
from .paths import TreePath, format_path, parse_path


class LayerChain:
    """The chain of layers of a tree over a model; see :class:`~cnnscope.tree.Explorer`.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> chain = LayerChain(load_model(), ["blocks.15", "logits", "head_act"])
    >>> chain.chain, chain.below("logits")
    (['logits', 'head_act', 'blocks.15'], 'head_act')
    """

    def __init__(self, model, chain: Sequence[str] | None = None):
        self.model = model = as_loaded(model)
        self.engine = Engine.for_module(model.module)
        height, width = model.preprocess_config.input_size
        self.input_size = (int(height), int(width))
        infos = self.engine.layers(self.input_size)
        self._order = {info.name: i for i, info in enumerate(infos)}
        self._shape = {info.name: info.shape for info in infos}
        self._modules = dict(model.module.named_modules())
        names = list(chain) if chain else list(model.default_chain)
        if not names:
            raise CnnscopeError("empty layer chain: give at least one layer")
        resolved = []
        for name in names:
            layer = self.canonical(name)
            if layer == INPUT:
                raise CnnscopeError("the input cannot be a layer of the chain")
            if layer not in resolved:
                resolved.append(layer)
        resolved.sort(key=lambda n: -self._order[n])
        self.chain: list[str] = resolved

    def canonical(self, layer: str) -> str:
        """The canonical name of ``layer`` (the model's logits layer is ``logits``).

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> LayerChain(load_model()).canonical("classifier")
        'logits'
        """
        if layer == LOGITS or (self.model.logits_layer and layer == self.model.logits_layer):
            return LOGITS
        name = self.engine.resolve(layer, self.input_size)
        return LOGITS if name == self.model.logits_layer else name

    def below(self, layer: str) -> str | None:
        """The next lower chain layer under ``layer``, or None at the bottom."""
        order = self._order[self.canonical(layer)]
        return next((n for n in self.chain if self._order[n] < order), None)

    def above(self, layer: str) -> str | None:
        """The next higher chain layer over ``layer``, or None at the top."""
        order = self._order[self.canonical(layer)]
        return next((n for n in reversed(self.chain) if self._order[n] > order), None)

    def check_path(self, path: TreePath | str) -> TreePath:
        """Validate ``path`` (or its text) against the model and the chain.

        Returns the path with canonical layer names. Raises ``UnitSpecError`` (bad unit,
        channel or position, or a node not in the next chain layer) or
        ``UnknownLayerError``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> LayerChain(load_model()).check_path("classifier:285")
        (Unit(layer='logits', channel=285, pos=None),)
        """
        if isinstance(path, str):
            path = parse_path(path)
        if not path or not all(isinstance(u, Unit) for u in path):
            raise UnitSpecError("a tree path is a non-empty sequence of units")
        out: list[Unit] = []
        for i, unit in enumerate(path):
            layer = self.canonical(unit.layer)
            if layer == INPUT:
                raise UnitSpecError("the input has no units to explore")
            if i:
                expected = self.below(out[-1].layer)
                if layer != expected:
                    raise UnitSpecError(
                        f"bad tree path {format_path(tuple(path))!r}: after {out[-1].layer} "
                        f"comes {expected or 'nothing (bottom of the chain)'}, not {layer}"
                    )
                if unit.pos is not None:
                    raise UnitSpecError("only the root of a tree path may carry a position")
            shape = self._shape[layer]
            if not shape or unit.channel >= shape[0]:
                n = shape[0] if shape else 0
                raise UnitSpecError(f"channel {unit.channel} out of range for {layer} (0-{n - 1})")
            if unit.pos is not None:
                if len(shape) != 3:
                    raise UnitSpecError(f"{layer} has no spatial positions (@Y,X)")
                y, x = unit.pos
                if not (0 <= y < shape[1] and 0 <= x < shape[2]):
                    raise UnitSpecError(
                        f"position {y},{x} out of range for {layer} ({shape[1]}x{shape[2]})"
                    )
            out.append(Unit(layer, unit.channel, unit.pos))
        return tuple(out)

    def input(self, image: Image.Image) -> torch.Tensor:
        """The model input (1 x 3 x H x W) for a PIL image."""
        return self.model.preprocess(image)

    def forward(self, x: torch.Tensor) -> Forward:
        """The engine's recorded (cached) forward of the single image ``x``."""
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            x = x.unsqueeze(0)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
            raise CnnscopeError("the explorer takes one image: a 1 x C x H x W tensor")
        if tuple(x.shape[-2:]) != self.input_size:
            raise CnnscopeError(
                f"input size {tuple(x.shape[-2:])} differs from the model's {self.input_size}"
            )
        return self.engine.forward(x)

    def predictions(self, x: torch.Tensor, k: int = 5) -> list[dict]:
        """The top-``k`` classes: ``[{index, label, probability}]``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = LayerChain(load_model())
        >>> ex.predictions(ex.input(load_gallery_image("chelsea")), k=1)[0]["index"]
        285
        """
        return self.model.top_classes(self.forward(x).activation(LOGITS), k)

    def overview(self, x: torch.Tensor, per_layer: int = 8) -> list[dict]:
        """The strongest units of each chain layer (:func:`~cnnscope.engine.strongest_units`).

        A unit's score is its strength: its spatial maximum, read below a ReLU-family
        activation (its pre-activation maximum), so units saturated at a clip do not tie.
        Returns ``[{"layer": name, "units": [{"unit": "LAYER:C", "score": float}]}]``,
        top layer first.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = LayerChain(load_model())
        >>> ov = ex.overview(ex.input(load_gallery_image("chelsea")), per_layer=2)
        >>> ov[0]["units"][0]["unit"]
        'logits:285'
        """
        fwd = self.forward(x)
        out = []
        for layer in self.chain:
            units = [
                {"unit": str(u), "score": s} for u, s in strongest_units(fwd, layer, per_layer)
            ]
            out.append({"layer": layer, "units": units})
        return out
