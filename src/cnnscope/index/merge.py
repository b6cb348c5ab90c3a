"""Exact running top-k per unit, and merging partial top-k lists (across ranks too).

Each candidate (activation ``v`` of a unit in image ``i``) is packed into one ``int64``
*key* that sorts like ``(v descending, i ascending)``::

    key = order32(v) << 31 | (2**31 - 1 - i)

``order32`` maps the float32 bit pattern to an unsigned 32-bit integer with the same
order (NaN counts as -inf, -0.0 as +0.0). A unit keeps at most one candidate per image (its spatial
argmax), so keys are unique: the top k of any set of candidates is a *set function*,
independent of the order and grouping in which candidates arrive. That is what makes
resumed, incremental and distributed runs bitwise equal to one uninterrupted run. An
empty slot is key ``-1``.

The update is vectorised over units: ``topk`` over ``[current k | batch maxima]`` per
layer, never a Python loop over channels, and memory stays ``O(units x k)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["EMPTY", "IMAGE_LIMIT", "RunningTopK", "decode", "encode", "merge_keys"]

log = logging.getLogger(__name__)

#: Key of an empty slot (fewer than k images seen).
EMPTY = -1
_LOW = (1 << 31) - 1
#: Largest image number a key can hold.
IMAGE_LIMIT = _LOW
_SIGN = 1 << 31


def encode(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Pack activations and image numbers into order-preserving int64 keys.

    Examples
    --------
    >>> k = encode(torch.tensor([1.0, 2.0, 2.0, -3.0]), torch.tensor([5, 7, 6, 0]))
    >>> k.argsort(descending=True).tolist()  # 2.0 (image 6), 2.0 (image 7), 1.0, -3.0
    [2, 1, 0, 3]
    >>> v, i = decode(k); v.tolist(), i.tolist()
    ([1.0, 2.0, 2.0, -3.0], [5, 7, 6, 0])
    """
    v = values.to(torch.float32).contiguous()
    v = torch.where(torch.isnan(v), torch.full_like(v, float("-inf")), v) + 0.0  # -0 -> +0
    bits = v.view(torch.int32).to(torch.int64)  # sign-extended
    mag = bits & 0x7FFFFFFF
    order = torch.where(bits < 0, 0x7FFFFFFF - mag, mag + _SIGN)
    return (order << 31) | (_LOW - images.to(torch.int64))


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack keys into ``(float32 activations, int64 image numbers)``; empty gives (-inf, -1)."""
    order = keys >> 31
    images = _LOW - (keys & _LOW)
    bits = torch.where(order >= _SIGN, order - _SIGN, (0x7FFFFFFF - order) - _SIGN)
    values = bits.to(torch.int32).view(torch.float32)
    empty = keys < 0
    values = torch.where(empty, torch.full_like(values, float("-inf")), values)
    images = torch.where(empty, torch.full_like(images, -1), images)
    return values, images


def merge_keys(
    keys: Sequence[torch.Tensor], positions: Sequence[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row of several ``(units, n_j)`` key/position tables, best first.

    Examples
    --------
    >>> a = encode(torch.tensor([[3.0, 1.0]]), torch.tensor([[0, 1]]))
    >>> b = encode(torch.tensor([[2.0, 5.0]]), torch.tensor([[2, 3]]))
    >>> keys, pos = merge_keys([a, b], [torch.tensor([[10, 11]]), torch.tensor([[12, 13]])], 3)
    >>> decode(keys)[0].tolist(), pos.tolist()
    ([[5.0, 3.0, 2.0]], [[13, 10, 12]])
    """
    allk = torch.cat(list(keys), dim=1)
    allp = torch.cat(list(positions), dim=1)
    if allk.shape[1] < k:
        pad = k - allk.shape[1]
        allk = torch.cat([allk, allk.new_full((allk.shape[0], pad), EMPTY)], 1)
        allp = torch.cat([allp, allp.new_full((allp.shape[0], pad), -1)], 1)
    top, idx = allk.topk(k, dim=1, largest=True, sorted=True)
    return top, allp.gather(1, idx)


