"""Class graphs in the explorer: the graph folders it serves, and graphs it builds.

The graphs come from a folder of graph outputs (``cnnscope graph ... --out DIR/NAME``;
``cnnscope serve --graphs DIR``, by default ``DATA_DIR/graphs``). Every sub-folder (or
the folder itself) that :func:`cnnscope.graph.read_state` reads, made with the served
model, is offered; anything else there is skipped with one log line. A class with
several folders is served from the one that covers the most images.

The explorer also builds the graph of a class over the images it serves, on the
background lane (:class:`~cnnscope.server.background.BackgroundLane`): the gallery's
images (built-in photos, ``--gallery DIR``, uploads) copied into
``DATA_DIR/graph-images`` under their explorer ids, or the dataset index's source folder
when the index has one. The pass is one call of :func:`cnnscope.graph.build_graph` that
adds the new images to the saved sums and reports its progress to the lane, which stops it
at its next batch at shutdown (like the default index); checkpointed after every batch, it
goes on from there at the next build.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from ...errors import CnnscopeError
from ...graph import build_graph, class_graph, read_state
from ...graph.build import image_table
from ...index import Source, model_fingerprint
from ...index.bundle import IndexFormatError
from ...models import LoadedModel
from ..background import BackgroundLane, Task
from ..refs import ClassRef
from ..store import ImageRecord, ImageStore, NotFoundError
from ..store import _digest as content_id  # the store's ids: d-/u- + this

__all__ = ["GraphService", "SERVED_IMAGES", "covers"]

log = logging.getLogger(__name__)

#: Sub-folder of the data directory that holds copies of the served images for a build.
SERVED_IMAGES = "graph-images"


class GraphService:
    """The class graphs of the served model.

    Parameters
    ----------
    model, store, background
        The served model, its image store and the lane that runs the builds.
    graphs_dir
        The folder of graph outputs (created if missing); built graphs go there too.
    index
        The :class:`~cnnscope.server.services.index.IndexService`: a build uses the index's
        source folder when it has one.

    Examples
    --------
    >>> import tempfile
    >>> from cnnscope.models import load_model
    >>> from cnnscope.server.background import BackgroundLane
    >>> model = load_model()
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> lane = BackgroundLane(model)
    >>> GraphService(model, store, lane, store.data_dir / "graphs").available()
    []
    >>> lane.close()
    """

    def __init__(
        self,
        model: LoadedModel,
        store: ImageStore,
        background: BackgroundLane,
        graphs_dir: str | os.PathLike,
        index=None,
    ):
        self.model, self.store, self.background, self.index = model, store, background, index
        self.dir = Path(graphs_dir).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.images_dir = store.data_dir / SERVED_IMAGES
        self._fingerprint: str | None = None
        self._seen: dict[Path, tuple[int, dict | None]] = {}  # folder -> (mtime, meta)
        self._tasks: dict[int, Task] = {}
        self._digests: dict[tuple, str] = {}
        self._lock = threading.Lock()

    # -- the graph folders ---------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model.module)
        return self._fingerprint

    def _meta(self, folder: Path) -> dict | None:
        """The saved state's manifest of a graph folder of the served model, else None."""
        state = folder / "state.json"
        try:
            mtime = state.stat().st_mtime_ns
        except OSError:
            return None
        seen = self._seen.get(folder)
        if seen is not None and seen[0] == mtime:
            return seen[1]
        meta: dict | None = None
        try:
            meta = read_state(folder)[0]
            made = meta.get("model") or {}
            if made.get("name") != self.model.name or made.get("fingerprint") != self.fingerprint:
                log.info(
                    "skipping graph %s: made with another model (%s)", folder, made.get("name")
                )
                meta = None
        except (IndexFormatError, CnnscopeError, OSError, ValueError, KeyError) as exc:
            log.warning("skipping graph folder %s: %s", folder, " ".join(str(exc).split()))
            meta = None
        self._seen[folder] = (mtime, meta)
        return meta

    def folders(self) -> dict[int, tuple[Path, dict]]:
        """``{class index: (folder, manifest)}``: per class, the folder with most images."""
        candidates = [self.dir]
        with contextlib.suppress(OSError):
            candidates += sorted(p for p in self.dir.iterdir() if p.is_dir())
        best: dict[int, tuple[Path, dict]] = {}
        for folder in candidates:
            meta = self._meta(folder)
            if meta is None:
                continue
            t = int(meta["class"]["index"])
            if t not in best or _included(meta) > _included(best[t][1]):
                best[t] = (folder, meta)
        return best

    def available(self) -> list[dict]:
        """One summary per class that has a graph, by class index."""
        return [
            {**self.summary(folder, meta), "index": t, "label": self.model.label(t)}
            for t, (folder, meta) in sorted(self.folders().items())
        ]

    def summary(self, folder: Path, meta: dict) -> dict:
        """What a graph covers: folder, images, selection and the line the page shows."""
        images = meta.get("images", {})
        return {
            "folder": folder.name or str(folder),
            "images": _included(meta),
            "total": int(images.get("total", 0)),
            "select": str(meta.get("select", "all")),
            "covers": covers(meta, self.images_dir),
        }

    def folder_of(self, cls: ClassRef) -> tuple[Path, dict]:
        """The graph folder of a class, or a 404 that says how to get one."""
        found = self.folders().get(cls.index)
        if found is None:
            raise NotFoundError(
                f"no graph of class {cls.index} ({cls.label}) in {self.dir}: build one with "
                f"POST /api/graphs/{cls.index} (or cnnscope graph FOLDER --class {cls.index} "
                f"--out {self.dir}/NAME)"
            )
        return found

    def graph(self, cls: ClassRef, units: int, edges: int, min_share: float) -> dict:
        """The pruned graph of a class (``ClassGraph.to_dict()``) and what it covers."""
        folder, meta = self.folder_of(cls)
        try:
            data = class_graph(folder, units=units, edges=edges, min_share=min_share).to_dict()
        except IndexFormatError as exc:
            raise NotFoundError(f"the graph in {folder} cannot be read: {exc}") from None
        root = (meta.get("source") or {}).get("root")
        ids = self._explorer_ids(root, {ex["image"] for n in data["nodes"] for ex in n["examples"]})
        for node in data["nodes"]:
            for ex in node["examples"]:
                ex["image_id"] = ids.get(ex["image"])
        data["source"] = self.summary(folder, meta)
        return data

    def _explorer_ids(self, root: str | None, images: set[str]) -> dict[str, str]:
        """The explorer image id of each graph image that the store has."""
        out: dict[str, str] = {}
        if not root:
            return out
        base = Path(root)
        for rel in images:
            path = base / rel
            if base == self.images_dir:  # our copies are named by explorer id
                candidates = [path.stem]
            else:
                digest = self._digest(path)
                if digest is None:
                    continue
                candidates = [f"d-{digest}", f"u-{digest}"]
            for image_id in candidates:
                with contextlib.suppress(CnnscopeError):
                    out[rel] = self.store.get(image_id).id
                    break
        return out

    def open_example(self, cls: ClassRef, image: str) -> tuple[ImageRecord, bool]:
        """Add an image of a class graph's folder to the store (like an upload).

        Only an image the graph's table names, inside its source folder, is read.
        """
        folder, meta = self.folder_of(cls)
        root = (meta.get("source") or {}).get("root")
        try:
            ids = set(image_table(read_state(folder)[1]))
        except IndexFormatError as exc:
            raise NotFoundError(f"the graph in {folder} cannot be read: {exc}") from None
        if root is None or image not in ids:
            raise NotFoundError(f"{image[:200]!r} is not an image of the graph of {cls.label}")
        base = Path(root).resolve()
        path = (base / image).resolve()
        if base not in path.parents:
            raise NotFoundError(f"{image[:200]!r} is not an image of the graph of {cls.label}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NotFoundError(f"cannot read {image[:200]!r} in {base}: {exc.strerror}") from None
        return self.store.add(data, filename=path.name)

    def _digest(self, path: Path) -> str | None:
        """The store's digest of a file's bytes (cached by size and time), or None."""
        try:
            st = path.stat()
            key = (path, st.st_size, st.st_mtime_ns)
            if key not in self._digests:
                self._digests[key] = content_id(path.read_bytes())
            return self._digests[key]
        except OSError:
            return None

    # -- building ------------------------------------------------------------------------

    def build_state(self, cls: ClassRef) -> dict:
        """The state of the explorer's build of a class's graph."""
        task = self._tasks.get(cls.index)
        base = {"index": cls.index, "label": cls.label}
        if task is None:
            ready = cls.index in self.folders()
            detail = None if ready else "not built by this server: POST to build it"
            return {
                **base,
                "state": "done" if ready else "none",
                "done": 0,
                "total": 0,
                "detail": detail,
            }
        return {
            **base,
            "state": task.state,
            "done": task.done,
            "total": task.total,
            "detail": task.detail,
        }

    def start(self, cls: ClassRef, select: str) -> dict:
        """Queue the build of a class's graph over the served images (once at a time)."""
        with self._lock:
            task = self._tasks.get(cls.index)
            if task is None or task.state not in ("queued", "running"):
                name = f"class graph of {cls.label}"
                self._tasks[cls.index] = self.background.submit(name, self._job(cls, select))
        return self.build_state(cls)

    def _source_root(self) -> tuple[Path, bool]:
        """The folder a build reads, and whether it is the explorer's own copies."""
        index = getattr(self.index, "index", None)
        root = getattr(getattr(index, "source", None), "root", None)
        if root is not None and Path(root).is_dir():
            return Path(root), False
        return self.images_dir, True

    def _copy_served(self) -> None:
        """Copy every served image into ``images_dir`` as ``<id>.<ext>`` (once each)."""
        from ...images import load_gallery_image

        self.images_dir.mkdir(parents=True, exist_ok=True)
        for record in self.store.list():
            if record.path is None:
                target = self.images_dir / f"{record.id}.png"
                if not target.exists():
                    tmp = target.with_name(f".{target.name}.tmp")
                    load_gallery_image(record.id).save(tmp, format="PNG")
                    os.replace(tmp, target)
                continue
            target = self.images_dir / f"{record.id}{record.path.suffix.lower()}"
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.copyfile(record.path, tmp)
                os.replace(tmp, target)

    def _job(self, cls: ClassRef, select: str) -> Callable:
        out = self.dir / f"explorer-class-{cls.index}-{select}"

        def run(model: LoadedModel, progress: Callable[[int, int], None]):
            root, own = self._source_root()
            if own:
                self._copy_served()
            source = Source(root)
            total = len(source.scan(exclude=out))
            if not total:
                raise CnnscopeError(f"no images to build the graph from in {root}")
            progress(0, total)
            # the pass counts the images it adds; those already summed count as done.
            # workers=0: no DataLoader processes forked from this threaded server
            run = build_graph(
                model,
                source,
                cls.index,
                out=out,
                select=select,
                workers=0,
                checkpoint_every=1,
                progress=lambda done, todo: progress(max(0, total - todo + done), total),
            )
            if run.up_to_date:
                progress(total, total)
            log.info("class graph of %s built in %s", cls.label, out)
            return {"folder": str(out), "included": run.included}

        return run


def covers(meta: dict, own: Path | None = None) -> str:
    """One line: how many images of which folder a graph sums, and how they were chosen.

    ``own`` is the folder of the explorer's copies of its images (named as such).

    Examples
    --------
    >>> meta = {"class": {"label": "tabby, tabby cat"}, "images": {"included": 30},
    ...         "select": "predicted", "source": {"root": "/photos"}}
    >>> covers(meta)
    'from 30 images of /photos predicted as tabby: a small set gives a rough graph'
    """
    label = str(meta["class"]["label"]).split(",")[0]
    n = _included(meta)
    root = (meta.get("source") or {}).get("root")
    mine = own is not None and root is not None and Path(root) == own
    where = "the explorer's gallery (built-in photos, folder and uploads)" if mine else root
    how = (
        f"predicted as {label}"
        if meta.get("select") == "predicted"
        else f"scored for {label} (all of them, not only those predicted as it)"
    )
    line = f"from {n} image{'s' if n != 1 else ''} of {where} {how}"
    return line + (": a small set gives a rough graph" if n < 100 else "")


def _included(meta: dict) -> int:
    return int((meta.get("images") or {}).get("included", 0))
