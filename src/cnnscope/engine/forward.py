"""One recorded forward pass: the activations and the graph for rule-aware backwards.

:meth:`Forward.grad` seeds a gradient at any recorded layer (or the logits) and returns
the gradient at any lower layer or the input, under any backward rule; ``k`` seeds go
through one batched backward. Made by :meth:`cnnscope.engine.Engine.forward`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, overload

import torch
from torch import nn

from ..errors import CnnscopeError
from .rules import RULE_BY_NAME, attach_rules, check_reach, check_rule, note
from .units import INPUT, resolve_layer, split_call

if TYPE_CHECKING:
    from .record import Engine


def _submodule(root: nn.Module, name: str) -> nn.Module | None:
    try:
        return root.get_submodule(name) if name else None
    except AttributeError:  # "input", "logits" and other recorded names that are no module
        return None


#: Module types whose output is a ReLU-family function of their input.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)

#: ``grad(batched=True)`` spans of at most this many recorded layers are vmapped on CPU too.
_SHORT_SPAN = 4


class Forward:
    """One recorded forward pass: activations plus the graph for rule-aware backwards.

    Do not build it directly: call :meth:`Engine.forward`.

    Attributes
    ----------
    batch_strategy : {"auto", "vmap", "loop"}
        How ``grad(..., batched=True)`` runs its ``k`` seeds: one vmapped backward
        (``is_grads_batched``), or ``k`` backwards over the retained graph. ``auto``
        (default) loops on CPU, where it is cheaper unless the span between ``seed_at``
        and ``to`` is a few layers, and vmaps elsewhere. The numbers are the same.
    """

    batch_strategy: str = "auto"
    #: Whether the engine's cache holds this forward (then its graph must be kept).
    shared: bool = False

    def __init__(self, engine: Engine, x: torch.Tensor, output: torch.Tensor | None, acts, state):
        self.engine = engine
        self.input = x
        self.output = output
        self._acts: dict[str, torch.Tensor] = acts
        self._order = {name: i for i, name in enumerate(acts)}
        self._state = state
        self._lock = threading.Lock()
        self._activations: Counter | None = None  # filled by the first rule's walk
        self._checked: set[str] = set()  # rules whose reach was checked (and warned)
        self._freed = False

    def _use_rule(self, rule: str) -> None:
        """Put ``rule`` in force; hook the graph's activations the first time one is needed.

        The true gradient needs no hook, so a forward that is only ever differentiated
        under ``gradient`` never pays for the walk of its graph. A rule with no rectifier
        to shape raises; one that meets activations outside the ReLU family warns, once
        per rule and forward (once per :func:`~cnnscope.engine.rules.warn_once` block).
        """
        check_rule(rule)
        if RULE_BY_NAME[rule].shape is not None:  # the true gradient needs no hook
            if self._activations is None:
                self._activations = attach_rules(self._acts.values(), self._state)
            if rule not in self._checked:
                warning = check_reach(rule, self._activations)  # raises if nothing to shape
                self._checked.add(rule)
                if warning is not None:
                    note(warning)
        self._state.rule = rule

    @property
    def layers(self) -> list[str]:
        """Recorded layer names in execution order (``input`` first, ``logits`` last)."""
        return list(self._acts)

    def tensor(self, layer: str) -> torch.Tensor:
        """The graph-attached activation of ``layer`` (read-only: do not modify it)."""
        return self._acts[self.resolve(layer)]

    def activation(self, layer: str) -> torch.Tensor:
        """A detached copy-free view of ``layer``'s activation, batch first."""
        return self.tensor(layer).detach()

    def pre_activation(self, layer: str) -> str:
        """The layer whose output ``layer`` activates, if ``layer`` is a ReLU-family module
        applied to the layer recorded just before it; else ``layer`` itself.

        Reading a unit there keeps its gradient alive where the activation is off or
        saturated (the "pre-ReLU" layer that feature visualization optimises).

        Examples
        --------
        >>> from cnnscope.engine import Engine
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> fwd = Engine(net).forward(torch.randn(1, 3, 8, 8), grad=False)
        >>> fwd.pre_activation("1"), fwd.pre_activation("0")
        ('0', '0')
        """
        layer = self.resolve(layer)
        module = _submodule(self.engine.module, split_call(layer)[0])
        names = list(self._acts)
        i = names.index(layer)
        if not isinstance(module, ACTIVATIONS) or i == 0 or names[i - 1] == INPUT:
            return layer
        prev = names[i - 1]
        pre, post = self._acts[prev].detach(), self._acts[layer].detach()
        if pre.shape != post.shape:
            return layer
        with torch.no_grad():
            again = module(pre.clone())
        tol = 1e-5 * (1.0 + float(post.abs().max()))
        return prev if torch.allclose(again, post, atol=tol, rtol=0) else layer

    def resolve(self, layer: str) -> str:
        """The canonical name of ``layer``; raises ``UnknownLayerError`` with suggestions."""
        return resolve_layer(layer, self._acts)

    def below(self, lower: str, upper: str) -> bool:
        """Whether ``lower`` runs before ``upper`` in the forward pass."""
        return self._order[self.resolve(lower)] < self._order[self.resolve(upper)]

    @overload
    def grad(  # type: ignore[overload-overlap]  # a str is a Sequence[str] too
        self,
        seed_at: str,
        seed: torch.Tensor,
        to: str | torch.Tensor = ...,
        rule: str = ...,
        batched: bool = ...,
        keep_graph: bool = ...,
    ) -> torch.Tensor: ...

    @overload
    def grad(
        self,
        seed_at: str,
        seed: torch.Tensor,
        to: Sequence[str | torch.Tensor],
        rule: str = ...,
        batched: bool = ...,
        keep_graph: bool = ...,
    ) -> tuple[torch.Tensor, ...]: ...

    def grad(
        self,
        seed_at: str,
        seed: torch.Tensor,
        to: str | torch.Tensor | Sequence[str | torch.Tensor] = INPUT,
        rule: str = "gradient",
        batched: bool = False,
        keep_graph: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Backpropagate ``seed`` from layer ``seed_at`` to lower layers under ``rule``.

        Parameters
        ----------
        seed_at : str
            Layer where the gradient is injected (``logits`` for the class scores).
        seed : torch.Tensor
            The gradient at ``seed_at``: its activation's shape, or with a leading
            dimension of ``k`` seeds when ``batched`` is true.
        to : str, tensor, or sequence of them
            Lower layer(s) (or ``input``) where the gradient is read; a tensor of the
            graph (e.g. a parameter that requires grad) is also accepted.
        rule : str
            Backward rule of every rectifier on the way, one of
            :data:`~cnnscope.engine.rules.RULES` (docs/methods.md, backward rules).
        batched : bool
            Treat the first dimension of ``seed`` as ``k`` seeds, run in one backward.
        keep_graph : bool
            ``False`` frees the graph's saved tensors as the backward goes (about 10%
            faster on CPU, as a plain ``backward()``): for the last backward of a forward
            made with ``cache=False``; later ``grad`` calls on it then raise.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            The gradient at each ``to`` layer (with a leading ``k`` when batched).

        Examples
        --------
        >>> from cnnscope.engine import Engine
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> fwd = Engine(net).forward(torch.randn(1, 3, 8, 8))
        >>> seed = torch.ones_like(fwd.activation("1"))
        >>> fwd.grad("1", seed, rule="guided").shape
        torch.Size([1, 3, 8, 8])
        """
        check_rule(rule)
        self._check_graph(keep_graph)
        single = isinstance(to, (str, torch.Tensor))
        targets: list[str | torch.Tensor] = (
            [to] if isinstance(to, (str, torch.Tensor)) else list(to)
        )
        top = self.resolve(seed_at)
        inputs = [t if isinstance(t, torch.Tensor) else self._below(t, top) for t in targets]
        out = self._acts[top]
        expected = (seed.shape[0], *out.shape) if batched else out.shape
        if tuple(seed.shape) != tuple(expected):
            raise CnnscopeError(
                f"seed shape {tuple(seed.shape)} does not match {top!r}'s {tuple(expected)}"
            )
        seed = seed.to(device=out.device, dtype=out.dtype)
        names = [self.resolve(t) for t in targets if isinstance(t, str)]
        span = min((self._order[top] - self._order[n] for n in names), default=len(self._order))
        with self._lock:
            self._use_rule(rule)
            grads = self._backward(out, inputs, seed, batched, span, keep_graph)
            self._freed = not keep_graph
        result = tuple(
            torch.zeros(
                (seed.shape[0], *t.shape) if batched else t.shape, dtype=t.dtype, device=t.device
            )
            if g is None
            else g
            for g, t in zip(grads, inputs)
        )
        return result[0] if single else result

    @overload
    def grad_many(  # type: ignore[overload-overlap]  # a str is a Sequence[str] too
        self,
        seeds: Mapping[str, torch.Tensor],
        to: str | torch.Tensor = ...,
        rule: str = ...,
    ) -> torch.Tensor: ...

    @overload
    def grad_many(
        self,
        seeds: Mapping[str, torch.Tensor],
        to: Sequence[str | torch.Tensor],
        rule: str = ...,
    ) -> tuple[torch.Tensor, ...]: ...

    def grad_many(
        self,
        seeds: Mapping[str, torch.Tensor],
        to: str | torch.Tensor | Sequence[str | torch.Tensor] = INPUT,
        rule: str = "gradient",
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Backpropagate seeds at several layers at once (one backward pass).

        The result is the sum of ``grad(layer, seed, to, rule)`` over ``seeds``, computed
        in one backward, e.g. for an objective that reads several layers.

        Parameters
        ----------
        seeds : mapping of str to torch.Tensor
            ``{layer: gradient at that layer}``, each of the activation's shape.
        to : str, tensor, or sequence of them
            Where the gradient is read, as in :meth:`grad`; below every seeded layer.
        rule : str
            Backward rule of every rectifier on the way, one of
            :data:`~cnnscope.engine.rules.RULES` (docs/methods.md, backward rules).

        Examples
        --------
        >>> from cnnscope.engine import Engine
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> fwd = Engine(net).forward(torch.randn(1, 3, 8, 8))
        >>> seeds = {"0": torch.ones(1, 4, 6, 6), "1": torch.ones(1, 4, 6, 6)}
        >>> fwd.grad_many(seeds).shape
        torch.Size([1, 3, 8, 8])
        """
        check_rule(rule)
        self._check_graph(True)
        if not seeds:
            raise CnnscopeError("grad_many needs at least one seed")
        single = isinstance(to, (str, torch.Tensor))
        targets: list[str | torch.Tensor] = (
            [to] if isinstance(to, (str, torch.Tensor)) else list(to)
        )
        outs, grads_out = [], []
        for layer, seed in seeds.items():
            top = self.resolve(layer)
            out = self._acts[top]
            if tuple(seed.shape) != tuple(out.shape):
                raise CnnscopeError(
                    f"seed shape {tuple(seed.shape)} does not match {top!r}'s {tuple(out.shape)}"
                )
            outs.append(out)
            grads_out.append(seed.to(device=out.device, dtype=out.dtype))
        lowest = min((self.resolve(n) for n in seeds), key=self._order.__getitem__)
        inputs = [t if isinstance(t, torch.Tensor) else self._below(t, lowest) for t in targets]
        with self._lock:
            self._use_rule(rule)
            grads = torch.autograd.grad(
                outs, inputs, grads_out, retain_graph=True, allow_unused=True
            )
        result = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))
        return result[0] if single else result

    def _check_graph(self, keep_graph: bool) -> None:
        if not self.input.requires_grad:
            raise CnnscopeError("this forward was recorded without a graph (grad=False)")
        if self._freed:
            raise CnnscopeError("this forward's graph was freed by grad(..., keep_graph=False)")
        if not keep_graph and self.shared:
            raise CnnscopeError("keep_graph=False on a cached forward: record it with cache=False")

    def _below(self, layer: str, top: str) -> torch.Tensor:
        low = self.resolve(layer)
        if not self._order[low] < self._order[top]:
            raise CnnscopeError(f"layer {low!r} is not below {top!r}: gradients flow downward")
        return self._acts[low]

    def _backward(self, out, inputs, seed, batched, span, keep_graph=True):
        if not batched:
            return torch.autograd.grad(
                out, inputs, seed, retain_graph=keep_graph, allow_unused=True
            )
        strategy = self.batch_strategy
        if strategy == "auto":  # a short span is cheap per seed: a loop would be all overhead
            strategy = "loop" if out.device.type == "cpu" and span > _SHORT_SPAN else "vmap"
        if strategy == "vmap":  # one vmapped backward: what pays on an accelerator
            return torch.autograd.grad(
                out, inputs, seed, retain_graph=keep_graph, allow_unused=True, is_grads_batched=True
            )
        # On CPU, vmap has no batching rule for hardtanh's or eval batch norm's backward and
        # falls back to a per-seed loop plus a concatenation; k backwards over the retained
        # graph cost less CPU time (1.5x less on EfficientNet-Lite0, never more on plain
        # ReLU networks: bench/engine.py) and give the same numbers. Each backward walks the
        # whole graph below ``out`` once, though: over a few layers (the classifier, for a
        # thousand logits) vmap's single walk wins by far.
        last = len(seed) - 1
        per_seed = [
            torch.autograd.grad(
                out, inputs, s, retain_graph=keep_graph or i < last, allow_unused=True
            )
            for i, s in enumerate(seed)
        ]
        return tuple(
            None if per_seed[0][j] is None else torch.stack([g[j] for g in per_seed])
            for j in range(len(inputs))
        )

    def nbytes(self) -> int:
        """Approximate memory held: the recorded activations (the graph holds about as much)."""
        seen, total = set(), 0
        for t in self._acts.values():
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return 2 * total
