"""Writing a run's results: pictures, a JSON record beside each, frames, a GIF, pixel plots."""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from collections.abc import Sequence, Set
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CnnscopeError
from .loop import SynthesisResult

__all__ = ["run_record", "save_gif", "save_result", "write_png", "write_with_record"]

log = logging.getLogger(__name__)


def write_png(array: np.ndarray, path: str | Path) -> Path:
    """Save an H x W x 3 uint8 array as an image (format from the suffix, PNG by default)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB").save(p)
    except (OSError, ValueError) as exc:
        raise CnnscopeError(f"cannot write {p}: {exc}") from None
    return p


def write_with_record(path: Path, picture: np.ndarray, record: dict) -> None:
    """``path`` (a PNG) and its JSON record beside it; a reader never sees half a PNG.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.png"
    >>> write_with_record(p, np.zeros((4, 4, 3), np.uint8), {"unit": "x:1"})
    >>> sorted(f.name for f in p.parent.iterdir())
    ['a.json', 'a.png']
    """
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        write_png(picture, tmp)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_record(result: SynthesisResult, model, index: int = 0, extra: dict | None = None) -> dict:
    """Everything needed to reproduce picture ``index`` of ``result`` exactly.

    Rerun ``config`` with the same model, device and thread count (``cnnscope dream
    --config FILE``) and take picture ``index``.
    """
    from .. import __version__

    cfg = model.preprocess_config
    record = {
        "cnnscope": __version__,
        "kind": "synthesis",
        "model": {
            "name": getattr(model, "name", "?"),
            "input_size": list(cfg.input_size),
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "scale": cfg.scale,
        },
        "device": str(next(model.module.parameters()).device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "index": index,
        "objective": result.objective,
        "final_objective": result.values[-1][index] if result.values else None,
        "sizes": [list(s) for s in result.sizes],
        "seconds": round(result.seconds, 3),
        "config": result.config.to_dict(),
    }
    if extra:
        record.update(extra)
    return record


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 120) -> Path:
    """An animated GIF of ``frames`` (each resized to the last frame's size).

    Examples
    --------
    >>> import tempfile, os
    >>> f = [np.zeros((8, 8, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    >>> p = save_gif(f, os.path.join(tempfile.mkdtemp(), "a.gif"))
    >>> Image.open(p).n_frames
    2
    """
    if not frames:
        raise CnnscopeError("no frames to put in a GIF (set output_iter > 0)")
    last = frames[-1]
    size = (last.shape[1], last.shape[0])
    images = [
        Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)
        if f.shape[:2] != last.shape[:2]
        else Image.fromarray(f)
        for f in frames
    ]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(p, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return p


def _plot_pixels(history: list[list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = np.asarray(history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [
        f"({y},{x}) {c}" for y, x in ((100, 100), (200, 200), (100, 200), (200, 100)) for c in "RGB"
    ]
    for i in range(data.shape[1]):
        ax.plot(data[:, i], lw=0.8, label=labels[i])
    ax.set_xlabel("step")
    ax.set_ylabel("pixel value (minus mean colour)")
    ax.legend(fontsize=5, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_result(
    result: SynthesisResult,
    model,
    output_file: str | Path,
    *,
    behaviors: Set[str] = frozenset(),
    names: Sequence[str] | None = None,
    extra: dict | None = None,
) -> list[Path]:
    """Write the final picture(s) with a JSON record beside each, plus frames, GIF, plots.

    With one picture it goes to ``output_file``; with several, to
    ``STEM_NAME.SUFFIX`` (``names`` default to the index). ``behaviors``: ``save``
    writes each frame (snapshot) as ``STEM_SIZE_STEP.SUFFIX`` (as cnn-vis;
    ``STEM_NAME_SIZE_STEP.SUFFIX`` with several pictures), ``gif`` writes ``STEM.gif``
    (``STEM_NAME.gif``), ``plot_pix`` writes ``STEM_pixels.png``.

    Returns
    -------
    list of pathlib.Path
        The final pictures written.
    """
    out = Path(output_file)
    suffix = out.suffix or ".png"
    stem = out.with_suffix("")
    n = len(result.pictures)
    written = []
    for i, pic in enumerate(result.pictures):
        if n == 1:
            path = out if out.suffix else out.with_suffix(suffix)
        else:
            label = names[i] if names else str(i)
            path = stem.parent / f"{stem.name}_{_safe(label)}{suffix}"
        write_png(pic, path)
        record = run_record(result, model, i, extra)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        written.append(path)
    tags = [f"_{_safe(names[i] if names else str(i))}" if n > 1 else "" for i in range(n)]
    if "save" in behaviors:
        for si, step, batch in result.frames:
            for i, pic in enumerate(batch):
                write_png(pic, stem.parent / f"{stem.name}{tags[i]}_{si + 1}_{step}{suffix}")
    if "gif" in behaviors and result.frames:
        for i, tag in enumerate(tags):
            save_gif(
                [b[i] for _, _, b in result.frames] + [result.pictures[i]],
                stem.parent / f"{stem.name}{tag}.gif",
            )
    if "plot_pix" in behaviors and result.pixel_history:
        _plot_pixels(result.pixel_history, stem.parent / f"{stem.name}_pixels.png")
    log.info("wrote %s", ", ".join(map(str, written)))
    return written


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
