"""Build a dataset index: stream images through the model, keep each unit's top k.

One pass over the images with a :class:`torch.utils.data.DataLoader` (decoding in
worker processes, pinned memory on GPU). For every batch the engine records only the
chosen layers without a graph; each unit's strength at its spatial argmax (its
pre-activation for an activation layer: :mod:`cnnscope.engine.strength`) is offered to
a :class:`~cnnscope.index.merge.RunningTopK`. Memory is ``O(units x k)``.

Exactness across runs: items are numbered in sorted id order, batches are a fixed
partition of the pending items, and every batch is padded to ``batch_size`` images, so
that the activations of an image do not depend on which images share its batch (they
can otherwise differ in the last bits, e.g. in GEMM-backed 1x1 convolutions). With
unique sort keys (see :mod:`~cnnscope.index.merge`) a resumed, incremental or
distributed run writes bitwise the same arrays as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine import Engine, recorded_layers, strengths, weights_fingerprint
from ..errors import CnnscopeError, UnknownLayerError
from ..models import as_loaded
from .merge import IMAGE_LIMIT, RunningTopK, decode, gather_states
from .sources import Item, Source
from .store import (
    FORMAT,
    MANIFEST,
    VERSION,
    IndexFormatError,
    crash_point,
    read_bundle,
    remove_stale_temps,
    write_bundle,
)
from .validate import MAX_TOP_K, read_index

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TOP_K",
    "BuildResult",
    "build_index",
    "default_layers",
    "model_fingerprint",
    "offer_batch",
    "run_build",
]

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 16
DEFAULT_BATCH_SIZE = 32
CHECKPOINT_DIR = ".building"
LOCK_FILE = ".lock"
GRID_DIR = "grids"
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class and state dict (names, dtypes, shapes, values).

    Cached per module object while its :func:`~cnnscope.engine.weights_fingerprint` holds.

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
    """
    quick = weights_fingerprint(module)
    try:
        cached = _FINGERPRINTS.get(module)
    except TypeError:
        cached = None
    if cached and cached[0] == quick:
        return cached[1]
    h = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[module] = (quick, digest)
    return digest


def default_layers(model) -> list[str]:
    """The model's ``default_chain`` without the logits, shallowest first.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> layers = default_layers(load_model())
    >>> layers[0], layers[-1], "classifier" in layers
    ('stem_act', 'head_act', False)
    """
    skip = {model.logits_layer, "logits"}
    return [name for name in reversed(model.default_chain) if name not in skip]


# -- configuration --------------------------------------------------------------------------


def _layer_entries(engine: Engine, size: tuple[int, int], layers: Sequence[str]) -> list[dict]:
    infos = {info.name: info for info in engine.layers(size)}
    entries, seen = [], set()
    for name in layers:
        canonical = engine.resolve(str(name).strip(), size)
        if canonical in seen:
            continue
        seen.add(canonical)
        info = infos[canonical]
        if canonical == "input" or len(info.shape) not in (1, 3):
            raise UnknownLayerError(
                f"layer {canonical!r} has shape {list(info.shape)}: an index needs layers with "
                "channels (C or C x H x W)"
            )
        f = info.field
        entries.append(
            {
                "name": canonical,
                "channels": int(info.shape[0]),
                "shape": [int(s) for s in info.shape],
                "field": None
                if f is None or len(info.shape) != 3
                else {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset)},
            }
        )
    if not entries:
        raise CnnscopeError("no layers to index: give at least one layer")
    return entries


def _preprocessing(pre) -> dict:
    d = asdict(pre)
    d["input_size"] = list(d["input_size"])
    d["mean"], d["std"] = list(d["mean"]), list(d["std"])
    return d


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode() if not isinstance(part, bytes) else part)
        h.update(b"\x00\x01")
    return h.hexdigest()


