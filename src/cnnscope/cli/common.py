"""Arguments shared by every subcommand: the model, its preprocessing, the device, images."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

import torch
from PIL import Image

from ..errors import CnnscopeError
from ..models import LoadedModel, load_model


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--weights``, ``--device`` and the preprocessing overrides."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="built-in name, TorchScript file, package.module:callable, or torchvision name "
        "(default: efficientnet_lite0)",
    )
    group.add_argument("--weights", help="state dict for a factory or torchvision model")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    group.add_argument("--input-size", type=_size, help="model input size, N or HxW")
    group.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    group.add_argument("--std", type=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
    group.add_argument("--resize", choices=["resize_crop", "resize", "none"], help="resize policy")


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: write N or HxW") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: write N or HxW")
    return parts[0], parts[1]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad numbers {text!r}: write e.g. 0.5,0.5,0.5") from None


def device_from(text: str) -> torch.device:
    """Parse ``--device``; ``auto`` picks CUDA when available."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CnnscopeError(f"bad device {text!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnscopeError("--device cuda was asked for but no CUDA GPU is available")
    return device


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model that ``args`` describe, on its device."""
    model = load_model(
        args.model,
        args.weights,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
    )
    model.module.to(device_from(args.device))
    return model


def add_images_arg(parser: argparse.ArgumentParser, many: bool = True) -> None:
    """Add the positional image argument (files or gallery names)."""
    parser.add_argument(
        "images" if many else "image",
        nargs="*" if many else "?",
        metavar="IMAGE",
        help="image file or built-in gallery name"
        + (" (default: the whole gallery)" if many else ""),
    )


def iter_images(specs: list[str] | None) -> Iterator[tuple[str, Image.Image]]:
    """``(name, RGB image)`` for each spec, or for the whole gallery when none is given."""
    from ..images import gallery_images, resolve_image

    for spec in specs or [g.name for g in gallery_images()]:
        yield resolve_image(spec)


def check_at_least(option: str, value: float | None, low: float) -> None:
    """Raise a one-line :class:`CnnscopeError` when an option's ``value`` is below ``low``.

    ``None`` (an option left out) passes.

    Parameters
    ----------
    option : str
        The option as the user wrote it, e.g. ``--steps``.
    value : int, float or None
        Its value.
    low : int or float
        The smallest value allowed.

    Examples
    --------
    >>> check_at_least("--steps", 5, 1)
    >>> check_at_least("--size", None, 16)
    >>> check_at_least("--steps", 0, 1)
    Traceback (most recent call last):
    ...
    cnnscope.errors.CnnscopeError: --steps must be >= 1, got 0
    """
    if value is not None and value < low:
        raise CnnscopeError(f"{option} must be >= {low}, got {value}")


def print_json(obj) -> None:
    """Write ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
