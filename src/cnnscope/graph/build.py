"""The class-graph pass: stream a folder through the model, add up one class's graph.

It is the index's pass with other sums (:mod:`cnnscope.graph.aggregate`): the same
sources, padded batches, lock, checkpoints, ``torchrun`` sharding and incremental
updates (:mod:`cnnscope.index.build`), and the same bundle format on disk
(:mod:`cnnscope.index.bundle`): ``state.json`` names ``sums-<digest>.npz``; checkpoints
are ``.building/rank<R>.json``. Memory is the sums (``O(units + pairs of units)``) and
the examples (``O(units x k)``), independent of the number of images. The sums are
integers (:mod:`cnnscope.graph.sums`), so a resumed, incremental or ``N``-process pass
gives bitwise the totals of one uninterrupted pass.
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

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import crash_point, remove_stale_temps
from ..engine import LOGITS, Engine
from ..engine.rules import check_rule
from ..errors import CnnscopeError, UnknownLayerError
from ..index import Source, model_fingerprint
from ..index.build import preprocessing_record  # the index's streaming machinery, shared
from ..index.bundle import IndexFormatError, read_bundle, write_bundle
from ..index.checkpoint import read_checkpoint, write_checkpoint
from ..index.distributed import rank_and_world
from ..index.folder import CHECKPOINT_DIR, build_folder, check_out
from ..index.loader import Collate, Images
from ..index.plan import DEFAULT_BATCH_SIZE, config_hash, plan_images, scan_source, shared_plan
from ..index.validate import MAX_TOP_K, encode_ids
from ..models import as_loaded
from .aggregate import GraphState, batch_terms, sum_shapes

__all__ = ["FORMAT", "SELECTIONS", "VERSION", "GraphRun", "build_graph", "chain_layers"]

log = logging.getLogger(__name__)

#: Value of ``state.json``'s ``format`` field, and its layout version.
FORMAT = "cnnscope-graph"
VERSION = 1
#: ``all``: every image of the folder; ``predicted``: those the model predicts as the class.
SELECTIONS = ("all", "predicted")
STATE = "state"
#: What ``cnnscope graph`` writes next to the state, and the name of what is built.
OUTPUTS = ("graph.json", "graph.png", "graph.html")
WHAT = "class graph"


@dataclass
class GraphRun:
    """What a pass did: ``processed`` images this run (all ranks), ``reused`` from the
    saved graph, ``skipped`` unreadable ones (``{"image", "reason"}``), ``total`` in the
    folder, ``included`` in the class's sums, ``up_to_date`` when nothing was to do."""

    path: Path
    processed: int = 0
    reused: int = 0
    skipped: list = field(default_factory=list)
    total: int = 0
    included: int = 0
    up_to_date: bool = False


def chain_layers(model, engine: Engine, layers: Sequence[str] | None = None) -> list[dict]:
    """The graph's layers, top first: ``[{"name", "channels", "shape"}]``.

    By default the model's ``default_chain`` without the logits.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> m = load_model()
    >>> [e["name"] for e in chain_layers(m, Engine.for_module(m.module))][:2]
    ['head_act', 'blocks.15.expand_act']
    """
    size = tuple(model.preprocess_config.input_size)
    names = list(layers) if layers else list(model.default_chain)
    infos = {info.name: info for info in engine.layers(size)}
    order = {name: i for i, name in enumerate(infos)}
    skip = {LOGITS, model.logits_layer}
    out: dict[str, dict] = {}
    for name in names:
        if name in skip:
            continue
        canonical = engine.resolve(str(name).strip(), size)
        if canonical in (LOGITS, "input", model.logits_layer):
            continue
        shape = infos[canonical].shape
        if len(shape) not in (1, 3):
            raise UnknownLayerError(
                f"layer {canonical!r} has shape {list(shape)}: a graph needs layers with channels"
            )
        out[canonical] = {"name": canonical, "channels": int(shape[0]), "shape": list(shape)}
    if not out:
        raise CnnscopeError("no layers for the graph: give at least one layer below the logits")
    return sorted(out.values(), key=lambda e: -order[e["name"]])


