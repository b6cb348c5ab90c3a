"""Runs under ``torchrun``: join the process group, and which rank of how many this is.

The index build and the class-graph pass share them: a command runs inside
:func:`distributed_run` (:func:`init_distributed`, then the group is destroyed), and the
pass asks :func:`rank_and_world` to take its share of the batches. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) both are no-ops: rank 0
of 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from ..errors import CnnscopeError

__all__ = ["distributed_run", "init_distributed", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialized process group, else ``(0, 1)``.

    Examples
    --------
    >>> rank_and_world()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group when started by ``torchrun``; this rank's device.

    Parameters
    ----------
    device : torch.device
        The device asked for; on CUDA, each rank takes GPU ``LOCAL_RANK``.

    Returns
    -------
    (torch.device, bool)
        The device to use and whether this is a distributed run (NCCL on CUDA, else Gloo).
        The caller destroys the process group when done.

    Raises
    ------
    CnnscopeError
        Under ``torchrun`` with a PyTorch built without ``torch.distributed``.

    Examples
    --------
    >>> init_distributed(torch.device("cpu"))  # not under torchrun: nothing to join
    (device(type='cpu'), False)
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, False
    import torch.distributed as dist

    if not dist.is_available():
        raise CnnscopeError("this PyTorch has no torch.distributed; run without torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


@contextlib.contextmanager
def distributed_run(device: torch.device) -> Iterator[tuple[torch.device, bool]]:
    """:func:`init_distributed` for the ``with`` block; the process group ends with it.

    Examples
    --------
    >>> with distributed_run(torch.device("cpu")) as (device, distributed):
    ...     device, distributed, rank_and_world()
    (device(type='cpu'), False, (0, 1))
    """
    device, distributed = init_distributed(device)
    try:
        yield device, distributed
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
