"""What the class-graph pass adds up, image by image, for one class ``t``.

For an image ``n``, the chain layers ``L_0`` (top, next to the logits) ... ``L_m``
(bottom), with ``A_L`` a layer's output (batch of one: ``C x H x W`` or ``C``), the class
score ``y = logit_t`` and ``G_L = dy/dA_L`` (under the backward ``rule``, the true
gradient by default), the pass adds, over the images it keeps:

- **images** ``+= 1`` and **logit** ``+= y``;
- **activation** ``act[L, c] += max_p S_L[c, p]``: the unit's strength
  (:func:`cnnscope.engine.strengths`: the spatial maximum of its pre-activation);
- **influence** ``inf[L, c] += sum_p A_L[c, p] * G_L[c, p]``: the unit's first-order
  contribution to the class score (the tree's child weight of a logit root, summed
  over positions instead of averaged);
- **top count** ``top[L, c] += 1`` when ``c`` is among the image's ``edge_k`` units of
  ``L`` with the largest influence (Summit's per-image counting);
- for each pair of adjacent chain layers ``U`` (upper) and ``D`` (lower), and each of
  the image's ``edge_k`` top units ``u`` of ``U``, the **edge**
  ``edge[U, u, c] += sum_p A_D[c, p] * H_u[c, p]`` for every channel ``c`` of ``D``,
  where ``H_u = d<G_U * 1_u, A_U>/dA_D`` is the gradient at ``D`` of ``u``'s part of the
  class evidence (the class gradient at ``U`` kept on channel ``u`` only, held fixed,
  and backpropagated to ``D`` under ``rule``): how much ``c`` feeds ``u``'s
  contribution to the class. ``edge_count[U, u] += 1`` counts the images that
  contributed. Where the block between ``D`` and ``U`` is piecewise linear and without
  bias (ReLU, conv, no BN shift), ``sum_c edge[U, u, c]`` is ``u``'s influence over those
  images.

Every term is a float64 sum of float32 products of activations and gradients; the totals are
:class:`~cnnscope.graph.sums.ExactSums`, so they merge exactly. Each unit also keeps
its top images by influence (:class:`~cnnscope.index.merge.RunningTopK`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..engine import LOGITS, Engine, recorded_layers, strength_layer, strengths
from ..index.merge import RunningTopK
from .sums import ExactSums

__all__ = ["GraphState", "Terms", "batch_terms", "sum_shapes"]


@dataclass
class Terms:
    """One batch's per-image terms (only the first ``n`` rows are real images).

    ``activation[i]``, ``influence[i]`` and ``position[i]`` are ``N x C_i`` (chain layer
    ``i``); ``top[i]`` is ``N x edge_k`` (the image's top units of layer ``i``, best
    first); ``edges[i]`` is ``edge_k x N x C_{i+1}`` (pair ``i``: layer ``i`` over
    ``i + 1``); ``predicted`` (top class) and ``score`` (the class logit, float64) are ``N``.
    """

    activation: list[torch.Tensor]
    influence: list[torch.Tensor]
    position: list[torch.Tensor]
    top: list[torch.Tensor]
    edges: list[torch.Tensor]
    predicted: torch.Tensor
    score: torch.Tensor


def _spatial_sum(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum over positions of a * g`` (``N x C x ...`` each), accumulated in float64."""
    prod = a * g  # float32 products (exact to 2**-24 relative), summed in float64
    return prod.reshape(*prod.shape[:2], -1).sum(-1, dtype=torch.float64)


def _strength_at(fwd, layer: str, cache: dict[str, str] | None) -> str:
    """A layer whose strengths are ``layer``'s: its pre-activation where reading that one
    costs no check of its own (decided once per pass in ``cache``), else ``layer``."""
    if cache is None:
        return layer
    if layer not in cache:
        at = strength_layer(fwd, layer)
        cache[layer] = at if at == layer or strength_layer(fwd, at) == at else layer
    return cache[layer]


def batch_terms(
    engine: Engine,
    chain: Sequence[str],
    target: int,
    x: torch.Tensor,
    *,
    edge_k: int,
    rule: str = "gradient",
    strength_at: dict[str, str] | None = None,
) -> Terms:
    """The per-image terms of one batch ``x`` for class ``target`` (see the module docs).

    One recorded forward, one backward from the class logit to every chain layer, and
    per pair of adjacent layers ``edge_k`` seeded backwards over the block between them. ``strength_at``
    (a dict kept across the batches of a pass) caches where each layer's strength is read,
    which the engine otherwise checks on every forward.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
    ...     torch.nn.Conv2d(4, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    >>> _ = net(torch.zeros(1, 3, 8, 8))
    >>> t = batch_terms(Engine(net), ["3", "1"], 2, torch.randn(2, 3, 8, 8), edge_k=2)
    >>> t.influence[0].shape, t.edges[0].shape, t.top[1].shape
    (torch.Size([2, 5]), torch.Size([2, 2, 4]), torch.Size([2, 2]))
    """
    size = (int(x.shape[-2]), int(x.shape[-1]))
    fwd = engine.forward(
        x, cache=False, layers=recorded_layers(engine, chain, size, x.shape[1]), grad=True
    )
    if fwd.input.device.type == "cpu":
        # the k seeds of a pair span a whole block although few layers are recorded, where
        # the engine's "auto" would vmap: k backwards cost half as much on CPU (bench/graph.py)
        fwd.batch_strategy = "loop"
    logits = fwd.activation(LOGITS)
    seed = torch.zeros_like(logits)
    seed[:, target] = 1.0
    grads = fwd.grad(LOGITS, seed, to=list(chain), rule=rule)
    acts = [fwd.activation(layer) for layer in chain]
    influence = [_spatial_sum(a, g) for a, g in zip(acts, grads)]
    activation, position = [], []
    for layer in chain:
        values, pos = strengths(fwd, _strength_at(fwd, layer, strength_at))
        activation.append(values.to(torch.float64))
        position.append(pos)
    top = []
    for inf in influence:
        k = min(int(edge_k), inf.shape[1])
        top.append(torch.sort(inf, dim=1, descending=True, stable=True).indices[:, :k])
    edges = []
    for i in range(len(chain) - 1):
        g, idx = grads[i], top[i]
        seeds = torch.zeros((idx.shape[1], *g.shape), dtype=g.dtype, device=g.device)
        rows = torch.arange(g.shape[0], device=g.device)
        for j in range(idx.shape[1]):
            seeds[j, rows, idx[:, j]] = g[rows, idx[:, j]]
        last = i == len(chain) - 2
        h = fwd.grad(chain[i], seeds, to=chain[i + 1], rule=rule, batched=True, keep_graph=not last)
        edges.append(torch.stack([_spatial_sum(acts[i + 1], hj) for hj in h]))
    return Terms(
        activation, influence, position, top, edges, logits.argmax(1), logits[:, target].double()
    )