def build_graph(
    model,
    source,
    target: str | int,
    *,
    out: str | os.PathLike,
    layers: Sequence[str] | None = None,
    select: str = "all",
    edge_k: int = 2,
    examples: int = 8,
    rule: str = "gradient",
    batch_size: int | None = None,
    workers: int | None = 0,
    checkpoint_every: int = 10,
    progress: Callable[[int, int], None] | None = None,
    rebuild: bool = False,
    show_progress: bool = False,
) -> GraphRun:
    """Add up the class graph of ``target`` over a folder of images, into ``out``.

    Parameters
    ----------
    model : LoadedModel
        The model, on the device to use.
    source : folder or Source
        The images (scanned recursively).
    target : str or int
        The class, by index or name (:meth:`~cnnscope.models.LoadedModel.class_index`).
    out : path
        The graph folder: an interrupted pass there is resumed, a finished one updated
        with the new images only.
    layers : list of str, optional
        Chain layers (default: the model's ``default_chain`` without the logits).
    select : {"all", "predicted"}
        Sum every image, or only those whose top class is ``target``.
    edge_k : int
        Per image, how many of each layer's most influential units get their edges to
        the layer below computed (Summit's per-image top k; bounds the cost).
    examples : int
        Top images kept per unit.
    rule : str
        Backward rule of the gradients (``gradient``: the true gradient).
    batch_size, workers, checkpoint_every, rebuild, show_progress
        As for :func:`cnnscope.index.build_index` (workers default 0 here).
    progress : callable, optional
        Called as ``progress(done, total)`` after every batch (on rank 0), once the
        batch is checkpointed if it is due: images of this run done so far, and to do
        (those of a resumed checkpoint and of the saved graph are not counted). An
        exception it raises stops the pass there; the next pass resumes from the last
        checkpoint (how the explorer's background lane stops a build).

    Returns
    -------
    GraphRun

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> run = build_graph(load_model(), "photos/", "tabby", out="tabby.graph")  # doctest: +SKIP
    >>> run.included  # doctest: +SKIP
    120
    """
    model = as_loaded(model)
    check_rule(rule)
    if select not in SELECTIONS:
        raise CnnscopeError(f"unknown selection {select!r}: choose one of {', '.join(SELECTIONS)}")
    for option, value, low in (
        ("--edge-k", edge_k, 1),
        ("--examples", examples, 1),
        ("--checkpoint-every", checkpoint_every, 1),
    ):
        if int(value) < low:
            raise CnnscopeError(f"{option} must be at least {low}, got {value}")
    if int(examples) > MAX_TOP_K:
        raise CnnscopeError(f"--examples must be at most {MAX_TOP_K}, got {examples}")
    if batch_size is not None and not 1 <= int(batch_size) <= 65_536:
        raise CnnscopeError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise CnnscopeError(f"--workers must be >= 0, got {workers}")
    if model.preprocess_config.resize == "none":
        raise CnnscopeError(
            "a graph needs one input size for every image: use --resize resize_crop"
        )
    src = source if isinstance(source, Source) else Source(source)
    if src.root is None:
        raise CnnscopeError("give a folder of images")
    t = model.class_index(target)
    engine = Engine.for_module(model.module)
    chain = chain_layers(model, engine, layers)
    out = Path(out).expanduser().resolve()
    check_out(out, WHAT, f"{STATE}.json", OUTPUTS, "sums-")
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.name, "fingerprint": model_fingerprint(model.module)},
        "preprocessing": preprocessing_record(model.preprocess_config),
        "source": src.describe(),
        "class": {"index": t, "label": model.label(t)},
        "select": select,
        "rule": rule,
        "edge_k": int(edge_k),
        "examples": int(examples),
        "layers": chain,
    }
    rank, world = rank_and_world()
    with build_folder(out, False, rank, WHAT):
        if rank == 0:
            remove_stale_temps(out)
        remove_stale_temps(out / CHECKPOINT_DIR, prefix=f"rank{rank}")
        return _Pass(
            model,
            engine,
            src,
            config,
            out,
            rank,
            world,
            batch_size=batch_size,
            workers=0 if workers is None else int(workers),
            checkpoint_every=int(checkpoint_every),
            progress=progress,
            rebuild=bool(rebuild),
            show_progress=bool(show_progress),
        ).run()


