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

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from ..atomic import remove_stale_temps
from ..engine import Engine, model_fingerprint
from ..errors import CnnscopeError, UnknownLayerError
from ..models import Preprocessing, as_loaded
from .bundle import FORMAT, VERSION
from .distributed import rank_and_world
from .folder import CHECKPOINT_DIR, build_folder, check_out
from .plan import DEFAULT_BATCH_SIZE, config_hash
from .run import BuildResult, BuildRun, offer_batch
from .sources import Source
from .validate import MAX_TOP_K

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TOP_K",
    "BuildResult",
    "build_index",
    "default_layers",
    "model_fingerprint",
    "offer_batch",
    "preprocessing_record",
    "run_build",
]

DEFAULT_TOP_K = 16


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


def preprocessing_record(pre: Preprocessing) -> dict:
    """``pre`` as the JSON of a manifest's ``preprocessing`` (``Preprocessing(**d)`` reads it).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> d = preprocessing_record(load_model().preprocess_config)
    >>> d["input_size"], d["resize"]
    ([224, 224], 'resize_crop')
    """
    d = asdict(pre)
    d["input_size"] = list(d["input_size"])
    d["mean"], d["std"] = list(d["mean"]), list(d["std"])
    return d


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
    rank, world = rank_and_world()
    out = Path(out).expanduser().resolve()
    check_out(out)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.name, "fingerprint": model_fingerprint(model.module)},
        "preprocessing": preprocessing_record(pre),
        "source": src.describe(),
        "top_k": top_k,
        "layers": entries,
    }
    config_key = config_hash(config)
    if model_spec is None and _loadable(model.name):
        model_spec = {"model": model.name, "weights": None}
    ckpt_dir = out / CHECKPOINT_DIR
    with build_folder(out, wait_lock, rank):
        if rank == 0:
            remove_stale_temps(out)
        remove_stale_temps(ckpt_dir, prefix=f"rank{rank}.")
        remove_stale_temps(ckpt_dir, prefix=f"rank{rank}-")
        return BuildRun(
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


def _loadable(name: str) -> bool:
    """Whether ``load_model(name)`` gives this model back (a built-in or a factory spec)."""
    from ..models import builtin_name

    return bool(builtin_name(name) or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", name))
