"""One rank's run of an index build: plan, pass over the images, checkpoints, commit.

:class:`BuildRun` is what :func:`~cnnscope.index.run_build` starts once the settings are
checked. Rank 0 scans the source and decides what to process (extending an existing
index where its settings match); every rank processes its share of the batches,
checkpointing as it goes so that a killed run resumes; rank 0 merges the ranks' top k
with the existing index's and writes the new index at once.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import crash_point
from ..engine import Engine, recorded_layers, strengths
from ..errors import CnnscopeError
from .bundle import MANIFEST, VERSION, IndexFormatError, write_bundle
from .checkpoint import read_checkpoint, write_checkpoint
from .folder import CHECKPOINT_DIR, GRID_DIR
from .loader import Collate, Images
from .merge import RunningTopK, decode, gather_states
from .plan import DEFAULT_BATCH_SIZE, plan_images, scan_source, shared_plan
from .sources import Item, Source
from .validate import encode_ids, read_index

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What a build did.

    Attributes
    ----------
    path : Path
        The index folder.
    processed : int
        Images indexed by this run (all ranks).
    reused : int
        Images taken over from the existing index (incremental run).
    skipped : list of dict
        Unreadable images of this run: ``{"image": id, "reason": text}``.
    total : int
        Images in the index now.
    up_to_date : bool
        Nothing had to be done.
    """

    path: Path
    processed: int = 0
    reused: int = 0
    skipped: list = field(default_factory=list)
    total: int = 0
    up_to_date: bool = False


@torch.no_grad()
def offer_batch(
    engine: Engine,
    layers: Sequence[str],
    state: RunningTopK,
    x: torch.Tensor,
    n: int,
    numbers: torch.Tensor,
) -> None:
    """Forward one padded batch and offer the first ``n`` images to the running top k.

    ``numbers`` are the images' numbers in the index's table. Each unit's candidate is its
    strength and position (:func:`cnnscope.engine.strengths`: for an activation layer the
    maximum of its pre-activation, so that ReLU6 units do not all tie at 6).
    """
    recorded = recorded_layers(engine, layers, (int(x.shape[-2]), int(x.shape[-1])), x.shape[1])
    fwd = engine.forward(x, cache=False, layers=recorded, grad=False)
    numbers = numbers.to(state.device)
    for name in layers:
        values, pos = strengths(fwd, name)
        state.update(name, values[:n], pos[:n], numbers)