def read_state(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The saved state bundle of a graph folder (``IndexFormatError`` if there is none)."""
    meta, arrays = read_bundle(Path(folder), STATE, expect=_expected)
    n = len(arrays["image_size"])
    if any(len(arrays[f]) != n for f in ("image_mtime_ns", "image_status")) or any(
        int(arrays[f"X{i}.image"].max(initial=-1)) >= n for i in range(len(meta["layers"]))
    ):
        raise IndexFormatError(f"{folder}: its arrays do not agree (damaged graph)")
    return meta, arrays


def _expected(meta: dict) -> dict[str, tuple]:
    """The dtype and shape of every array of a graph's state, from its manifest."""
    if meta.get("format") != FORMAT:
        raise IndexFormatError("it is not a cnnscope graph")
    try:
        if int(meta.get("version", 0)) > VERSION:
            raise IndexFormatError(
                f"it has graph format {meta['version']}, newer than this cnnscope"
            )
        channels = [int(e["channels"]) for e in meta["layers"]]
        k = int(meta["examples"])
    except (KeyError, TypeError, ValueError):
        raise IndexFormatError("its manifest does not describe its layers") from None
    out: dict[str, tuple] = {"image_ids": (np.uint8, None)}
    out.update({f: (np.int64, None) for f in ("image_size", "image_mtime_ns")})
    out["image_status"] = (np.int8, None)
    for name, shape in sum_shapes(channels).items():
        out[f"S.{name}.hi"] = out[f"S.{name}.lo"] = (np.int64, shape)
    for i, c in enumerate(channels):
        out[f"X{i}.activation"] = (np.float32, (c, k))
        out[f"X{i}.image"] = out[f"X{i}.position"] = (np.int32, (c, k))
    return out


def image_table(arrays) -> list[str]:
    """The image ids of a saved graph, in table order."""
    blob = bytes(np.asarray(arrays["image_ids"], np.uint8))
    return blob.decode("utf-8").split("\0") if blob else []


class _Pass:
    """One pass (one rank of it)."""

    def __init__(
        self,
        model,
        engine: Engine,
        src: Source,
        config: dict,
        out: Path,
        rank: int,
        world: int,
        *,
        batch_size: int | None,
        workers: int,
        checkpoint_every: int,
        progress: Callable[[int, int], None] | None,
        rebuild: bool,
        show_progress: bool,
    ):
        self.model, self.engine, self.src, self.config = model, engine, src, config
        self.batch_size, self.workers, self.checkpoint_every = batch_size, workers, checkpoint_every
        self.rebuild, self.show_progress, self.progress = rebuild, show_progress, progress
        self.config_key = config_hash(config)
        self.out, self.rank, self.world = out, rank, world
        self.size = tuple(model.preprocess_config.input_size)
        self.names = [e["name"] for e in config["layers"]]
        self.channels = [e["channels"] for e in config["layers"]]
        self.target = config["class"]["index"]
        self.device = engine.device
        self.strength_at: dict[str, str] = {}

    def _state(self, device=None) -> GraphState:
        return GraphState(self.channels, self.config["examples"], device or self.device)

    # -- the plan -----------------------------------------------------------------------

    def _base(self, items):
        """The saved graph at ``out`` if the new images can be added to it, else None."""
        if self.rebuild or not (self.out / f"{STATE}.json").is_file():
            return None
        try:
            meta, arrays = read_state(self.out)
            ids = image_table(arrays)
        except IndexFormatError as exc:
            log.warning("rebuilding %s: the graph there is unreadable (%s)", self.out, exc)
            return None
        if meta.get("config_key") != self.config_key:
            log.warning("rebuilding %s: it was made with other settings", self.out)
            return None
        current = {it.id: it for it in items}
        for i, image_id in enumerate(ids):
            it = current.get(image_id)
            was = (int(arrays["image_size"][i]), int(arrays["image_mtime_ns"][i]))
            if arrays["image_status"][i] == 1 and (it is None or (it.size, it.mtime_ns) != was):
                log.warning("rebuilding %s: image %s was changed or removed", self.out, image_id)
                return None
        if self.batch_size is None:
            self.batch_size = int(meta.get("batch_size", DEFAULT_BATCH_SIZE))
        return meta, arrays, ids

    def _plan(self) -> dict:
        items = scan_source(self.src, self.out)
        return plan_images(items, self._base(items), self.config_key, self.batch_size, self.world)

    def run(self) -> GraphRun:
        plan = shared_plan(self._plan, self.rank, self.world)
        items, pending, bs = plan["items"], plan["pending"], int(plan["batch_size"])
        self.batch_size = bs
        if plan["up_to_date"]:
            log.info("graph %s is up to date", self.out)
            meta = read_state(self.out)[0]
            return GraphRun(
                self.out,
                reused=len(items),
                total=len(items),
                included=int(meta["images"]["included"]),
                up_to_date=True,
            )
        n_batches = math.ceil(len(pending) / bs)
        lo, hi = self.rank * n_batches // self.world, (self.rank + 1) * n_batches // self.world
        state = self._state()
        done, skipped = self._resume(plan["plan_key"], state, hi - lo, items)
        batches = [pending[b * bs : (b + 1) * bs].tolist() for b in range(lo + done, hi)]
        error = None
        try:
            self._process(items, batches, state, done, skipped, plan["plan_key"])
        except CnnscopeError as exc:
            if self.world == 1:
                raise
            error = str(exc)
        return self._finish(plan, state, skipped, error)

    # -- checkpoints --------------------------------------------------------------------

    def _resume(self, plan_key, state: GraphState, total: int, items) -> tuple[int, list]:
        if self.rebuild:
            return 0, []
        return read_checkpoint(self.out, self.rank, self.world, plan_key, total, state, items)

    def _checkpoint(self, plan_key, state: GraphState, done: int, skipped: list) -> None:
        write_checkpoint(
            self.out, self.rank, self.world, plan_key, self.batch_size, done, skipped, state
        )

    # -- the pass -----------------------------------------------------------------------

    def _process(self, items, batches, state, done, skipped, plan_key) -> None:
        if not batches:
            return
        flat = [i for batch in batches for i in batch]
        where = {i: p for p, i in enumerate(flat)}
        dataset = Images(self.src, [items[i] for i in flat], self.model.preprocess_config)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[[where[i] for i in batch] for batch in batches],
            num_workers=self.workers,
            collate_fn=Collate(int(self.batch_size or 1), self.size),
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )
        show = bool(self.show_progress) and self.rank == 0
        seen = 0
        with tqdm(total=len(flat), unit="img", desc="graph", disable=not show) as bar:
            for b, (good, x, errors) in enumerate(loader):
                for p, reason in errors:
                    skipped.append({"image": items[flat[p]].id, "reason": reason})
                    log.warning("skipping %s: %s", items[flat[p]].id, reason)
                if len(good):
                    self._add(state, x, good, flat)
                done += 1
                seen += len(batches[b])
                bar.update(len(batches[b]))
                if done % self.checkpoint_every == 0 or b == len(batches) - 1:
                    self._checkpoint(plan_key, state, done, skipped)
                if self.progress is not None and self.rank == 0:
                    self.progress(seen, len(flat))

    def _add(self, state: GraphState, x: torch.Tensor, good: torch.Tensor, flat) -> None:
        cfg = self.config
        terms = batch_terms(
            self.engine,
            self.names,
            self.target,
            x.to(self.device),
            edge_k=cfg["edge_k"],
            rule=cfg["rule"],
            strength_at=self.strength_at,
        )
        n = len(good)
        keep = torch.zeros(x.shape[0], dtype=torch.bool, device=self.device)
        keep[:n] = True
        if cfg["select"] == "predicted":
            keep &= terms.predicted == self.target
        numbers = torch.as_tensor([flat[p] for p in good.tolist()], dtype=torch.int64)
        state.add(terms, keep, numbers[keep[:n].cpu()])

    # -- the end ------------------------------------------------------------------------

    def _finish(self, plan, state: GraphState, skipped, error) -> GraphRun:
        partials = [(state.state_arrays(), skipped, error)]
        if self.world > 1:
            import torch.distributed as dist

            received: list | None = [None] * self.world if self.rank == 0 else None
            dist.gather_object(partials[0], received, dst=0)
            if self.rank != 0:
                dist.barrier()
                if error:
                    raise CnnscopeError(error)
                return GraphRun(self.out)
            partials = list(received or [])
        try:
            errors = [p[2] for p in partials if p[2]]
            if errors:
                raise CnnscopeError(errors[0])
            return self._commit(plan, partials)
        finally:
            if self.world > 1:
                torch.distributed.barrier()

    def _commit(self, plan, partials) -> GraphRun:
        items, status, reasons = plan["items"], plan["status"].copy(), dict(plan["reasons"])
        merged = self._state("cpu")
        new_skipped = []
        for arrays, skip, _ in partials:
            part = self._state("cpu")
            part.load_state_arrays(arrays)
            merged.merge(part)
            new_skipped += skip
        status[plan["pending"]] = 1
        number = {it.id: i for i, it in enumerate(items)}
        for s in new_skipped:
            status[number[s["image"]]], reasons[number[s["image"]]] = 0, s["reason"]
        reused = 0
        if plan["base"] is not None:
            old = self._state("cpu")
            old.load_saved(plan["base"][1], remap=plan["remap"])
            merged.merge(old)
            reused = int(np.count_nonzero(plan["remap"] >= 0))
        processed = len(plan["pending"]) - len(new_skipped)
        included = int(round(float(merged.sums.value("images")[0])))
        arrays = {
            "image_ids": encode_ids([it.id for it in items]),
            "image_size": np.asarray([it.size for it in items], np.int64),
            "image_mtime_ns": np.asarray([it.mtime_ns for it in items], np.int64),
            "image_status": status.astype(np.int8),
            **merged.saved_arrays(),
        }
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta = {
            **self.config,
            "config_key": self.config_key,
            "batch_size": self.batch_size,
            "images": {
                "total": len(items),
                "processed": int((status == 1).sum()),
                "skipped": int((status == 0).sum()),
                "included": included,
            },
            "skipped": [{"image": items[i].id, "reason": reasons[i]} for i in sorted(reasons)],
            "last_run": {
                "processed": processed,
                "reused": reused,
                "world_size": self.world,
                "finished": now,
            },
        }
        write_bundle(self.out, STATE, meta, arrays, arrays_prefix="sums", kill_point="commit")
        shutil.rmtree(self.out / CHECKPOINT_DIR, ignore_errors=True)
        crash_point("committed")
        log.info(
            "graph of %s: %d new images, %d reused, %d included",
            self.config["class"]["label"],
            processed,
            reused,
            included,
        )
        return GraphRun(
            self.out,
            processed,
            reused,
            sorted(new_skipped, key=lambda s: s["image"]),
            len(items),
            included,
        )
