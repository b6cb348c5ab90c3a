"""Fingerprints of a model's weights: a cheap one in memory, a full one for files.

:class:`WeightSamples` is the cheap token that keys every in-memory cache;
:func:`state_digest` hashes the whole state dict, for what outlives the process (an
index's model, cached pictures). Use both through the engine:
:meth:`~cnnscope.engine.Engine.weights_fingerprint` and
:func:`~cnnscope.engine.model_fingerprint` (which computes the full digest again only
when the cheap token changes).

Autograd's version counter misses writes through ``p.data`` (a new tensor that shares
the storage, not the counter), so a cache keyed on versions alone serves stale answers
after ``p.data.mul_(2)``. :class:`WeightSamples` also reads some values of every tensor,
through views made once, at a small share of a forward pass's cost: reading every value
would cost over 10% of a forward pass of EfficientNet-Lite0 on CPU.
"""

from __future__ import annotations

import hashlib
import threading

import torch
from torch import nn

#: Evenly spaced values read per tensor.
_SAMPLES = 64


class WeightSamples:
    """Fingerprints of one module's weights: identities, versions and sampled values.

    Use it through :meth:`cnnscope.engine.Engine.weights_fingerprint`. The views it
    keeps (about 64 values of each parameter and buffer) share their tensors' storage,
    so they see every later write, and are made again when a tensor is replaced.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> samples = WeightSamples()
    >>> before = samples.digest(net)
    >>> _ = net.weight.data.mul_(2)  # autograd's version counter does not see this
    >>> before == samples.digest(net)
    False
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._identity: tuple = ()
        self._layout = b""
        self._views: list[torch.Tensor | None] = []

    def digest(self, module: nn.Module) -> str:
        """A hex digest that changes when a parameter or buffer of ``module`` is replaced,
        edited in place (its version), or has one of its sampled values changed."""
        tensors = [*module.parameters(), *module.buffers()]
        identity = tuple((t.data_ptr(), t._version, t.shape, t.dtype, t.device) for t in tensors)
        with self._lock:
            if identity != self._identity:
                self._views = [_strided_view(t) for t in tensors]
                self._layout = hashlib.sha1(repr(identity).encode()).digest()
                self._identity = identity
            views, layout = self._views, self._layout
        with torch.no_grad():
            parts = [_strided(t) if v is None else v for v, t in zip(views, tensors)]
            digest = hashlib.sha1(layout)
            if parts:
                try:
                    values = torch.cat(parts)
                except RuntimeError:  # a model spread over devices
                    values = torch.cat([p.cpu() for p in parts])
                digest.update(values.cpu().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def state_digest(module: nn.Module) -> str:
    """SHA-256 of ``module``'s class name and state dict (names, dtypes, shapes, values).

    Non-persistent buffers are not in the state dict, so they do not count. Reads every
    value: use :func:`~cnnscope.engine.model_fingerprint`, which caches it.

    Examples
    --------
    >>> a = torch.nn.Linear(2, 2)
    >>> b = torch.nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> state_digest(a) == state_digest(b), len(state_digest(a))
    (True, 64)
    """
    h = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _strided(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // _SAMPLES)]


def _strided_view(t: torch.Tensor) -> torch.Tensor | None:
    """Evenly spaced values of ``t``'s memory as a view (None where it is not dense)."""
    t = t.detach()
    strides = t.stride()
    dense = t.permute(sorted(range(t.dim()), key=lambda d: -strides[d]))  # channels_last too
    return _strided(dense) if dense.is_contiguous() else None
