"""Forward hooks that record every module's output, and eval mode that is put back.

:class:`Recorder` is what :class:`~cnnscope.engine.Engine` runs a model under: a hook on
every submodule keeps each call's output tensor (``name`` or ``name#K`` for the K-th call),
and every hook is removed and every training flag restored afterwards, even when the
model raises.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import CnnscopeError
from .units import INPUT, LOGITS


def first_tensor(obj) -> torch.Tensor | None:
    """The first tensor in a model's output (a tensor, or lists, tuples, dicts of them).

    Examples
    --------
    >>> first_tensor({"aux": None, "out": (torch.zeros(2), 1)}).shape
    torch.Size([2])
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        return next((t for t in map(first_tensor, obj) if t is not None), None)
    if isinstance(obj, dict):
        return next((t for t in map(first_tensor, obj.values()) if t is not None), None)
    return None


@contextlib.contextmanager
def preserved(module: nn.Module) -> Iterator[None]:
    """Run in eval mode; restore every submodule's training flag afterwards.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Dropout()).train()
    >>> with preserved(net):
    ...     net.training
    False
    >>> net.training
    True
    """
    flags = [(m, m.training) for m in module.modules()]
    if any(flag for _, flag in flags):  # already all in eval mode: skip the costly switch
        module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            if m.training != flag:
                m.training = flag


class _Truncated(Exception):
    """Raised by a recording hook to end a truncated forward pass early."""


class Recorder:
    """Forward hooks on every submodule that record each call's output tensor.

    Outputs named in ``clone`` ((module name, call number) pairs) are replaced by a copy,
    so that an in-place op downstream cannot overwrite the recorded value.
    """

    def __init__(
        self,
        clone: set[tuple[str, int]],
        only: frozenset[str] | None,
        stop: dict[str, int] | None = None,
    ):
        self.clone = clone
        self.only = only
        self.stop = stop  # {module name: call}: end the pass once all are recorded
        self.calls: dict[str, int] = defaultdict(int)
        self.recorded: list[tuple[str, int, torch.Tensor, int]] = []

    def _hook_for(self, name: str):
        def hook(_module, _inputs, output):
            self.calls[name] += 1
            if not isinstance(output, torch.Tensor):
                return None
            self.recorded.append((name, self.calls[name], output, output._version))
            if self.stop and all(self.calls[n] >= k for n, k in self.stop.items()):
                raise _Truncated
            if (name, self.calls[name]) in self.clone:
                return output.clone()  # downstream in-place ops change the copy only
            return None

        return hook

    def run(
        self, module: nn.Module, x: torch.Tensor, mode=contextlib.nullcontext()
    ) -> torch.Tensor | None:
        """Run ``module(x)`` in eval mode under ``mode``; hooks are always removed.

        Returns ``None`` when the pass was truncated (see ``Engine.forward``).
        """
        handles = []
        with preserved(module):
            try:
                for name, sub in module.named_modules() if self.only != frozenset() else ():
                    if name and (self.only is None or name in self.only):
                        with contextlib.suppress(RuntimeError, AttributeError):
                            handles.append(sub.register_forward_hook(self._hook_for(name)))
                with mode:
                    output = first_tensor(module(x))
            except _Truncated:
                return None
            finally:
                for handle in handles:
                    handle.remove()
        if output is None:
            raise CnnscopeError("the model returned no tensor")
        return output

    def named(self, x: torch.Tensor, output: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{layer name: tensor}`` in execution order, ``input`` first, ``logits`` last."""
        acts = {INPUT: x}
        for name, call, tensor, _ in self.recorded:
            acts[name if self.calls[name] == 1 else f"{name}#{call}"] = tensor
        if output is not None:
            acts[LOGITS] = output
        return acts

    def mutated(self) -> set[tuple[str, int]]:
        """Recorded outputs that an in-place op changed after they were recorded."""
        return {(n, k) for n, k, t, v in self.recorded if t._version != v}
