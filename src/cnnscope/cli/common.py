"""Arguments shared by every subcommand: the model, its preprocessing, the device, images."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

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
        help="built-in name; package.module:callable, with literal arguments if any "
        "('mynet:make(width=32)'; the current folder is searched too); timm:NAME; "
        "a TorchScript file (pixel attributions only); or a torchvision name "
        "(default: efficientnet_lite0)",
    )
    group.add_argument(
        "--weights", help="state dict for a factory, timm or torchvision model, or a built-in"
    )
    group.add_argument("--labels", help="class names, one per line (default: the model's own)")
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
        labels=getattr(args, "labels", None),
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


def json_safe(obj):
    """``obj`` with every NaN or infinite number replaced by ``None`` (JSON has neither).

    In a dict, a replaced ``key`` gains ``key_note`` saying so, unless the dict already
    explains it with a ``key_note`` of its own.

    Examples
    --------
    >>> json_safe({"sanity": float("nan"), "curve": [1.0, float("inf")]})
    {'sanity': None, 'curve': [1.0, None], 'sanity_note': 'not a number (the computation is undefined here)'}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {k: json_safe(v) for k, v in obj.items()}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v) and f"{k}_note" not in obj:
                out[f"{k}_note"] = (
                    "not a number (the computation is undefined here)"
                    if math.isnan(v)
                    else "infinite"
                )
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def print_json(obj) -> None:
    """Write ``obj`` as indented, valid JSON on stdout (NaN and infinity become ``null``)."""
    sys.stdout.write(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------------
# Output files: checked before the work, written whole or not at all


def image_suffixes() -> frozenset[str]:
    """File suffixes Pillow can write (``.png``, ``.jpg``, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)


def figure_suffixes() -> frozenset[str]:
    """File suffixes matplotlib can write (``.png``, ``.pdf``, ``.svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return frozenset(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def check_output(
    text: str | os.PathLike,
    option: str,
    *,
    folder: bool = False,
    suffixes: Collection[str] | None = None,
) -> Path:
    """Check, before any work, that an output file (or ``folder``) can be written there.

    Nothing is created. The path must not be a folder (or, with ``folder``, a file), its
    suffix must be one of ``suffixes`` when given, and the closest existing folder
    above it must be a folder the user may write in.

    Raises
    ------
    CnnscopeError
        One line naming ``option`` and what is wrong.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> check_output(os.path.join(d, "new", "a.png"), "--out").name
    'a.png'
    >>> check_output(d, "--out")
    Traceback (most recent call last):
    ...
    cnnscope.errors.CnnscopeError: --out ... is a folder: give a file name
    """
    path = Path(text).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise CnnscopeError(f"{option} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise CnnscopeError(f"{option} {path} is a folder: give a file name")
    if not folder and suffixes is not None and path.suffix.lower() not in suffixes:
        usual = [
            s for s in (".png", ".jpg", ".webp", ".gif", ".tif", ".pdf", ".svg") if s in suffixes
        ]
        known = ", ".join(usual or sorted(suffixes)[:8])
        raise CnnscopeError(
            f"{option} {path}: cannot write {path.suffix or 'a file without a suffix'} files "
            f"(use e.g. {known})"
        )
    above = path if folder else path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise CnnscopeError(f"{option} {path}: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CnnscopeError(f"{option} {path}: permission denied")
    return path


@contextlib.contextmanager
def staged(path: str | os.PathLike, option: str = "output") -> Iterator[Path]:
    """Write ``path`` whole or not at all: yield where to write it, then move it in place.

    The yielded path has the same name, in a fresh hidden folder beside ``path``; every
    file the block writes there (a ``.vox`` and its ``.hd``, say) is moved beside
    ``path`` when the block ends without error, and removed otherwise. The folder of
    ``path`` is created if needed. A target that exists but is not a regular file (a
    device such as ``/dev/stdout``) is written directly.

    Raises
    ------
    CnnscopeError
        One line, when the folder cannot be created or the file cannot be written.

    Examples
    --------
    >>> d = Path(tempfile.mkdtemp())
    >>> with staged(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> sorted(p.name for p in d.iterdir()), (d / "a.txt").read_text()
    (['a.txt'], 'hello')
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        with _write_errors(path, option):
            yield path
        return
    with _write_errors(path, option):
        path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".cnnscope-", dir=path.parent))
    try:
        with _write_errors(path, option):
            yield stage / path.name
            for written in stage.iterdir():
                os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _write_errors(path: Path, option: str) -> Iterator[None]:
    """Turn a failed write into one :class:`CnnscopeError` line."""
    try:
        yield
    except OSError as exc:
        raise CnnscopeError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. Pillow or matplotlib: an unknown file format
        raise CnnscopeError(f"{option}: cannot write {path}: {exc}") from None
