"""What a unit responds to: dataset examples (from the index) and feature visualizations.

Used by :mod:`cnnscope.server.routers.units`. The example list comes from the index's
arrays; a patch is the example image cut to the unit's receptive field (in the side
pool, not on the model's worker); "open" stores the example image (augmentation
applied) like an upload, so that its tree can be explored from the example's position.
Feature visualizations render on the background lane. Every unit is a checked
reference (:class:`~cnnscope.server.refs.UnitRef`); URLs are built by the router.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ...engine import Unit
from ...errors import CnnscopeError
from ...models import LoadedModel
from ...render import png_bytes
from ...render.pictures import field_patch
from ...synthesis.api import QUICK_VISUALIZATION, unit_visualizations, visualization_stem
from ...tree import format_path
from ..background import Task, channels_last
from ..compute import Compute, Replica
from ..refs import UnitRef
from ..store import NotFoundError, TooLargeError
from .index import IndexService

__all__ = ["EXAMPLE_PATCH_SIDE", "QUICK_VISUALIZATION", "UnitService"]

#: Longest side of an example's patch PNG (small fields are scaled up by whole pixels).
EXAMPLE_PATCH_SIDE = 128


class UnitService:
    """Dataset examples and feature visualizations of units.

    Parameters
    ----------
    compute
        The compute core.
    index
        The dataset index (examples).
    vis_dir
        Where rendered feature visualizations are kept.
    synthesis_steps, synthesis_size
        Optimisation steps and picture size of a feature visualization.
    visualization_queue
        Most feature visualizations waiting in the background lane; asking for one more
        drops the oldest waiting one.
    visualization_watch_s
        A feature visualization nobody polled for this many seconds is dropped.
    """

    def __init__(
        self,
        compute: Compute,
        index: IndexService,
        vis_dir: Path,
        *,
        synthesis_steps: int = QUICK_VISUALIZATION["steps"],
        synthesis_size: int = QUICK_VISUALIZATION["size"],
        visualization_queue: int = 8,
        visualization_watch_s: float = 20.0,
    ):
        self.compute = compute
        self.index = index
        self._vis_dir = Path(vis_dir)
        self.synthesis_steps = int(synthesis_steps)
        self.synthesis_size = int(synthesis_size)
        self.visualization_queue = max(1, int(visualization_queue))
        self.visualization_watch_s = float(visualization_watch_s)
        self._vis_jobs: dict[str, Task] = {}  # unit -> its rendering in the background lane
        self._vis_lock = threading.Lock()

    #: Whether feature visualizations can be computed: always, since the synthesis
    #: package is part of cnnscope (``/api/models`` still says so, for old pages).
    synthesis_available = True

    # -- dataset examples ----------------------------------------------------------------

    def _indexed(self, unit: UnitRef):
        """``(index, unit)``: the loaded index and ``unit`` as a unit of it (404 if none)."""
        index = self.index.loaded(str(unit))
        try:
            return index, index.unit(Unit(unit.layer, unit.channel))
        except CnnscopeError as exc:
            raise NotFoundError(f"no examples of {unit} in the index: {exc}") from None

    async def examples(self, unit: UnitRef) -> bytes:
        """A unit's top dataset examples as PNG (404 while there is no index).

        The grid (:meth:`cnnscope.index.Index.grid`'s picture: image patches, then their
        reconstructions) is rendered on the slow lane and kept in memory: the server never
        writes into the index's folder, which may be read-only or shared.
        """
        index, _ = self._indexed(unit)
        channel = Unit(unit.layer, unit.channel)

        def compute(lane: Replica) -> bytes:
            from ...index.patches import render_grid

            patches = index.patches(channel, model=lane.model)
            return png_bytes(render_grid(patches, index.top_k))

        key = ("examples", index.fingerprint, str(channel))
        return await self.compute.call(key, compute, slow=True)

    async def _index_examples(self, unit: UnitRef):
        """``(index, channel, its examples)``; the index must be of this model."""
        core = self.compute
        index, indexed = self._indexed(unit)

        def same_model() -> bool:
            index.check_model(core.model)  # CnnscopeError (400): built with other weights
            return True

        await core.in_side_pool(("examples_model", index.fingerprint), same_model)
        examples = await core.in_side_pool(
            ("examples_of", index.fingerprint, str(indexed)), index.examples, indexed
        )
        return index, unit.at(None), examples

    async def _index_example(self, unit: UnitRef, rank: int):
        """``(index, channel, example)`` of ``rank`` (1 = strongest); 404 if none."""
        index, channel, examples = await self._index_examples(unit)
        n = len(examples)
        if not isinstance(rank, int) or not 1 <= rank <= n:
            if n == 0:
                raise NotFoundError(f"{channel} has no dataset examples in the index")
            raise NotFoundError(f"{channel} has {n} dataset examples: rank {rank} is not in 1-{n}")
        return index, channel, examples[rank - 1]

    @staticmethod
    def _example_name(example) -> str:
        """Display name of an example's image: the gallery name or the file name."""
        base = example.image
        if example.augmentation is not None:
            base = base[: -len(example.augmentation) - 1]  # drop "|recipe"
        return base.rsplit("/", 1)[-1]

    @staticmethod
    def _example_image(index, example, unit: UnitRef) -> Image.Image:
        """The example's RGB image, augmentation applied (runs in a thread)."""
        try:
            return index.load_image(example)
        except CnnscopeError as exc:
            raise NotFoundError(
                f"example {example.rank} of {unit}: its image {example.image!r} cannot be "
                f"read any more ({exc})"
            ) from None

    @staticmethod
    def _example_unit(channel: UnitRef, example) -> UnitRef:
        """The unit at the example's position (no position on a layer without maps)."""
        return channel.at(example.position if channel.spatial else None)

    async def example_list(self, unit: UnitRef) -> list[dict]:
        """A unit's top dataset examples, strongest first (404 while there is no index).

        Each is ``{rank, unit, image, id, augmentation, y, x, activation}``: ``unit`` is
        the unit at the example's position, ``image`` the display name (gallery name or
        file name), ``id`` the index's item id.
        """
        _, channel, examples = await self._index_examples(unit)
        out = []
        for ex in examples:
            value = float(ex.activation)
            out.append(
                {
                    "rank": ex.rank,
                    "unit": str(self._example_unit(channel, ex)),
                    "image": self._example_name(ex),
                    "id": ex.image,
                    "augmentation": ex.augmentation,
                    "y": int(ex.position[0]),
                    "x": int(ex.position[1]),
                    "activation": value if np.isfinite(value) else None,
                }
            )
        return out

    async def example_patch(self, unit: UnitRef, rank: int) -> bytes:
        """PNG of an example's image cut to the unit's receptive field at its position."""
        index, channel, ex = await self._index_example(unit, rank)

        def make() -> bytes:
            image = self._example_image(index, ex, channel)
            view = np.asarray(index.preprocessing.geometry(image), np.uint8)
            return png_bytes(field_patch(view, index.field_box(ex), EXAMPLE_PATCH_SIDE))

        key = ("example_patch", index.fingerprint, str(channel), rank)
        return await self.compute.in_side_pool(key, make)

    async def open_example(self, unit: UnitRef, rank: int) -> dict:
        """Put an example's image (augmentation applied) in the image store.

        Returns ``{"image": id, "name", "created", "unit", "path"}``: ``path`` is the tree
        path rooted at the unit at the example's position. An un-augmented photo of the
        built-in gallery is its gallery image; any other is stored as PNG under the hash
        of its bytes (``u-...``), named like ``chelsea crop45-3x3-r0c1``.
        """
        core = self.compute
        index, channel, ex = await self._index_example(unit, rank)
        root = self._example_unit(channel, ex)
        name = self._example_name(ex)
        if ex.augmentation:
            name = f"{name} ({ex.augmentation.replace('+', ' ')})"

        def store() -> tuple[str, str, bool]:
            if index.source.kind == "gallery" and ex.augmentation in (None, "full"):
                try:
                    record = core.store.get(self._example_name(ex))
                    if record.source == "builtin":
                        return record.id, record.name, False
                except CnnscopeError:
                    pass
            image = self._example_image(index, ex, channel)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            try:
                record, created = core.store.add(buf.getvalue(), filename=name)
            except TooLargeError as exc:
                raise TooLargeError(
                    f"example {rank} of {channel}: its image is too large to open ({exc})"
                ) from None
            return record.id, record.name, created

        image_id, stored_name, created = await core.off_loop(store)
        return {
            "image": image_id,
            "name": stored_name,
            "created": created,
            "unit": str(root),
            "path": format_path((root.unit,)),
        }

    # -- feature visualizations, rendered in the background ------------------------------

    def _vis_file(self, unit: UnitRef | Unit) -> Path | None:
        """The unit's rendered PNG: its job's, else the newest of its name in the cache."""
        unit = unit.unit if isinstance(unit, UnitRef) else unit
        task = self._vis_jobs.get(str(unit))
        if task is not None and task.state == "done" and Path(task.result).exists():
            return Path(task.result)
        found = sorted(
            self._vis_dir.glob(f"{visualization_stem(unit)}-{'?' * 16}.png"),
            key=lambda p: p.stat().st_mtime,
        )
        return found[-1] if found else None

    def visualization_state(self, unit: UnitRef) -> dict:
        """``{"unit", "state": "done"|"running"|"queued"|"failed"|"none", "progress", "detail"}``.

        Asking counts as waiting for it (see ``visualization_watch_s``). A rendering that
        was dropped is ``none`` again, with the reason as its detail: POST to queue it anew.
        """
        key = str(unit)
        task = self._vis_jobs.get(key)
        if task is not None:
            task.watch()
        if task is not None and task.state in ("queued", "running"):
            return {"unit": key, "state": task.state, "progress": task.progress, "detail": None}
        if self._vis_file(unit) is not None:
            return {"unit": key, "state": "done", "progress": 1.0, "detail": None}
        if task is not None and task.state in ("failed", "dropped"):
            state = "failed" if task.state == "failed" else "none"
            return {"unit": key, "state": state, "progress": 0.0, "detail": task.detail}
        return {"unit": key, "state": "none", "progress": 0.0, "detail": None}

    async def visualization(self, unit: UnitRef) -> bytes:
        """A unit's feature visualization PNG, if rendered (else 404 ``not computed yet``)."""
        state = self.visualization_state(unit)
        path = self._vis_file(unit) if state["state"] == "done" else None
        if path is not None:
            return await self.compute.off_loop(path.read_bytes)
        if state["state"] in ("queued", "running"):
            raise NotFoundError(
                f"not computed yet: rendering {state['unit']}, {state['progress']:.0%} done"
            )
        if state["state"] == "failed":
            raise NotFoundError(f"not computed yet: rendering failed: {state['detail']}")
        raise NotFoundError(
            f"not computed yet: POST to this URL to render {state['unit']} "
            f"({self.synthesis_steps} optimisation steps in the background)"
        )

    def start_visualization(self, unit: UnitRef) -> dict:
        """Queue the rendering of a unit's feature visualization (background lane, once).

        At most ``visualization_queue`` renderings wait: a new one drops the oldest waiting
        one, and one that nobody polls for ``visualization_watch_s`` seconds is dropped.
        """
        with self._vis_lock:  # sync routes run in a thread pool: one check-and-queue at once
            state = self.visualization_state(unit)
            if state["state"] in ("done", "running", "queued"):
                return state
            self._make_room_for_a_visualization()
            key = str(unit)
            self._vis_jobs.pop(key, None)  # the newest job goes last
            self._vis_jobs[key] = self.compute.background.submit(
                f"visualization of {key}",
                None,
                watch_s=self.visualization_watch_s,
                batch_key=("visualization", unit.layer),
                run_batch=self._render_visualizations,
                data=unit.unit,
            )
        return self.visualization_state(unit)

    def _make_room_for_a_visualization(self) -> None:
        """Drop waiting renderings (unwatched ones, then the oldest) so one more fits."""
        waiting = [t for t in self._vis_jobs.values() if t.state == "queued"]
        waiting.sort(key=lambda t: not t.unwatched)  # stable: unwatched first, then oldest
        reason = (
            f"dropped from the queue: newer feature visualizations were asked for "
            f"(at most {self.visualization_queue} wait)"
        )
        for task in waiting[: max(0, len(waiting) - self.visualization_queue + 1)]:
            self.compute.background.drop(task, reason)
        finished = [key for key, t in self._vis_jobs.items() if t.finished.is_set()]
        for key in finished[: max(0, len(finished) - 256)]:  # keep the table bounded
            del self._vis_jobs[key]

    def _render_visualizations(
        self, model: LoadedModel, tasks: list[Task], progress: Callable[[int, int], None]
    ) -> list[Path]:
        """Render the units of ``tasks`` (one layer) in one batch, on the lane's model copy."""
        with channels_last(model.module):
            return unit_visualizations(
                model,
                [task.data for task in tasks],
                self._vis_dir,
                steps=self.synthesis_steps,
                size=self.synthesis_size,
                progress=progress,
            )