def sum_shapes(channels: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The name and shape of every sum of a pass over chain layers of ``channels`` units.

    Examples
    --------
    >>> sum_shapes([4, 3])["E0.weight"]
    (4, 3)
    """
    shapes: dict[str, tuple[int, ...]] = {"images": (1,), "logit": (1,)}
    for i, c in enumerate(channels):
        for name in ("activation", "influence", "top"):
            shapes[f"L{i}.{name}"] = (int(c),)
    for i in range(len(channels) - 1):
        shapes[f"E{i}.weight"] = (int(channels[i]), int(channels[i + 1]))
        shapes[f"E{i}.count"] = (int(channels[i]),)
    return shapes


class GraphState:
    """The running totals of a class-graph pass (see the module docs for each sum).

    Parameters
    ----------
    channels : sequence of int
        Units of each chain layer, top first.
    examples : int
        Top images kept per unit (by influence).
    device : torch.device or str
        Where the state lives.
    """

    def __init__(self, channels: Sequence[int], examples: int, device: torch.device | str = "cpu"):
        self.channels = [int(c) for c in channels]
        self.device = torch.device(device)
        self.sums = ExactSums(sum_shapes(self.channels), self.device)
        self.examples = RunningTopK(
            {f"L{i}": c for i, c in enumerate(self.channels)}, int(examples), self.device
        )

    def reset(self) -> None:
        """Forget everything."""
        self.sums.reset()
        self.examples.reset()

    def add(self, terms: Terms, keep: torch.Tensor, numbers: torch.Tensor) -> None:
        """Add the rows ``keep`` (a bool mask over the batch) of ``terms``.

        ``numbers`` are the kept images' numbers in the graph's table (for the examples).
        """
        keep = keep.to(self.device)
        if not bool(keep.any()):
            return
        s = self.sums
        s.add("images", torch.ones(int(keep.sum()), 1, dtype=torch.float64))
        s.add("logit", terms.score[keep][:, None])
        for i in range(len(self.channels)):
            inf = terms.influence[i][keep]
            s.add(f"L{i}.activation", terms.activation[i][keep])
            s.add(f"L{i}.influence", inf)
            top = terms.top[i][keep]
            ones = torch.ones(top.numel(), dtype=torch.float64, device=self.device)
            s.add_at(f"L{i}.top", top.reshape(-1), ones)
            self.examples.update(
                f"L{i}", inf.to(torch.float32), terms.position[i][keep], numbers.to(self.device)
            )
        for i, e in enumerate(terms.edges):
            top = terms.top[i][keep]
            for j in range(top.shape[1]):
                s.add_at(f"E{i}.weight", top[:, j], e[j][keep])
                ones = torch.ones(top.shape[0], dtype=torch.float64, device=self.device)
                s.add_at(f"E{i}.count", top[:, j], ones)

    def merge(self, other: GraphState) -> None:
        """Fold another partial state of the same shape into this one."""
        self.sums.merge(other.sums)
        self.examples.merge(other.examples)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Raw state, for checkpoints and gathers."""
        return {**self.sums.state_arrays("S."), **self.examples.state_arrays()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`state_arrays` (ValueError on a shape mismatch)."""
        self.sums.load_state_arrays(arrays, "S.")
        self.examples.load_state_arrays(arrays)

    def saved_arrays(self) -> dict[str, np.ndarray]:
        """The state as saved in a graph: the sums' limbs and decoded examples."""
        out = self.sums.state_arrays("S.")
        for i in range(len(self.channels)):
            for f, arr in self.examples.arrays(f"L{i}").items():
                if f in ("activation", "image", "y"):
                    out[f"X{i}.{'position' if f == 'y' else f}"] = arr
        return out

    def load_saved(self, arrays: Mapping[str, np.ndarray], remap=None) -> None:
        """Inverse of :meth:`saved_arrays`; ``remap`` renumbers images (increasing)."""
        self.sums.load_state_arrays(arrays, "S.")
        for i in range(len(self.channels)):
            fields = {
                "activation": arrays[f"X{i}.activation"],
                "image": arrays[f"X{i}.image"],
                "y": arrays[f"X{i}.position"],
                "x": np.zeros_like(arrays[f"X{i}.position"]),
            }
            self.examples.load_arrays(f"L{i}", fields, 1, remap=remap)