class RunningTopK:
    """The best ``k`` (activation, image, position) of every unit of some layers.

    Parameters
    ----------
    channels : mapping of layer name to number of units
    k : int
        Examples kept per unit.
    device : torch.device or str
        Where the running state lives (the model's device: no transfers per batch).

    Examples
    --------
    >>> top = RunningTopK({"conv": 2}, k=2)
    >>> top.update("conv", torch.tensor([[1.0, 9.0], [4.0, 0.0]]),
    ...            torch.tensor([[3, 0], [1, 2]]), torch.tensor([0, 1]))
    >>> top.update("conv", torch.tensor([[2.0, 9.0]]), torch.tensor([[5, 7]]), torch.tensor([2]))
    >>> arrays = top.arrays("conv")
    >>> arrays["activation"].tolist(), arrays["image"].tolist()
    ([[4.0, 2.0], [9.0, 9.0]], [[1, 2], [0, 2]])
    """

    def __init__(self, channels: Mapping[str, int], k: int, device: torch.device | str = "cpu"):
        self.k = int(k)
        self.device = torch.device(device)
        self.channels = dict(channels)
        self.reset()

    def reset(self) -> None:
        """Forget everything (every slot empty)."""
        self.keys = {
            name: torch.full((c, self.k), EMPTY, dtype=torch.int64, device=self.device)
            for name, c in self.channels.items()
        }
        self.pos = {
            name: torch.full((c, self.k), -1, dtype=torch.int32, device=self.device)
            for name, c in self.channels.items()
        }

    def update(
        self, layer: str, values: torch.Tensor, positions: torch.Tensor, images: torch.Tensor
    ) -> None:
        """Offer one batch: ``values``/``positions`` are ``(N, units)``, ``images`` ``(N,)``.

        ``positions`` are flat indices ``y * W + x`` of each unit's spatial argmax.
        """
        images = images.to(self.device, torch.int64)
        keys = encode(values.to(self.device), images[:, None].expand(values.shape))
        pos = positions.to(self.device, torch.int32)
        self.keys[layer], self.pos[layer] = merge_keys(
            [self.keys[layer], keys.t()], [self.pos[layer], pos.t()], self.k
        )

    def merge(self, other: RunningTopK) -> None:
        """Fold another partial state (same layers and k) into this one."""
        for name in self.channels:
            self.keys[name], self.pos[name] = merge_keys(
                [self.keys[name], other.keys[name].to(self.device)],
                [self.pos[name], other.pos[name].to(self.device)],
                self.k,
            )

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The raw state (keys and flat positions per layer), for checkpoints and gathers."""
        out = {}
        for i, name in enumerate(self.channels):
            out[f"L{i}_key"] = self.keys[name].cpu().numpy()
            out[f"L{i}_pos"] = self.pos[name].cpu().numpy()
        return out

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`state_arrays`."""
        for i, name in enumerate(self.channels):
            key, pos = arrays[f"L{i}_key"], arrays[f"L{i}_pos"]
            if key.shape != (self.channels[name], self.k) or pos.shape != key.shape:
                raise ValueError(f"state of layer {name} has shape {key.shape}")
            self.keys[name] = torch.from_numpy(np.array(key, np.int64)).to(self.device)
            self.pos[name] = torch.from_numpy(np.array(pos, np.int32)).to(self.device)

    def arrays(self, layer: str, width: int = 1) -> dict[str, np.ndarray]:
        """The decoded top-k of ``layer``: ``activation``, ``image``, ``y``, ``x`` (units x k).

        ``width`` is the feature map's width (flat positions become ``y, x``).
        Empty slots have activation -inf, image -1 and position (-1, -1).
        """
        values, images = decode(self.keys[layer])
        pos = self.pos[layer].to(torch.int64)
        empty = self.keys[layer] < 0
        y = torch.where(empty, -1, pos // width)
        x = torch.where(empty, -1, pos % width)
        return {
            "activation": values.cpu().numpy().astype(np.float32),
            "image": images.cpu().numpy().astype(np.int32),
            "y": y.cpu().numpy().astype(np.int32),
            "x": x.cpu().numpy().astype(np.int32),
        }

    def load_arrays(
        self, layer: str, arrays: Mapping[str, np.ndarray], width: int = 1, remap=None
    ) -> None:
        """Set ``layer`` from decoded arrays (inverse of :meth:`arrays`).

        ``remap`` (an int array) renumbers images, e.g. when new files join the table;
        it must be increasing so that tie order is kept.
        """
        images = np.asarray(arrays["image"], np.int64)
        if remap is not None:
            images = np.where(images >= 0, np.asarray(remap, np.int64)[np.maximum(images, 0)], -1)
        values = torch.from_numpy(np.asarray(arrays["activation"], np.float32).copy())
        keys = encode(values, torch.from_numpy(images))
        keys = torch.where(torch.from_numpy(images) < 0, torch.full_like(keys, EMPTY), keys)
        y, x = np.asarray(arrays["y"], np.int64), np.asarray(arrays["x"], np.int64)
        pos = torch.from_numpy(np.where(images >= 0, y * width + x, -1).astype(np.int32))
        if keys.shape != (self.channels[layer], self.k):
            raise ValueError(f"arrays of layer {layer} have shape {tuple(keys.shape)}")
        # sort again (a remap keeps the order, but be robust to hand-edited files)
        keys, pos = merge_keys([keys], [pos], self.k)
        self.keys[layer], self.pos[layer] = keys.to(self.device), pos.to(self.device)


def gather_states(state: RunningTopK, extra: object, group=None) -> list | None:
    """Gather every rank's ``(state_arrays, extra)`` on rank 0 (``None`` on other ranks)."""
    import torch.distributed as dist

    payload = (state.state_arrays(), extra)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    received = [None] * world if rank == 0 else None
    dist.gather_object(payload, received, dst=0, group=group)
    return received