@dataclass
class BuildRun:
    """One build run (one rank of it), with settings that :func:`~.build.run_build` checked.

    ``entries`` are the layers' manifest entries, ``config`` the settings the manifest
    records and ``config_key`` their hash; ``rank`` of ``world`` processes.
    """

    model: Any
    engine: Engine
    src: Source
    entries: list[dict]
    config: dict
    config_key: str
    out: Path
    top_k: int
    batch_size: int | None
    workers: int | None
    checkpoint_every: int
    progress: Callable[[int, int], None] | None
    model_spec: dict | None
    rebuild: bool
    show_progress: bool | None
    rank: int
    world: int

    def __post_init__(self) -> None:
        self.size = tuple(self.model.preprocess_config.input_size)
        self.names = [e["name"] for e in self.entries]
        self.widths = {
            e["name"]: (e["shape"][2] if len(e["shape"]) == 3 else 1) for e in self.entries
        }
        self.device = self.engine.device

    # -- the plan -----------------------------------------------------------------------

    def _base(self, items: list[Item]):
        """The existing index at ``out`` if it can be extended, else None."""
        if self.rebuild or not (self.out / MANIFEST).is_file():
            return None
        try:
            meta, arrays, ids = read_index(self.out)
        except IndexFormatError as exc:
            log.warning("rebuilding %s: the index there is unreadable (%s)", self.out, exc)
            return None
        if meta.get("version") != VERSION:
            log.warning(
                "rebuilding %s: it has index format %s, this cnnscope writes %s",
                self.out,
                meta.get("version"),
                VERSION,
            )
            return None
        if meta.get("config_key") != self.config_key:
            log.warning("rebuilding %s: it was built with other settings", self.out)
            return None
        current = {it.id: it for it in items}
        for i, image_id in enumerate(ids):
            if arrays["image_status"][i] != 1:
                continue
            it = current.get(image_id)
            if it is None or (it.size, it.mtime_ns) != (
                int(arrays["image_size"][i]),
                int(arrays["image_mtime_ns"][i]),
            ):
                log.warning(
                    "rebuilding %s: indexed image %s was changed or removed", self.out, image_id
                )
                return None
        if self.batch_size is None:
            self.batch_size = int(meta.get("batch_size", DEFAULT_BATCH_SIZE))
        elif int(meta.get("batch_size", 0)) != int(self.batch_size):
            log.warning(
                "batch size %s differs from the index's %s: new images may differ from a full "
                "rebuild in the last bits",
                self.batch_size,
                meta.get("batch_size"),
            )
        return meta, arrays, ids

    def _plan(self) -> dict:
        """Scan the source and decide what to process (rank 0; broadcast to the others)."""
        items = scan_source(self.src, self.out)
        base = self._base(items)
        return plan_images(items, base, self.config_key, self.batch_size, self.world)

    def _shared_plan(self) -> dict:
        return shared_plan(self._plan, self.rank, self.world)

    def run(self) -> BuildResult:
        plan = self._shared_plan()
        items, pending, bs = plan["items"], plan["pending"], plan["batch_size"]
        self.batch_size = bs
        if plan["up_to_date"]:
            log.info("index %s is up to date", self.out)
            if self.rank == 0:
                shutil.rmtree(self.out / CHECKPOINT_DIR, ignore_errors=True)
            return BuildResult(self.out, reused=len(items), total=len(items), up_to_date=True)
        n_batches = math.ceil(len(pending) / bs)
        lo, hi = self.rank * n_batches // self.world, (self.rank + 1) * n_batches // self.world
        channels = {e["name"]: e["channels"] for e in self.entries}
        state = RunningTopK(channels, self.top_k, self.device)
        done, skipped = self._resume(plan["plan_key"], state, hi - lo, items)
        batches = [pending[b * bs : (b + 1) * bs].tolist() for b in range(lo + done, hi)]
        error = None
        try:
            self._process(items, batches, state, done, skipped, plan["plan_key"], (lo, hi))
        except CnnscopeError as exc:
            if self.world == 1:
                raise
            error = str(exc)
        return self._finish(plan, state, skipped, error)

    # -- checkpoints --------------------------------------------------------------------

    def _resume(self, plan_key: str, state: RunningTopK, total: int, items) -> tuple[int, list]:
        """Load this rank's checkpoint of the same plan: ``(batches done, skipped so far)``."""
        if self.rebuild:
            return 0, []

        def check(loaded: RunningTopK, _skipped: list) -> None:
            self._check_state(loaded, len(items))

        return read_checkpoint(
            self.out, self.rank, self.world, plan_key, total, state, items, check
        )

    def _check_state(self, state: RunningTopK, n_items: int) -> None:
        """Raise ValueError unless a loaded state names only images (of ``n_items``) and
        positions of the plan."""
        for entry in self.entries:
            images = decode(state.keys[entry["name"]])[1]
            pos = state.pos[entry["name"]]
            if (
                images.max() >= n_items
                or pos.min() < -1
                or pos.max() >= math.prod(entry["shape"][1:])
            ):
                raise ValueError(
                    f"its state of {entry['name']} names images or positions out of range"
                )

    def _checkpoint(self, plan_key, state, done, skipped, span) -> None:
        # the processed files: this rank's first `batches_done` batches of the plan
        write_checkpoint(
            self.out,
            self.rank,
            self.world,
            plan_key,
            self.batch_size,
            done,
            skipped,
            state,
            batches=list(span),
        )

    # -- the pass -----------------------------------------------------------------------

    def _workers(self) -> int:
        if self.workers is not None:
            if int(self.workers) < 0:
                raise CnnscopeError(f"--workers must be >= 0, got {self.workers}")
            return int(self.workers)
        return min(8, (os.cpu_count() or 2) // 2)

    def _process(self, items, batches, state, done, skipped, plan_key, span) -> None:
        if not batches:
            return
        flat = [i for batch in batches for i in batch]
        where = {i: p for p, i in enumerate(flat)}  # table number -> dataset position
        dataset = Images(self.src, [items[i] for i in flat], self.model.preprocess_config)
        sampler = [[where[i] for i in batch] for batch in batches]
        workers = self._workers()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=Collate(int(self.batch_size or DEFAULT_BATCH_SIZE), self.size),
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        total = len(flat)
        show = bool(self.show_progress) and self.rank == 0
        seen = 0
        with tqdm(total=total, unit="img", desc="indexing", disable=not show) as bar:
            for b, (good, x, errors) in enumerate(loader):
                for p, reason in errors:
                    skipped.append({"image": items[flat[p]].id, "reason": reason})
                    log.warning("skipping %s: %s", items[flat[p]].id, reason)
                if len(good):
                    numbers = torch.as_tensor([flat[p] for p in good.tolist()], dtype=torch.int64)
                    self._offer(state, x, len(good), numbers)
                done += 1
                seen += len(batches[b])
                bar.update(len(batches[b]))
                if self.progress is not None and self.rank == 0:
                    self.progress(seen, total)
                if done % self.checkpoint_every == 0 or b == len(batches) - 1:
                    self._checkpoint(plan_key, state, done, skipped, span)

    def _offer(self, state: RunningTopK, x: torch.Tensor, n: int, numbers: torch.Tensor) -> None:
        offer_batch(
            self.engine, self.names, state, x.to(self.device, non_blocking=True), n, numbers
        )

    # -- the end ------------------------------------------------------------------------

    def _finish(self, plan, state, skipped, error) -> BuildResult:
        partials = [(state.state_arrays(), (skipped, error))]
        if self.world > 1:
            gathered = gather_states(state, (skipped, error))
            if gathered is None:  # not rank 0
                torch.distributed.barrier()
                if error:
                    raise CnnscopeError(error)
                return BuildResult(self.out)
            partials = gathered
        try:
            errors = [extra[1] for _, extra in partials if extra[1]]
            if errors:
                raise CnnscopeError(errors[0])
            result = self._merge_and_commit(plan, state, partials)
        finally:
            if self.world > 1:
                torch.distributed.barrier()
        return result

    def _merge_and_commit(self, plan, state, partials) -> BuildResult:
        items, status, reasons = plan["items"], plan["status"].copy(), dict(plan["reasons"])
        table = [it.id for it in items]
        merged = RunningTopK(state.channels, state.k, "cpu")
        new_skipped = []
        for arrays, (skip, _) in partials:
            part = RunningTopK(state.channels, state.k, "cpu")
            part.load_state_arrays(arrays)
            merged.merge(part)
            new_skipped += skip
        status[plan["pending"]] = 1
        number = {image_id: i for i, image_id in enumerate(table)}
        for s in new_skipped:
            status[number[s["image"]]] = 0
            reasons[number[s["image"]]] = s["reason"]
        n_processed = len(plan["pending"]) - len(new_skipped)
        reused = 0
        if plan["base"] is not None:
            _, barrays, _ = plan["base"]
            old = RunningTopK(state.channels, state.k, "cpu")
            for i, name in enumerate(self.names):
                fields = {f: barrays[f"L{i}_{f}"] for f in ("activation", "image", "y", "x")}
                old.load_arrays(name, fields, self.widths[name], remap=plan["remap"])
            merged.merge(old)
            reused = int(np.count_nonzero(plan["remap"] >= 0))
        self._commit(items, status, reasons, merged, n_processed, len(new_skipped), reused)
        log.info(
            "indexed %d images (%d reused, %d skipped) into %s",
            n_processed,
            reused,
            len(new_skipped),
            self.out,
        )
        return BuildResult(
            self.out,
            processed=n_processed,
            reused=reused,
            skipped=sorted(new_skipped, key=lambda s: s["image"]),
            total=len(table),
        )

    def _commit(self, items, status, reasons, merged, n_processed, n_skipped, reused) -> None:
        table = [it.id for it in items]
        arrays = {
            "image_ids": encode_ids(table),
            "image_size": np.asarray([it.size for it in items], np.int64),
            "image_mtime_ns": np.asarray([it.mtime_ns for it in items], np.int64),
            "image_status": status.astype(np.int8),
        }
        for i, name in enumerate(self.names):
            for f, arr in merged.arrays(name, self.widths[name]).items():
                arrays[f"L{i}_{f}"] = arr
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta = {
            **self.config,
            "config_key": self.config_key,
            "model": {**self.config["model"], "spec": self.model_spec},
            "batch_size": self.batch_size,
            "images": {
                "total": len(table),
                "indexed": int((status == 1).sum()),
                "skipped": int((status == 0).sum()),
            },
            "skipped": [{"image": table[i], "reason": reasons[i]} for i in sorted(reasons)],
            "last_run": {
                "processed": n_processed,
                "skipped": n_skipped,
                "reused": reused,
                "world_size": self.world,
                "finished": now,
            },
            "complete": True,
        }
        write_bundle(self.out, "index", meta, arrays, arrays_prefix="topk", kill_point="commit")
        shutil.rmtree(self.out / GRID_DIR, ignore_errors=True)  # cached grids are stale now
        shutil.rmtree(self.out / CHECKPOINT_DIR, ignore_errors=True)
        crash_point("committed")