def _ids_blob(ids: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\0".join(ids).encode("utf-8"), dtype=np.uint8).copy()


# -- the dataset ------------------------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    """Pending items -> ``(position, tensor or None, error or None)``; never raises."""

    def __init__(self, source: Source, items: Sequence[Item], preprocess):
        self.source, self.items, self.preprocess = source, list(items), preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            x = self.preprocess(self.source.load(item.id, item))[0]
            return i, x, None
        except CnnscopeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a file must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """A zero float tensor; in a DataLoader worker, allocated in shared memory at once.

    As in ``default_collate``: otherwise the batch is allocated, copied to shared memory
    when sent, and freed, and glibc's dynamic mmap threshold then lets the worker's heap
    grow by about a batch per batch (measured: +19 MB per batch of 32 at 224 px).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.zeros(shape)
    base = torch.empty(0)
    storage = base._typed_storage()._new_shared(math.prod(shape), device=base.device)
    return base.new(storage).resize_(shape).zero_()


class _Collate:
    """Stack a batch and pad it with zero images to exactly ``batch_size``."""

    def __init__(self, batch_size: int, size: tuple[int, int]):
        self.batch_size, self.size = batch_size, size

    def __call__(self, samples):
        ok = [(i, x) for i, x, err in samples if err is None]
        errors = [(i, err) for i, _, err in samples if err is not None]
        x = _batch_tensor((self.batch_size, 3, *self.size))
        bad = []
        good = []
        for i, t in ok:
            if tuple(t.shape) != (3, *self.size):
                bad.append((i, f"preprocessed to shape {tuple(t.shape)}, not 3x{self.size}"))
                continue
            x[len(good)] = t
            good.append(i)
        return torch.tensor(good, dtype=torch.int64), x, errors + bad


# -- distributed ------------------------------------------------------------------------------


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# -- locking ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(out: Path, wait: bool):
    """Hold an exclusive lock on ``out/.lock``, and remove the file when done.

    ``flock`` dies with its process: a killed build leaves at most an unlocked file. A
    waiter may get the lock of a file its holder has just removed; it then locks anew.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = out / LOCK_FILE
    while True:
        out.mkdir(parents=True, exist_ok=True)  # the holder may have removed it
        fh = open(path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CnnscopeError(f"another process is building the index {out}") from None
            raise
        if _same_file(fh, path):
            break
        fh.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fh.close()


def _same_file(fh, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextlib.contextmanager
def _build_folder(out: Path, wait: bool, rank: int):
    """Create ``out`` and its checkpoint folder and, on rank 0, hold the build lock.

    However the build ends, rank 0 removes the lock file, the checkpoint folder if it is
    empty, and ``out`` if this run created it and it is empty: a failed start leaves
    nothing behind. Writing errors become one line.
    """
    created = not out.exists()
    try:
        with _locked(out, wait) if rank == 0 else contextlib.nullcontext():
            (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            try:
                yield
            finally:
                if rank == 0:
                    _remove_if_empty(out / CHECKPOINT_DIR)
    except OSError as exc:
        raise CnnscopeError(f"cannot write the index {out}: {exc}") from None
    finally:
        if created and rank == 0:
            _remove_if_empty(out)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CnnscopeError(f"--out {out} is a file: give a folder for the index")
    if out.is_dir():
        known = {MANIFEST, CHECKPOINT_DIR, GRID_DIR, LOCK_FILE}
        names = {p.name for p in out.iterdir()}
        others = {n for n in names if n not in known and not n.startswith(("topk-", "."))}
        if others and MANIFEST not in names:
            raise CnnscopeError(
                f"--out {out} is a folder that is not a cnnscope index: give a new or empty folder"
            )


# -- the build --------------------------------------------------------------------------------


def build_index(
    model,
    source: str | os.PathLike | Source | None = None,
    layers: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    augment: bool | None = None,
    **options,
) -> Path:
    """Index a folder of images (or the augmented gallery): each unit's top ``top_k`` examples.

    Parameters
    ----------
    model : LoadedModel
        The model (on the device to use) and its preprocessing.
    source : folder, Source or None
        A folder of images, scanned recursively; ``None`` for the built-in gallery.
    layers : list of str, optional
        Layers to index (all units of each); default :func:`default_layers`.
    top_k : int
        Examples kept per unit.
    out : path
        The index folder. An existing index there is updated (only new images are
        processed); an interrupted build there is resumed.
    batch_size : int, optional
        Images per forward (default: the existing index's, else 32). Results are
        bitwise reproducible for a given batch size.
    workers : int, optional
        DataLoader worker processes for decoding (default: half the CPU cores, at most 8).
    augment : bool, optional
        Also index flips, crops and scales of every image (default: only for the gallery).
    **options
        ``checkpoint_every`` (batches, default 10), ``progress`` (callable
        ``(done, total)``), ``model_spec`` (how to reload the model, stored in the
        manifest), ``rebuild`` (ignore what is there), ``show_progress`` (tqdm bar),
        ``wait_lock`` (wait for a concurrent build instead of failing).

    Returns
    -------
    Path
        The index folder, ready for :func:`~cnnscope.index.open_index`.

    Raises
    ------
    CnnscopeError
        On bad arguments (missing folder, unknown layer, no images). Unreadable images
        are skipped and listed in the manifest, never raised.

    Examples
    --------
    >>> import tempfile
    >>> from cnnscope.models import load_model
    >>> from cnnscope.index import build_index, open_index
    >>> path = build_index(load_model(), None, ["blocks.4"], top_k=4,
    ...                    out=tempfile.mkdtemp() + "/ix", augment=False)  # doctest: +SKIP
    >>> open_index(path).examples("blocks.4:0")[0].activation  # doctest: +SKIP
    5.87...
    """
    return run_build(
        as_loaded(model),
        source,
        layers,
        top_k=top_k,
        out=out,
        batch_size=batch_size,
        workers=workers,
        augment=augment,
        **options,
    ).path


def run_build(
    model,
    source=None,
    layers: Sequence[str] | None = None,
    *,
    top_k: int = DEFAULT_TOP_K,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    augment: bool | None = None,
    checkpoint_every: int = 10,
    progress: Callable[[int, int], None] | None = None,
    model_spec: dict | None = None,
    rebuild: bool = False,
    show_progress: bool | None = None,
    wait_lock: bool = False,
) -> BuildResult:
    """:func:`build_index` returning a :class:`BuildResult` (what was processed and skipped)."""
    if out is None:
        raise CnnscopeError("give the index folder (--out)")
    if isinstance(source, Source):
        src = source
    else:
        src = Source(source, augment=(source is None) if augment is None else augment)
    top_k = int(top_k)
    if not 1 <= top_k <= MAX_TOP_K:
        raise CnnscopeError(f"--top-k must be between 1 and {MAX_TOP_K}, got {top_k}")
    if batch_size is not None and not 1 <= int(batch_size) <= 65_536:
        raise CnnscopeError(f"--batch-size must be at least 1, got {batch_size}")
    if int(checkpoint_every) < 1:
        raise CnnscopeError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    pre = model.preprocess_config
    if pre.resize == "none":
        raise CnnscopeError(
            "indexing needs one input size for every image: use --resize resize_crop or resize"
        )
    size = tuple(pre.input_size)
    engine = Engine.for_module(model.module)
    entries = _layer_entries(engine, size, layers if layers else default_layers(model))
    rank, world = _dist()
    out = Path(out).expanduser().resolve()
    _check_out(out)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.name, "fingerprint": model_fingerprint(model.module)},
        "preprocessing": _preprocessing(pre),
        "source": src.describe(),
        "top_k": top_k,
        "layers": entries,
    }
    config_key = _hash(config)
    if model_spec is None and _loadable(model.name):
        model_spec = {"model": model.name, "weights": None}
    ckpt_dir = out / CHECKPOINT_DIR
    with _build_folder(out, wait_lock, rank):
        if rank == 0:
            remove_stale_temps(out)
        remove_stale_temps(ckpt_dir, prefix=f"rank{rank}.")
        remove_stale_temps(ckpt_dir, prefix=f"rank{rank}-")
        return _Build(
            model=model,
            engine=engine,
            src=src,
            entries=entries,
            config=config,
            config_key=config_key,
            out=out,
            top_k=top_k,
            batch_size=batch_size,
            workers=workers,
            checkpoint_every=int(checkpoint_every),
            progress=progress,
            model_spec=model_spec,
            rebuild=rebuild,
            show_progress=show_progress,
            rank=rank,
            world=world,
        ).run()


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
    recorded = recorded_layers(engine, layers, tuple(x.shape[-2:]), x.shape[1])
    fwd = engine.forward(x, cache=False, layers=recorded, grad=False)
    numbers = numbers.to(state.device)
    for name in layers:
        values, pos = strengths(fwd, name)
        state.update(name, values[:n], pos[:n], numbers)


def _loadable(name: str) -> bool:
    """Whether ``load_model(name)`` gives this model back (a built-in or a factory spec)."""
    from ..models import builtin_name

    return bool(builtin_name(name) or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", name))


class _Build:
    """One build run (one rank of it)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
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
        items = self.src.scan(exclude=self.out)
        if not items:
            where = self.src.root if self.src.root is not None else "the gallery"
            raise CnnscopeError(f"no images found in {where}")
        if len(items) > IMAGE_LIMIT:
            raise CnnscopeError(f"too many images ({len(items)}); the limit is {IMAGE_LIMIT}")
        base = self._base(items)
        batch_size = int(self.batch_size or DEFAULT_BATCH_SIZE)
        table = [it.id for it in items]
        number = {image_id: i for i, image_id in enumerate(table)}
        status = np.full(len(items), -1, np.int8)  # -1 pending, 1 indexed, 0 skipped
        reasons: dict[int, str] = {}
        remap = None
        up_to_date = False
        if base is not None:
            bmeta, barrays, bids = base
            remap = np.full(len(bids), -1, np.int64)
            old_reasons = {s["image"]: s["reason"] for s in bmeta.get("skipped", [])}
            for j, image_id in enumerate(bids):
                i = number.get(image_id)
                if i is None:
                    continue
                same = (items[i].size, items[i].mtime_ns) == (
                    int(barrays["image_size"][j]),
                    int(barrays["image_mtime_ns"][j]),
                )
                if barrays["image_status"][j] == 1:
                    status[i], remap[j] = 1, i
                elif same:  # unreadable and unchanged: not retried
                    status[i] = 0
                    reasons[i] = old_reasons.get(image_id, "unreadable")
            up_to_date = bids == table and not (status < 0).any()
        pending = np.nonzero(status < 0)[0].astype(np.int64)
        plan_key = _hash(
            self.config_key,
            batch_size,
            self.world,
            "\0".join(f"{it.id}\0{it.size}\0{it.mtime_ns}" for it in items).encode(),
            pending.tobytes(),
            None if base is None else base[0]["arrays"]["sha256"],
        )
        return {
            "items": items,
            "pending": pending,
            "batch_size": batch_size,
            "plan_key": plan_key,
            "up_to_date": up_to_date,
            # rank 0 only (not broadcast):
            "base": base,
            "status": status,
            "reasons": reasons,
            "remap": remap,
        }

    def _shared_plan(self) -> dict:
        if self.world == 1:
            return self._plan()
        keys = ("items", "pending", "batch_size", "plan_key", "up_to_date")
        box: list = [None]
        if self.rank == 0:
            try:
                plan = self._plan()
                box[0] = {k: plan[k] for k in keys}
            except CnnscopeError as exc:
                box[0] = {"error": str(exc)}
                plan = None
        torch.distributed.broadcast_object_list(box, src=0)
        if "error" in box[0]:
            raise CnnscopeError(box[0]["error"])
        return plan if self.rank == 0 else box[0]

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

    def _ckpt_stem(self) -> str:
        return f"rank{self.rank}"

    def _resume(self, plan_key: str, state: RunningTopK, total: int, items) -> tuple[int, list]:
        """Load this rank's checkpoint of the same plan: ``(batches done, skipped so far)``."""
        stem = self._ckpt_stem()
        if self.rebuild or not (self.out / CHECKPOINT_DIR / f"{stem}.json").is_file():
            return 0, []
        try:
            meta, arrays = read_bundle(self.out / CHECKPOINT_DIR, stem)
            if meta.get("plan") != plan_key or meta.get("world") != self.world:
                log.info("ignoring a checkpoint of another build plan")
                return 0, []
            done = int(meta["batches_done"])
            if not 0 <= done <= total:
                raise ValueError(f"bad batches_done {done}")
            state.load_state_arrays(arrays)
            skipped = [
                {"image": str(s["image"]), "reason": str(s["reason"])} for s in meta["skipped"]
            ]
            self._check_state(state, skipped, items)
        except (IndexFormatError, KeyError, ValueError, TypeError) as exc:
            log.warning("ignoring a damaged checkpoint (%s)", exc)
            state.reset()
            return 0, []
        log.info("resuming: %d of %d batches already done", done, total)
        return done, skipped

    def _check_state(self, state: RunningTopK, skipped: list, items) -> None:
        """Raise ValueError unless a loaded state names only images and positions of the plan."""
        known = {it.id for it in items}
        if any(s["image"] not in known for s in skipped):
            raise ValueError("it skipped an image that is not in the plan")
        for entry in self.entries:
            images = decode(state.keys[entry["name"]])[1]
            pos = state.pos[entry["name"]]
            if (
                images.max() >= len(items)
                or pos.min() < -1
                or pos.max() >= math.prod(entry["shape"][1:])
            ):
                raise ValueError(
                    f"its state of {entry['name']} names images or positions out of range"
                )

    def _checkpoint(self, plan_key, state, done, skipped, span) -> None:
        meta = {
            "format": FORMAT + "-checkpoint",
            "version": VERSION,
            "plan": plan_key,
            "rank": self.rank,
            "world": self.world,
            "batch_size": self.batch_size,
            # the processed files: this rank's first `batches_done` batches of the plan
            "batches": list(span),
            "batches_done": done,
            "skipped": skipped,
        }
        write_bundle(
            self.out / CHECKPOINT_DIR,
            self._ckpt_stem(),
            meta,
            state.state_arrays(),
            kill_point=f"checkpoint-half:{done}",
        )
        crash_point(f"checkpoint:{done}")

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
        dataset = _Images(self.src, [items[i] for i in flat], self.model.preprocess_config)
        sampler = [[where[i] for i in batch] for batch in batches]
        workers = self._workers()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_Collate(self.batch_size, self.size),
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
            if self.rank != 0:
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
            "image_ids": _ids_blob(table),
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
