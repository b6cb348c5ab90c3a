"""Receptive fields of every tensor in a forward pass, traced op by op.

A :class:`ReceptiveFieldMode` follows the spatial geometry through ``conv2d``,
``max_pool2d``, ``avg_pool2d`` and ``pad``. Any other op whose output keeps the spatial
size of an input inherits the widest receptive field among such inputs (elementwise
ops, residual adds, concatenations, batch norm). Ops that change the spatial size in
other ways (adaptive pooling, interpolation, flattening) give a global field (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Field:
    """Receptive field of a feature map's units, in input pixels, per axis (y, x).

    ``size`` is the field's extent, ``stride`` the step between neighbouring units and
    ``offset`` the input coordinate of the centre of unit (0, 0)'s field.
    """

    size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    offset: tuple[float, float] = (0.0, 0.0)

    def after(self, kernel, stride, padding, dilation) -> Field:
        """The field after a sliding window with the given geometry (per axis)."""
        size, step, off = [], [], []
        for a in range(2):
            span = (kernel[a] - 1) * dilation[a]
            size.append(self.size[a] + span * self.stride[a])
            off.append(self.offset[a] + (span / 2 - padding[a]) * self.stride[a])
            step.append(self.stride[a] * stride[a])
        return Field(tuple(size), tuple(step), tuple(off))

    def box(self, y: int, x: int) -> tuple[float, float, float, float]:
        """``(top, left, bottom, right)`` of unit (y, x)'s field in input pixels."""
        cy = self.offset[0] + y * self.stride[0]
        cx = self.offset[1] + x * self.stride[1]
        hy, hx = (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        return cy - hy, cx - hx, cy + hy, cx + hx


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _param(args, kwargs, index, name, default):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _window(func, args, kwargs):
    """Kernel, stride, padding, dilation of a sliding-window op, or None."""
    name = getattr(func, "__name__", "")
    if func in (F.conv2d, torch.conv2d):
        weight = _param(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:])
        stride = _pair(_param(args, kwargs, 3, "stride", 1))
        padding = _param(args, kwargs, 4, "padding", 0)
        dilation = _pair(_param(args, kwargs, 5, "dilation", 1))
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
        return kernel, stride, _pair(padding), dilation
    if name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        kernel = _pair(_param(args, kwargs, 1, "kernel_size", 1))
        stride = _param(args, kwargs, 2, "stride", None)
        stride = kernel if stride in (None, [], ()) else _pair(stride)
        padding = _pair(_param(args, kwargs, 3, "padding", 0))
        dilation = (1, 1) if name == "avg_pool2d" else _pair(_param(args, kwargs, 4, "dilation", 1))
        return kernel, stride, padding, dilation
    return None


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class ReceptiveFieldMode(TorchFunctionMode):
    """Record the receptive field of every 4-D tensor made while active.

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    >>> x = torch.zeros(1, 3, 16, 16)
    >>> with ReceptiveFieldMode(x) as mode:
    ...     y = conv(x)
    >>> mode.field(y)
    Field(size=(3, 3), stride=(2, 2), offset=(0.0, 0.0))
    """

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self._fields: dict[int, tuple[torch.Tensor, Field | None]] = {}
        self._set(image, Field())

    def _set(self, tensor: torch.Tensor, field: Field | None) -> None:
        self._fields[id(tensor)] = (tensor, field)

    def field(self, tensor: torch.Tensor) -> Field | None:
        """The field of ``tensor``; None when global or unknown."""
        entry = self._fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def _known(self, tensor) -> bool:
        entry = self._fields.get(id(tensor))
        return entry is not None and entry[0] is tensor and entry[1] is not None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if t.dim() == 4 and self._known(t)]
        if not inputs or not isinstance(out, torch.Tensor) or out.dim() != 4:
            return out
        source = inputs[0]
        window = _window(func, args, kwargs)
        if window is not None:
            self._set(out, self.field(source).after(*window))
        elif func is F.pad:
            self._set(out, self._padded(self.field(source), _param(args, kwargs, 1, "pad", ())))
        else:
            same = [self.field(t) for t in inputs if t.shape[-2:] == out.shape[-2:]]
            widest = max(same, key=lambda f: math.prod(f.size)) if same else None
            self._set(out, widest)
        return out

    @staticmethod
    def _padded(field: Field, pad) -> Field:
        pad = list(pad) + [0] * (4 - len(pad))
        left, top = pad[0], pad[2]
        offset = (field.offset[0] - top * field.stride[0], field.offset[1] - left * field.stride[1])
        return Field(field.size, field.stride, offset)
