"""A build's checkpoints: each rank's state so far, tied to one plan, so a killed run resumes.

A checkpoint is ``.building/rank<R>.json`` + its arrays (:func:`~.store.write_bundle`). It
counts the batches of this rank's share of the plan that are done and lists the images
skipped so far; the arrays are the running state (``state_arrays()``). Any state with
``state_arrays``, ``load_state_arrays`` and ``reset`` fits (the index's
:class:`~.merge.RunningTopK`, the class graph's state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import crash_point
from .bundle import FORMAT, VERSION, IndexFormatError, read_bundle, write_bundle
from .folder import CHECKPOINT_DIR
from .sources import Item

__all__ = ["read_checkpoint", "write_checkpoint"]

log = logging.getLogger(__name__)


def _stem(rank: int) -> str:
    return f"rank{rank}"


def read_checkpoint(
    out: Path,
    rank: int,
    world: int,
    plan_key: str,
    total: int,
    state: Any,
    items: Sequence[Item],
    check: Callable[[Any, list[dict]], None] | None = None,
) -> tuple[int, list[dict]]:
    """Load ``rank``'s checkpoint of plan ``plan_key`` into ``state``.

    Returns ``(batches done, skipped so far)``; ``(0, [])`` when there is none, it is of
    another plan or world size, or it is damaged (then ``state`` is reset). ``check(state,
    skipped)`` may raise ValueError to refuse a state (images or positions out of range);
    a skipped image that is not among ``items`` is always refused.
    """
    stem = _stem(rank)
    if not (out / CHECKPOINT_DIR / f"{stem}.json").is_file():
        return 0, []
    try:
        meta, arrays = read_bundle(out / CHECKPOINT_DIR, stem)
        if meta.get("plan") != plan_key or meta.get("world") != world:
            log.info("ignoring a checkpoint of another build plan")
            return 0, []
        done = int(meta["batches_done"])
        if not 0 <= done <= total:
            raise ValueError(f"bad batches_done {done}")
        state.load_state_arrays(arrays)
        skipped = [{"image": str(s["image"]), "reason": str(s["reason"])} for s in meta["skipped"]]
        known = {it.id for it in items}
        if any(s["image"] not in known for s in skipped):
            raise ValueError("it skipped an image that is not in the plan")
        if check is not None:
            check(state, skipped)
    except (IndexFormatError, KeyError, ValueError, TypeError) as exc:
        log.warning("ignoring a damaged checkpoint (%s)", exc)
        state.reset()
        return 0, []
    log.info("resuming: %d of %d batches already done", done, total)
    return done, skipped


def write_checkpoint(
    out: Path,
    rank: int,
    world: int,
    plan_key: str,
    batch_size: int | None,
    done: int,
    skipped: list[dict],
    state: Any,
    **extra,
) -> None:
    """Write ``rank``'s checkpoint: ``done`` batches of plan ``plan_key``, ``skipped`` so far
    and ``state``'s arrays (``extra`` goes into the record too), at once."""
    meta = {
        "format": FORMAT + "-checkpoint",
        "version": VERSION,
        "plan": plan_key,
        "rank": rank,
        "world": world,
        "batch_size": batch_size,
        **extra,
        "batches_done": done,
        "skipped": skipped,
    }
    write_bundle(
        out / CHECKPOINT_DIR,
        _stem(rank),
        meta,
        state.state_arrays(),
        kill_point=f"checkpoint-half:{done}",
    )
    crash_point(f"checkpoint:{done}")
