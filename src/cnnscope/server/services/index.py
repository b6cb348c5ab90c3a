"""The dataset index of the served model: given, built in the background, or none.

Used by the units service (dataset examples) and by ``/api/index`` and ``/api/models``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ...models import LoadedModel
from ..background import BackgroundLane, Task
from ..store import NotFoundError

__all__ = ["IndexService"]

log = logging.getLogger(__name__)


class IndexService:
    """The model's dataset index, and how far the default one is built.

    Parameters
    ----------
    background
        The lane that builds the default index.
    index
        Path of a dataset index (``cnnscope index``); opened at once.
    default_index
        Without ``index``, build the gallery's default index in the background (once;
        kept in ``index_dir``) and use it when ready.
    index_dir
        Where the default index lives (default: the one ``cnnscope index`` builds).
    index_images
        A folder of the user's images to build the default index from instead of the
        gallery (``cnnscope serve --examples-from DIR``).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> IndexService(BackgroundLane(load_model())).state()["state"]  # doctest: +SKIP
    'none'
    """

    def __init__(
        self,
        background: BackgroundLane,
        index: str | None = None,
        *,
        default_index: bool = False,
        index_dir: str | os.PathLike | None = None,
        index_images: str | os.PathLike | None = None,
    ):
        self.path = index
        self.index = _open_index(index) if index else None
        self.task: Task | None = None
        if index is None and (default_index or index_images):
            self.task = background.submit(
                "default index", self._default_index(index_dir, index_images)
            )

    @property
    def available(self) -> bool:
        """Whether a dataset index is loaded (dataset examples per unit)."""
        return self.index is not None

    def _default_index(self, index_dir: str | os.PathLike | None, images=None) -> Callable:
        def build(model: LoadedModel, progress: Callable[[int, int], None]):
            from ...index import ensure_default_index

            # workers=0: no DataLoader processes forked from this threaded server (a fork
            # can inherit a held lock and hang); the gallery's pictures are made in memory
            path = ensure_default_index(
                model, index_dir, progress=progress, workers=0, source=images
            )
            self.index = _open_index(str(path))
            self.path = str(path)
            log.info("default dataset index ready: %s", path)
            return path

        return build

    def state(self) -> dict:
        """``{"state": "ready"|"building"|"failed"|"none", "done", "total", "detail"}``.

        ``done`` and ``total`` count images while the default index is being built.
        """
        task = self.task
        if self.index is not None:
            return {
                "state": "ready",
                "done": 0,
                "total": 0,
                "detail": self.path,
                **_index_summary(self.index),
            }
        if task is None:
            hint = (
                f"the index {self.path} could not be opened"
                if self.path
                else "start the server with --index INDEX (see cnnscope index)"
            )
            return {"state": "none", "done": 0, "total": 0, "detail": hint}
        state = {"queued": "building", "running": "building"}.get(task.state, task.state)
        if state == "done":  # finished but not opened: an index the package cannot read
            state = "failed"
        return {"state": state, "done": task.done, "total": task.total, "detail": task.detail}

    def loaded(self, what: str):
        """The loaded index, or a 404 that says why there is none (``what`` needs it)."""
        if self.index is not None:
            return self.index
        state = self.state()
        if state["state"] == "building":
            done, total = state["done"], state["total"]
            raise NotFoundError(
                f"index building: the dataset examples of {what} are ready when the "
                f"gallery index is ({done}/{total or '?'} images done)"
            )
        raise NotFoundError(f"no index: dataset examples of {what} need one ({state['detail']})")


def _index_summary(index) -> dict:
    """What an index covers, for the page to say plainly: images, photos, source, layers."""
    skipped = {s.get("image") for s in index.skipped}
    ids = [i for i in index.images if i not in skipped]
    root = index.source.root
    return {
        "images": len(ids),
        "photos": len({i.split("|")[0] for i in ids}),
        "source": "gallery" if root is None else str(root),
        "layers": list(index.layers),
    }


def _open_index(path: str):
    """Open a dataset index (a bad index is the user's error: one line, exit status 2)."""
    from ...index import open_index

    index = open_index(path)
    log.info("dataset examples from %s", index)
    return index
