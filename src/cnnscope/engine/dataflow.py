"""Which recorded layers feed or go around which: the autograd graph of one forward.

Read once, in the engine's layer trace, and kept as a small graph over the recorded
calls (the full autograd graph is dropped): a layer whose output the model's output also
bypasses is no cut of the network (one branch of several, a dense layer).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class Dataflow:
    """The recorded calls as a graph: each call's nearest recorded calls below it.

    Calls that share an output (a ``Sequential`` and its last child) are one vertex.

    Examples
    --------
    >>> x = torch.zeros(1, 2, requires_grad=True)
    >>> a, b = x * 2, x * 3
    >>> flow = Dataflow({"input": x, "a": a, "b": b}, a + b, x)
    >>> flow.bypassed("a"), flow.feeds("a", "b")
    (True, False)
    """

    def __init__(self, acts: Mapping[str, torch.Tensor], output: torch.Tensor, x: torch.Tensor):
        self._vertex: dict[str, int] = {}
        marks: dict[int, int] = {}  # graph node id -> vertex
        for name, tensor in acts.items():
            node = tensor.grad_fn
            if node is not None:
                self._vertex[name] = marks.setdefault(id(node), len(marks))
        self._input = len(marks)
        self._below: dict[int, set[int]] = {}  # vertex -> nearest vertices below
        self._output = self._nearest(output.grad_fn, marks, x)

    def _nearest(self, top, marks: dict[int, int], x: torch.Tensor) -> set[int]:
        """Nearest vertices below ``top`` (itself if marked); fills ``_below`` on the way."""
        memo: dict[int, set[int]] = {}
        stack = [(top, False)]
        while stack:
            node, done = stack.pop()
            key = id(node)
            if key in memo:
                continue
            nexts = [n for n, _ in node.next_functions if n is not None]
            if not done:
                stack.append((node, True))
                stack += [(n, False) for n in nexts if id(n) not in memo]
                continue
            below = set()
            for n in nexts:
                below |= memo[id(n)]
            if getattr(node, "variable", None) is x:
                below = {self._input}
            if key in marks:
                self._below[marks[key]] = below
                below = {marks[key]}
            memo[key] = below
        return memo[id(top)] if top is not None else set()

    def _reaches(self, start: set[int], goal: int, avoid: int | None = None) -> bool:
        seen, todo = set(), [v for v in start if v != avoid]
        while todo:
            v = todo.pop()
            if v == goal:
                return True
            if v in seen:
                continue
            seen.add(v)
            todo += [u for u in self._below.get(v, ()) if u != avoid]
        return False

    def known(self, name: str) -> bool:
        """Whether ``name``'s output is on the graph."""
        return name in self._vertex

    def bypassed(self, name: str) -> bool:
        """Whether the output depends on the input other than through ``name``'s output."""
        if name not in self._vertex:
            return False
        return self._reaches(self._output, self._input, avoid=self._vertex[name])

    def feeds(self, lower: str, upper: str) -> bool:
        """Whether ``upper``'s output depends on ``lower``'s (True when either is unknown)."""
        if lower not in self._vertex or upper not in self._vertex:
            return True
        low, up = self._vertex[lower], self._vertex[upper]
        return low == up or self._reaches(self._below.get(up, set()), low)
