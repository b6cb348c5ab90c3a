"""The default index: the built-in gallery with augmentations, built on first use."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..engine import model_fingerprint
from ..render import safe_file_name
from .build import DEFAULT_TOP_K, default_layers, run_build

__all__ = ["default_data_dir", "default_index_path", "ensure_default_index"]


def default_data_dir() -> Path:
    """``$CNNSCOPE_DATA_DIR``, else ``~/.cache/cnnscope``.

    Examples
    --------
    >>> default_data_dir().name in ("cnnscope", os.environ.get("CNNSCOPE_DATA_DIR", "x")[-8:])
    True
    """
    env = os.environ.get("CNNSCOPE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnscope"


def default_index_path(
    model, data_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None
) -> Path:
    """Where the default index of ``model`` lives: one per model, weights and ``source``
    (the built-in gallery when None, else that folder of images).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> default_index_path(load_model(), "/tmp/data").parent
    PosixPath('/tmp/data/indexes')
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    name = safe_file_name(model.name, "model", max_len=60)
    what = "gallery"
    if source is not None:
        folder = Path(source).expanduser().resolve()
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
        what = f"{safe_file_name(folder.name, 'folder', max_len=40)}-{digest}"
    return root / "indexes" / f"{name}-{model_fingerprint(model.module)[:12]}-{what}"


def ensure_default_index(
    model,
    data_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    layers: list[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    source: str | os.PathLike | None = None,
    **options,
) -> Path:
    """Build the default index of ``model`` unless it exists; return its folder.

    The default index covers the built-in gallery with its augmentations (flips, crops
    and scales: :data:`~cnnscope.index.sources.AUGMENTATIONS`) for the model's default
    layers. An interrupted build is resumed; a concurrent build by another process is
    waited for. When the index exists this only checks it (well under a second).

    Parameters
    ----------
    model : LoadedModel
    data_dir : path, optional
        The explorer's data folder (default :func:`default_data_dir`).
    progress : callable, optional
        Called as ``progress(done_images, total_images)`` after every batch.
    source : path, optional
        A folder of the user's own images to index instead of the gallery (as they are,
        without augmentations); ``cnnscope serve --examples-from DIR``.
    layers, top_k, **options
        Passed to :func:`~cnnscope.index.build_index`.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> path = ensure_default_index(load_model(), "/tmp/data",
    ...                             progress=lambda d, n: print(d, n))  # doctest: +SKIP
    32 240
    ...
    """
    from ..models import builtin_name

    path = default_index_path(model, data_dir, source)
    options.setdefault("wait_lock", True)
    spec = {"model": model.name, "weights": None} if builtin_name(model.name) else None
    return run_build(
        model,
        None if source is None else str(source),
        layers or default_layers(model),
        top_k=top_k,
        out=path,
        augment=source is None,
        progress=progress,
        model_spec=options.pop("model_spec", None) or spec,
        **options,
    ).path
