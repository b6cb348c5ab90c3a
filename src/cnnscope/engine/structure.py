"""The cuts of a network: where its trunk changes resolution or stage.

A model is read from one recorded forward: every module call with its output shape, in
the order the outputs appear. The *trunk* is the model's top-level module calls, with
pipelines opened up: an ``nn.Sequential`` whose children change resolution, or any
container whose children span three resolutions or more (a backbone, not a block). Any
other module with children (a residual block, an Inception block, a dense block) is
one step of the trunk, and its insides (branches) are never cuts.

A *cut* is a trunk step with a ``C x H x W`` output that is the last one at its
resolution, an explicit stage (an ``nn.Sequential`` step), or the last of a run of
blocks of one type (a dense block before its transition, Mixed_5d before Mixed_6a).

Given the input's shape, the trunk is first checked on the engine's dataflow (the
autograd graph of its layer trace, :class:`~.dataflow.Dataflow`): a step that the output
also bypasses and that does not feed the step after it (or is not fed by the one before)
is a parallel branch, such as the Inception branches a model's own ``forward``
concatenates. Branches are no steps: their concatenation is no module's output, so the
cut is the nearest step that every path to the output crosses (the stem before them).
:func:`default_chain_of` and :func:`default_cam_layer` are both read from the cuts.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

from torch import nn

from ..errors import CnnscopeError
from .dataflow import Dataflow
from .record import Engine
from .units import INPUT, LOGITS, split_call

log = logging.getLogger(__name__)

#: One module call: its layer name (``name`` or ``name#k``) and output shape, no batch.
Call = tuple[str, tuple[int, ...]]


def call_names(modules: Sequence[str]) -> list[str]:
    """Layer names of module calls in order, as the engine names them (``name#k``).

    Example
    -------
    >>> call_names(["conv", "relu", "conv2", "relu"])
    ['conv', 'relu#1', 'conv2', 'relu#2']
    """
    total = defaultdict(int, {m: modules.count(m) for m in set(modules)})
    seen: dict[str, int] = defaultdict(int)
    names = []
    for m in modules:
        seen[m] += 1
        names.append(m if total[m] == 1 else f"{m}#{seen[m]}")
    return names


def cuts(
    module: nn.Module, calls: Sequence[Call], flow: Dataflow | Sequence[int] | None = None
) -> list[str]:
    """The cuts of ``module`` (see the module docstring), shallowest first.

    Parameters
    ----------
    module
        The network.
    calls
        Its recorded module calls, in output order (``input`` and ``logits`` are ignored).
    flow
        The calls' :class:`~.dataflow.Dataflow`, or the input's ``C x H x W`` (or an
        ``input`` entry in ``calls``) to read it from the engine's layer trace: parallel
        branches are then dropped from the trunk; else not.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1))
    >>> cuts(net, [("0", (4, 6, 6)), ("1", (4, 6, 6)), ("2", (4, 3, 3)), ("3", (4, 3, 3))])
    ['1', '3']
    """
    if not isinstance(flow, Dataflow):
        flow = _dataflow(module, flow or dict(calls).get(INPUT))
    calls = _channels_first(module, [(n, tuple(s)) for n, s in calls if n not in (INPUT, LOGITS)])
    trunk = _Trunk(module, calls)
    steps = trunk.steps()
    if flow is not None:
        branches = _parallel(flow, [calls[i][0] for i in steps])
        steps = [i for i in steps if calls[i][0] not in branches]
    kinds = [_kind(trunk.module_of(calls[i][0])) for i in steps]
    found = []
    for k, i in enumerate(steps):
        size = _size(calls[i][1])
        if size is None:
            continue
        last = k + 1 == len(steps)
        resolution_ends = last or _size(calls[steps[k + 1]][1]) != size
        run_ends = kinds[k] != "leaf" and (last or kinds[k + 1] != kinds[k])
        if resolution_ends or run_ends or kinds[k] == "stage":
            found.append(calls[i][0])
    return found


def default_chain_of(
    module: nn.Module,
    calls: Sequence[Call],
    logits: str | None,
    flow: Dataflow | Sequence[int] | None = None,
) -> list[str]:
    """A tree chain: the ``logits`` layer, then the cuts, deepest first.

    ``flow`` (a :class:`~.dataflow.Dataflow` or the input's ``C x H x W``): drop
    parallel branches (:func:`cuts`).

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(1), nn.Linear(72, 3))
    >>> default_chain_of(net, [("0", (2, 6, 6)), ("1", (72,)), ("2", (3,))], "2")
    ['2', '0']
    """
    chain = [logits] if logits else []
    return chain + [c for c in reversed(cuts(module, calls, flow)) if c not in chain]


def cam_layer_of(module: nn.Module, calls: Sequence[Call], before: str | None = None) -> str:
    """The last cut with a map larger than 1 x 1 (recorded before ``before``, if given).

    Without such a cut, the last leaf module's map larger than 1 x 1; ``CnnscopeError``
    when there is none. With an ``input`` entry in ``calls`` (the engine's trace), the
    cuts leave out parallel branches (:func:`cuts`): a branch is no CAM layer.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    >>> cam_layer_of(net, [("0", (4, 6, 6)), ("1", (4, 6, 6)), ("2", (4, 1, 1))])
    '1'
    """
    input_shape = dict(calls).get(INPUT)
    calls = _channels_first(module, [(n, tuple(s)) for n, s in calls if n not in (INPUT, LOGITS)])
    names = [n for n, _ in calls]
    stop = names.index(before) if before in names else len(names)
    spatial = {n for n, s in calls[:stop] if len(s) == 3 and s[1] * s[2] > 1}
    found = [c for c in cuts(module, calls, input_shape) if c in spatial]
    if not found:
        modules = dict(module.named_modules())
        leaves = [n for n in names[:stop] if not _has_children(modules.get(split_call(n)[0]))]
        found = [n for n in leaves if n in spatial]
    if not found:
        raise CnnscopeError("the model has no layer with a spatial map: give a layer")
    return found[-1]


def default_cam_layer(
    engine: Engine, input_size: tuple[int, int], channels: int = 3, before: str | None = None
) -> str:
    """The default layer of Grad-CAM and other CAM methods (:func:`cam_layer_of`).

    Read from the engine's layer trace (no extra forward) and remembered per model.

    Example
    -------
    >>> from cnnscope.models import load_model
    >>> default_cam_layer(Engine.for_module(load_model().module), (224, 224))
    'head_act'
    """
    key = ("default_cam_layer", tuple(input_size), channels, before)
    known = engine.memo  # per model, and gone with it
    if key not in known:
        infos = engine.layers(input_size, channels)
        calls = [(info.name, info.shape) for info in infos]
        known[key] = cam_layer_of(engine.module, calls, before)
        log.debug("default CAM layer: %s", known[key])
    return known[key]


class _Trunk:
    """The trunk steps of a model: indices into its calls, in order."""

    def __init__(self, module: nn.Module, calls: list[Call]):
        self.modules = dict(module.named_modules())
        self.calls = calls
        self.by_module: dict[str, list[int]] = defaultdict(list)
        for i, (name, _) in enumerate(calls):
            self.by_module[split_call(name)[0]].append(i)
        self._steps: dict[str, list[int]] = {}

    def module_of(self, name: str) -> nn.Module | None:
        return self.modules.get(split_call(name)[0])

    def steps(self, name: str = "") -> list[int]:
        if name not in self._steps:
            self._steps[name] = self._find_steps(name)
        return self._steps[name]

    def _find_steps(self, name: str) -> list[int]:
        out: list[int] = []
        for child, sub in self.modules[name].named_children() if name in self.modules else ():
            child = f"{name}.{child}" if name else child
            made = self.by_module.get(child, [])
            out += self.steps(child) if not made or self._opens(child, sub, made) else made
        return sorted(out)

    def _opens(self, name: str, sub: nn.Module, made: list[int]) -> bool:
        """Whether a called module is a pipeline of trunk steps rather than one step."""
        if len(made) != 1 or not _has_children(sub):
            return False
        sizes = {_size(self.calls[i][1]) for i in self.steps(name)}
        return len(sizes) >= 3 or (isinstance(sub, nn.Sequential) and len(sizes) > 1)


def _parallel(flow: Dataflow, names: list[str]) -> set[str]:
    """The trunk steps ``names`` that are parallel branches (module docstring)."""
    out = set()
    for k, name in enumerate(names):
        alone = (k > 0 and not flow.feeds(names[k - 1], name)) or (
            k + 1 < len(names) and not flow.feeds(name, names[k + 1])
        )
        if alone and flow.bypassed(name):
            log.debug("trunk step %s is a parallel branch: no cut", name)
            out.add(name)
    return out


def _dataflow(module: nn.Module, input_shape: Sequence[int] | None) -> Dataflow | None:
    """The engine's dataflow of ``module`` for inputs of ``input_shape`` (C x H x W)."""
    if input_shape is None or len(input_shape) != 3:
        return None
    c, h, w = (int(n) for n in input_shape)
    try:
        return Engine.for_module(module).dataflow((h, w), c)
    except Exception as exc:  # a refinement of the choice: never why a model fails to load
        log.debug("no dataflow check of the trunk: %s", exc)
        return None


def _channels_first(module: nn.Module, calls: list[Call]) -> list[Call]:
    """``calls`` with channels-last outputs (N x H x W x C) read as flat vectors: no maps.

    A Linear, or a plain LayerNorm over one dimension, on a 4-d tensor works on its last
    dimension (ConvNeXt's ``pwconv1``, ``norm``); so does each call right after one with
    the same output shape (the activation between two such Linears).
    """
    modules, out, prev = dict(module.named_modules()), [], None
    for name, shape in calls:
        m = modules.get(split_call(name)[0])
        width = getattr(m, "out_features", None) if isinstance(m, nn.Linear) else None
        if type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
            width = m.normalized_shape[0]
        last = len(shape) == 3 and (shape[-1] == width or shape == prev)
        prev = shape if last else None
        out.append((name, (math.prod(shape),) if last else shape))
    return out


def _has_children(sub: nn.Module | None) -> bool:
    return sub is not None and next(sub.children(), None) is not None


def _kind(sub: nn.Module | None) -> str:
    if not _has_children(sub):
        return "leaf"
    return "stage" if isinstance(sub, nn.Sequential) else type(sub).__name__


def _size(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The spatial size of a ``C x H x W`` output, else ``None``."""
    return tuple(shape[1:]) if len(shape) == 3 else None
