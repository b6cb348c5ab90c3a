"""The loaded-model object: a module plus its preprocessing and class labels."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnscope.errors import ModelSpecError, UnitSpecError

__all__ = [
    "RESIZE_MODES",
    "LoadedModel",
    "Preprocessing",
    "imagenet_labels",
    "load_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

RESIZE_MODES = ("resize_crop", "resize", "none")


@dataclass
class Preprocessing:
    """How a PIL image becomes the model's input tensor.

    Pixels are mapped to ``[0, scale]`` and then normalised as
    ``(x - mean) / std`` per channel (``mean`` and ``std`` are in that scale).

    Parameters
    ----------
    input_size
        ``(H, W)`` of the model input.
    mean, std
        Per-channel normalisation, in units of ``scale``.
    scale
        Value that pixel 255 maps to before normalisation (1.0 for the usual
        torchvision convention, 255.0 for EfficientNet-Lite's ``(x - 127) / 128``).
    resize
        ``"resize_crop"``: scale the image so that it covers
        ``input_size / crop_fraction`` and take the centre ``input_size``
        (for a square input: shorter side to ``size / crop_fraction``, then
        centre crop). ``"resize"``: squash the image to ``input_size``.
        ``"none"``: use the image at its own size (for fully convolutional
        models or images that are already prepared).
    crop_fraction
        Fraction of the (scaled) shorter side kept by ``"resize_crop"``.

    Example
    -------
    >>> pre = Preprocessing((224, 224), (127.0,) * 3, (128.0,) * 3, scale=255.0)
    >>> pre(Image.new("RGB", (300, 200), (255, 127, 0))).shape
    torch.Size([1, 3, 224, 224])
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    resize: str = "resize_crop"
    crop_fraction: float = 0.875

    def __post_init__(self) -> None:
        self.input_size = _pair(self.input_size)
        self.mean = _triple(self.mean, "mean")
        self.std = _triple(self.std, "std")
        if self.resize not in RESIZE_MODES:
            raise ModelSpecError(
                f"unknown resize mode {self.resize!r}: use one of {', '.join(RESIZE_MODES)}"
            )
        if any(s == 0 for s in self.std):
            raise ModelSpecError("std must not contain zeros")
        if not 0 < self.crop_fraction <= 1:
            raise ModelSpecError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize / crop an image to what the model sees (no normalisation).

        Example
        -------
        >>> pre = Preprocessing((224, 224), (0.5,) * 3, (0.5,) * 3)
        >>> pre.geometry(Image.new("RGB", (640, 480))).size
        (224, 224)
        """
        image = image.convert("RGB")
        h, w = self.input_size
        if self.resize == "none" or image.size == (w, h):
            return image
        if self.resize == "resize":
            return image.resize((w, h), Image.Resampling.BICUBIC)
        iw, ih = image.size
        # Scale so that the image covers (h, w) / crop_fraction, keep the centre (h, w).
        scale = max(h / self.crop_fraction / ih, w / self.crop_fraction / iw)
        # min/max: rounding must not put the crop box a hair outside the image
        bw, bh = min(w / scale, iw), min(h / scale, ih)
        left, top = max((iw - bw) / 2, 0.0), max((ih - bh) / 2, 0.0)
        return image.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + bw, top + bh))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn a PIL image into a ``1x3xHxW`` float32 tensor.

        Example
        -------
        >>> pre = Preprocessing((2, 2), (127.0,) * 3, (128.0,) * 3, scale=255.0)
        >>> pre(Image.new("RGB", (2, 2), (255, 127, 0)))[0, :, 0, 0].tolist()
        [1.0, 0.0, -0.9921875]
        """
        x: np.ndarray = np.asarray(self.geometry(image), dtype=np.float32) * (self.scale / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).contiguous()

    def to_uint8(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo the normalisation: ``3xHxW`` or ``1x3xHxW`` tensor -> ``HxWx3`` uint8 array.

        Example
        -------
        >>> pre = Preprocessing((2, 2), (127.0,) * 3, (128.0,) * 3, scale=255.0)
        >>> pre.to_uint8(torch.zeros(1, 3, 2, 2))[0, 0].tolist()
        [127, 127, 127]
        """
        x = tensor.detach().cpu().float()
        if x.ndim == 4:
            if x.shape[0] != 1:
                raise ValueError(f"expected a batch of one image, got shape {tuple(x.shape)}")
            x = x[0]
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a 3xHxW tensor, got shape {tuple(x.shape)}")
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        x = (x * std + mean) * (255.0 / self.scale)
        return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def to_image(self, tensor: torch.Tensor) -> Image.Image:
        """Show an input tensor as the model sees it (inverse of :meth:`__call__`).

        Example
        -------
        >>> pre = Preprocessing((224, 224), (0.5,) * 3, (0.5,) * 3)
        >>> pre.to_image(torch.zeros(3, 224, 224)).getpixel((0, 0))
        (128, 128, 128)
        """
        return Image.fromarray(self.to_uint8(tensor), "RGB")


@dataclass
class LoadedModel:
    """A model ready for exploration.

    Attributes
    ----------
    module
        The network, in eval mode. Built-in models are cached and shared
        between :class:`LoadedModel` instances: do not modify their weights.
    preprocess_config
        How images become input tensors.
    labels
        Class names, index -> name.
    name
        Display name of the model.
    default_chain
        Sensible layer names for overviews, from the logits down to the stem.
    logits_layer
        Name of the module whose output is the logits, or ``None`` if unknown
        (then the model output itself is the logits).

    Example
    -------
    >>> from cnnscope.models import load_model
    >>> model = load_model("efficientnet_lite0")
    >>> model.class_index("Egyptian cat"), model.label(967)
    (285, 'espresso')
    """

    module: nn.Module
    preprocess_config: Preprocessing
    labels: list[str]
    name: str
    default_chain: list[str] = field(default_factory=list)
    logits_layer: str | None = None

    @property
    def num_classes(self) -> int:
        """Number of output classes (0 when unknown)."""
        return len(self.labels)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Turn a PIL image into the model's ``1x3xHxW`` input tensor."""
        return self.preprocess_config(image)

    def label(self, idx: int) -> str:
        """Name of class ``idx`` (``"class N"`` when there is no name for it)."""
        idx = int(idx)
        return self.labels[idx] if 0 <= idx < len(self.labels) else f"class {idx}"

    def top_classes(self, logits: torch.Tensor, k: int = 5) -> list[dict]:
        """The ``k`` likeliest classes of one image's ``logits``: index, label, probability.

        Best first; ``k`` is clipped to 1 .. the number of classes.

        Example
        -------
        >>> from cnnscope.models import load_model
        >>> model = load_model()
        >>> top = model.top_classes(torch.tensor([[0.0, 2.0, 1.0]]), k=2)
        >>> [(t["index"], round(t["probability"], 3)) for t in top]
        [(1, 0.665), (2, 0.245)]
        """
        probs = torch.softmax(logits.detach().reshape(-1).float(), 0)
        values, idx = probs.topk(max(1, min(int(k), probs.numel())))
        return [
            {"index": int(i), "label": self.label(int(i)), "probability": float(v)}
            for v, i in zip(values, idx)
        ]

    def class_index(self, name_or_index: str | int) -> int:
        """Find a class by index or name.

        Accepts an index (``285`` or ``"285"``), a full label, one of its
        comma-separated synonyms, or an unambiguous prefix, all case-insensitive.

        Raises
        ------
        UnitSpecError
            (a ``ValueError``) if nothing or more than one class matches; the
            message suggests close names.

        Example
        -------
        >>> from cnnscope.models import load_model
        >>> model = load_model()
        >>> model.class_index("285"), model.class_index("egyptian"), model.class_index("tabby")
        (285, 285, 281)
        """
        if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
            return self._checked_index(int(name_or_index))
        query = str(name_or_index).strip()
        if query.lstrip("-").isdigit():
            return self._checked_index(int(query))
        q = query.lower()
        full = [label.lower() for label in self.labels]
        synonyms = [[s.strip() for s in f.split(",")] for f in full]
        for match in (
            lambda i: full[i] == q,
            lambda i: q in synonyms[i],
            lambda i: any(s.startswith(q) for s in synonyms[i]) or full[i].startswith(q),
        ):
            found = [i for i in range(len(full)) if match(i)]
            if len(found) == 1:
                return found[0]
            if found:
                listed = ", ".join(f"{i} ({self.labels[i]})" for i in found[:8])
                more = f" and {len(found) - 8} more" if len(found) > 8 else ""
                raise UnitSpecError(f"class {query!r} is ambiguous: {listed}{more}; give the index")
        words = sorted({s for syn in synonyms for s in syn} | set(full))
        close = difflib.get_close_matches(q, words, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnitSpecError(
            f"unknown class {query!r}{hint} (give a class name or an index 0-{len(full) - 1})"
        )

    def _checked_index(self, idx: int) -> int:
        if self.labels and not 0 <= idx < len(self.labels):
            raise UnitSpecError(f"class index {idx} out of range 0-{len(self.labels) - 1}")
        return idx


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order.

    Example
    -------
    >>> imagenet_labels()[285]
    'Egyptian cat'
    """
    text = resources.files("cnnscope").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (a state dict, or a dict holding one under ``state_dict``/``model``).

    A ``module.`` prefix added by ``DataParallel`` is removed. Nothing but
    tensors and plain containers is unpickled (``weights_only=True``).

    Example
    -------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"state_dict": {"module.fc.bias": torch.zeros(2)}}, f)
    >>> list(read_state_dict(f))
    ['fc.bias']
    """
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelSpecError(
            f"cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            " (expected a state dict saved with torch.save)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelSpecError(f"weights file {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line :class:`ModelSpecError` on mismatch.

    Example
    -------
    >>> net = nn.Linear(2, 3)
    >>> load_weights(net, {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, "a linear layer")
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            problems.append(
                f"{len(items)} {title} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            )
    if problems:
        raise ModelSpecError(f"weights do not fit {what}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    ints = [int(size)] * 2 if isinstance(size, int) else [int(s) for s in size]
    if len(ints) != 2 or min(ints) < 1:
        raise ModelSpecError(
            f"input size must be N or (H, W) with positive values, got {tuple(ints)}"
        )
    return ints[0], ints[1]


def _triple(values: float | Sequence[float], what: str) -> tuple[float, float, float]:
    floats = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(floats) == 1:
        floats = floats * 3
    if len(floats) != 3:
        raise ModelSpecError(f"{what} needs 1 or 3 values, got {len(floats)}")
    return floats[0], floats[1], floats[2]
