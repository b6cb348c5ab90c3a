"""Pictures as files: safe file names and animated GIFs.

Every writer of output files names them through :func:`safe_file_name` and writes its
animations through :func:`save_gif`, so a layer or a model name becomes the same file
name everywhere, and every GIF is made the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CnnscopeError

__all__ = ["safe_file_name", "save_gif"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(text: str, fallback: str = "file", *, max_len: int | None = None) -> str:
    """``text`` as one file name: ASCII letters, digits, ``.``, ``_`` and ``-`` only.

    Each run of other characters becomes one ``_``; leading and trailing ``.`` and ``_``
    go (no hidden file, no ``..``), the result is cut to ``max_len`` characters, and
    ``fallback`` stands for a name with nothing left.

    Parameters
    ----------
    text : str
        A layer, unit, model or image name.
    fallback : str
        The name when nothing of ``text`` is left.
    max_len : int, optional
        The longest name returned.

    Examples
    --------
    >>> safe_file_name("blocks.4:7@2,3")
    'blocks.4_7_2_3'
    >>> safe_file_name("../../etc/passwd"), safe_file_name("//", "model")
    ('etc_passwd', 'model')
    >>> safe_file_name("torchvision:resnet18 (v1)", max_len=12)
    'torchvision_'
    """
    name = _UNSAFE.sub("_", str(text)).strip("._")
    if max_len is not None:
        name = name[:max_len]
    return name or fallback


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int) -> Path:
    """Write ``frames`` (H x W x 3 uint8 each) as an endlessly looping animated GIF.

    Frames of another size than the last are resized to it (bicubic). Each frame shows
    for ``duration_ms`` milliseconds; the folder of ``path`` is created.

    Examples
    --------
    >>> import tempfile, os
    >>> f = [np.zeros((8, 8, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    >>> p = save_gif(f, os.path.join(tempfile.mkdtemp(), "a.gif"), duration_ms=100)
    >>> im = Image.open(p)
    >>> im.n_frames, im.size, im.info["duration"]
    (2, (4, 4), 100)
    """
    if not frames:
        raise CnnscopeError("no frames to put in a GIF")
    last = np.asarray(frames[-1], dtype=np.uint8)
    size = (last.shape[1], last.shape[0])
    images = []
    for f in frames:
        image = Image.fromarray(np.asarray(f, dtype=np.uint8))
        images.append(image if image.size == size else image.resize(size, Image.Resampling.BICUBIC))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        p,
        save_all=True,
        append_images=images[1:],
        duration=int(duration_ms),
        loop=0,
        optimize=False,
        disposal=1,
    )
    return p
