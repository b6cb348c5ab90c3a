"""What a build processes: the images of its source, those an existing index already has,
and the key of the plan that checkpoints are tied to.

The plan is made on rank 0 (:func:`plan_images`) and broadcast to the other ranks
(:func:`shared_plan`); an image indexed before and unchanged is reused, an unreadable one
that has not changed is not retried, and everything else is pending. Numbers are the
images' positions in the sorted table of the source's items.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CnnscopeError
from .merge import IMAGE_LIMIT
from .sources import Item, Source

__all__ = ["DEFAULT_BATCH_SIZE", "config_hash", "plan_images", "scan_source", "shared_plan"]

DEFAULT_BATCH_SIZE = 32

#: The keys of a plan that every rank receives (the rest stay on rank 0).
SHARED_KEYS = ("items", "pending", "batch_size", "plan_key", "up_to_date")


def config_hash(*parts) -> str:
    """SHA-256 of JSON-able parts and byte strings, in order: the key of a build's settings."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode() if not isinstance(part, bytes) else part)
        h.update(b"\x00\x01")
    return h.hexdigest()


def scan_source(src: Source, out: Path) -> list[Item]:
    """The items of ``src`` (none under ``out``, the index folder), checked: not none, not
    more than :data:`~.merge.IMAGE_LIMIT`."""
    items = src.scan(exclude=out)
    if not items:
        where = src.root if src.root is not None else "the gallery"
        raise CnnscopeError(f"no images found in {where}")
    if len(items) > IMAGE_LIMIT:
        raise CnnscopeError(f"too many images ({len(items)}); the limit is {IMAGE_LIMIT}")
    return items


def plan_images(
    items: Sequence[Item],
    base: tuple[dict, dict, list[str]] | None,
    config_key: str,
    batch_size: int | None,
    world: int,
) -> dict:
    """What to process of ``items``, given the existing index ``base`` (manifest, arrays,
    ids; None for a fresh build) that the caller found extendable.

    Returns a dict: ``items``; ``pending`` (their numbers, to process); ``batch_size``;
    ``plan_key`` (hash of the settings, the items and what is pending); ``up_to_date``;
    and, for rank 0, ``base``, ``status`` (-1 pending, 1 indexed, 0 skipped, per item),
    ``reasons`` (number -> why skipped) and ``remap`` (base position -> number, -1 gone).

    Examples
    --------
    >>> items = [Item("a.jpg", 10, 1), Item("b.jpg", 20, 2)]
    >>> plan = plan_images(items, None, "k", 4, 1)
    >>> plan["pending"].tolist(), plan["batch_size"], plan["up_to_date"]
    ([0, 1], 4, False)
    >>> arrays = {"image_size": np.array([10]), "image_mtime_ns": np.array([1]),
    ...           "image_status": np.array([1]), "sha256": "x"}
    >>> again = plan_images(items, ({"arrays": {"sha256": "x"}}, arrays, ["a.jpg"]), "k", 4, 1)
    >>> again["pending"].tolist(), again["remap"].tolist()
    ([1], [0])
    """
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
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
    plan_key = config_hash(
        config_key,
        batch_size,
        world,
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


def shared_plan(make_plan: Callable[[], dict], rank: int, world: int) -> dict:
    """``make_plan()`` on rank 0, its :data:`SHARED_KEYS` broadcast to every other rank; an
    error of rank 0's is raised on every rank."""
    if world == 1:
        return make_plan()
    box: list = [None]
    plan: dict | None = None
    if rank == 0:
        try:
            plan = make_plan()
            box[0] = {k: plan[k] for k in SHARED_KEYS}
        except CnnscopeError as exc:
            box[0] = {"error": str(exc)}
    torch.distributed.broadcast_object_list(box, src=0)
    if "error" in box[0]:
        raise CnnscopeError(box[0]["error"])
    return plan if plan is not None else box[0]
