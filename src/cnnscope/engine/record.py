"""The engine: one recorded forward per input, any number of rule-aware backwards.

:class:`Engine` wraps a model. :meth:`Engine.forward` runs it once with a forward hook on
every module, puts the rule hooks on the rectifier nodes of the graph it made
(:func:`~cnnscope.engine.rules.attach_rules`), and returns a
:class:`Forward`, which keeps the graph. :meth:`Forward.grad` seeds a gradient at any
recorded layer (or the logits) and returns the gradient at any lower layer or the input,
under any backward rule; ``k`` seeds go through one batched backward.

Nothing leaks into the caller's objects: hooks are removed, training flags restored and
the caller's input is copied, even when the model raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnscopeError
from .dataflow import Dataflow
from .fingerprint import WeightSamples
from .receptive import Field, ReceptiveFieldMode
from .rules import RuleState, attach_rules, check_reach, check_rule, note
from .units import INPUT, LOGITS, split_call, unknown_layer

log = logging.getLogger(__name__)

_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True)
class LayerInfo:
    """An addressable layer: name, module type, output shape (no batch) and field."""

    name: str
    kind: str
    shape: tuple[int, ...]
    field: Field | None = None


def _first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        return next((t for t in map(_first_tensor, obj) if t is not None), None)
    if isinstance(obj, dict):
        return next((t for t in map(_first_tensor, obj.values()) if t is not None), None)
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

    def __init__(self, engine: Engine, x: torch.Tensor, output: torch.Tensor, acts, state):
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
        if rule != "gradient":
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
        if layer in self._acts:
            return layer
        base, call = split_call(layer)
        for candidate in (base if call == 1 else None, f"{base}#{call}"):
            if candidate in self._acts:
                return candidate
        raise unknown_layer(layer, self._acts)

    def below(self, lower: str, upper: str) -> bool:
        """Whether ``lower`` runs before ``upper`` in the forward pass."""
        return self._order[self.resolve(lower)] < self._order[self.resolve(upper)]

    def grad(
        self,
        seed_at: str,
        seed: torch.Tensor,
        to: str | Sequence[str] = INPUT,
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
        rule : {"gradient", "deconvnet", "guided", "guided_neg"}
            Backward rule of every rectifier on the way (docs/methods.md, backward rules).
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
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> fwd = Engine(net).forward(torch.randn(1, 3, 8, 8))
        >>> seed = torch.ones_like(fwd.activation("1"))
        >>> fwd.grad("1", seed, rule="guided").shape
        torch.Size([1, 3, 8, 8])
        """
        check_rule(rule)
        self._check_graph(keep_graph)
        single = isinstance(to, (str, torch.Tensor))
        targets = [to] if single else list(to)
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

    def grad_many(
        self,
        seeds: Mapping[str, torch.Tensor],
        to: str | Sequence[str] = INPUT,
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
        rule : {"gradient", "deconvnet", "guided", "guided_neg"}
            Backward rule of every rectifier on the way (docs/methods.md, backward rules).

        Examples
        --------
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
        targets = [to] if single else list(to)
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


class Engine:
    """Record activations of a model and backpropagate under ReLU rules.

    Parameters
    ----------
    module : nn.Module
        The model. It is never modified: it runs in eval mode and its training flags,
        parameters and hooks are as before after every call.
    cache_bytes : int
        Memory bound of the cache of recorded forwards (least recently used go first).
        Cached forwards are keyed on the input and :meth:`weights_fingerprint`.

    Attributes
    ----------
    memo : dict
        Per-model caches of other parts of cnnscope (LRP's rewritten copy, the default
        CAM layer), keyed by a tag of their owner: they live as long as the engine, and
        the shared engine (:meth:`for_module`) as long as its model. A value must not
        refer to the model, or it would keep the model alive.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    >>> engine = Engine(net)
    >>> [info.name for info in engine.layers((8, 8))]
    ['input', '0', '1', '2', 'logits']
    """

    def __init__(self, module: nn.Module, *, cache_bytes: int = 1 << 30):
        self._module = weakref.ref(module)
        self._owned: nn.Module | None = module  # a private engine keeps its model alive
        self.cache_bytes = cache_bytes
        self.memo: dict = {}  # see Attributes: no value may refer to the model
        self._samples = WeightSamples()
        self._lock = threading.RLock()
        self._clone: set[tuple[str, int]] = set()
        self._cache: OrderedDict[tuple, Forward] = OrderedDict()
        self._layers: dict[tuple[int, int], list[LayerInfo]] = {}
        self._flows: dict[tuple[int, int], Dataflow] = {}

    @classmethod
    def for_module(cls, module: nn.Module) -> Engine:
        """The shared engine of ``module`` (one per module object, so its cache is shared).

        The shared engine holds its model by a weak reference: it, its cache and its
        :attr:`memo` go away with the model.

        Examples
        --------
        >>> net = torch.nn.Conv2d(3, 4, 3)
        >>> Engine.for_module(net) is Engine.for_module(net)
        True
        """
        with _SHARED_LOCK:
            engine = _SHARED.get(module)
            if engine is None:
                engine = _SHARED[module] = cls(module)
                engine._owned = None  # a value of _SHARED must not keep its key alive
            return engine

    @property
    def module(self) -> nn.Module:
        """The model (raises ``CnnscopeError`` once a shared engine's model is gone)."""
        module = self._module()
        if module is None:
            raise CnnscopeError("the engine's model no longer exists")
        return module

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a parameterless model)."""
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: bool = True,
        layers: Collection[str] | None = None,
        grad: bool = True,
        truncate: bool = False,
    ) -> Forward:
        """Run (or reuse) the recorded forward pass of ``x`` (N x C x H x W).

        Parameters
        ----------
        x : torch.Tensor
            The input batch. The caller's tensor is copied, never modified.
        cache : bool
            Reuse a forward of the same values from a memory-bounded LRU cache.
        layers : collection of str, optional
            Record only these layers (faster); by default every module's output.
        grad : bool
            Keep the graph for :meth:`Forward.grad`. Without it the pass runs under
            ``torch.no_grad`` (for dataset passes that only read activations).
        truncate : bool
            With ``layers``: stop the pass as soon as every one of them is recorded,
            skipping the rest of the model (``logits`` and later layers are then absent
            unless asked for).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise CnnscopeError("the input must be a 4-D tensor N x C x H x W")
        only = None if layers is None else frozenset(split_call(n)[0] for n in layers)
        stop = None
        if truncate and layers is not None and LOGITS not in layers:
            stop = {}
            for base, call in map(split_call, layers):
                stop[base] = max(call, stop.get(base, 0))
            stop.pop(INPUT, None)
            only = only - {INPUT}
        key = None
        if cache:
            key = (self._key(x), self.weights_fingerprint(), only, grad, stop is not None)
        with self._lock:
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            fwd = self._record(x, only, grad, stop)
            if key is not None:
                fwd.shared = True
                self._cache[key] = fwd
                self._evict()
        return fwd

    def clear_cache(self) -> None:
        """Drop every cached forward."""
        with self._lock:
            self._cache.clear()

    def cached_bytes(self) -> int:
        """Memory held by the cache of forwards (approximate)."""
        with self._lock:
            return sum(f.nbytes() for f in self._cache.values())

    def _evict(self) -> None:
        while len(self._cache) > 1 and self.cached_bytes() > self.cache_bytes:
            self._cache.popitem(last=False)

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        data = x.detach().to("cpu", copy=False).contiguous()
        digest = hashlib.sha1(
            data.numpy().tobytes()
            if data.dtype != torch.bfloat16
            else data.float().numpy().tobytes()
        ).hexdigest()
        return (tuple(x.shape), str(x.dtype), digest)

    def weights_fingerprint(self) -> str:
        """A token of the model's weights: it changes when a parameter or buffer is
        replaced, edited in place, or written behind autograd's back (``p.data``).

        It keys the cache of forwards (and LRP's rewritten copy, and the index's model
        fingerprint). It reads about 64 values of each tensor, not all (that would cost
        10% of a forward): an edit through ``.data`` of unread values only (one pruned
        weight) goes unnoticed; call :meth:`clear_cache` after such an edit. Costs about
        3% of a forward pass of EfficientNet-Lite0 on CPU (``bench/lifetime.py``).

        Examples
        --------
        >>> engine = Engine(torch.nn.Linear(3, 2))
        >>> before = engine.weights_fingerprint()
        >>> _ = engine.module.weight.data.mul_(2)
        >>> before == engine.weights_fingerprint()
        False
        """
        return self._samples.digest(self.module)

    def _record(self, x: torch.Tensor, only, grad: bool, stop=None) -> Forward:
        fwd, mutated = self._record_once(x, only, grad, stop)
        if mutated - self._clone:
            # In-place ops overwrote some recorded outputs: give those a private copy.
            log.debug("cloning outputs mutated in place: %s", sorted(mutated))
            self._clone |= mutated
            fwd, _ = self._record_once(x, only, grad, stop)
        return fwd

    def _record_once(self, x: torch.Tensor, only, grad: bool, stop=None) -> tuple[Forward, set]:
        state = RuleState()
        image = x.detach().to(self.device).clone().requires_grad_(grad)
        recorder = _Recorder(self._clone, only, stop)
        with self._lock, torch.set_grad_enabled(grad):
            output = recorder.run(self.module, image)
        acts = recorder.named(image, output)
        return Forward(self, image, acts.get(LOGITS), acts, state), recorder.mutated()

    def intervene(
        self,
        x: torch.Tensor,
        edits: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
        read: Sequence[str] = (LOGITS,),
    ) -> dict[str, torch.Tensor]:
        """Run ``x`` with some layers' outputs replaced, and read other layers.

        A forward pass without graph or cache: each ``edits[layer]`` receives that
        layer's output (batch first) and returns the tensor used downstream instead.
        Use it for ablations, e.g. zeroing channels, with one row of ``x`` per variant.

        Parameters
        ----------
        x : torch.Tensor
            The input batch (N x C x H x W); the caller's tensor is not modified.
        edits : mapping of layer name to callable
            ``fn(output) -> new output`` per layer (``input`` edits the input itself).
        read : sequence of str
            Layers whose (edited) outputs are returned; ``logits`` is the model output.

        Returns
        -------
        dict of str to torch.Tensor
            Detached copies of the ``read`` layers' outputs, keyed as given.

        Examples
        --------
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> def zero(t):
        ...     return t * 0
        >>> out = Engine(net).intervene(torch.randn(2, 3), {"1": zero}, read=["1", "logits"])
        >>> out["1"].abs().sum().item()
        0.0
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise CnnscopeError("the input must be a batch tensor N x ...")
        size = tuple(x.shape[-2:]) if x.dim() == 4 else None
        names = self.layer_names(size, x.shape[1]) if size else None

        def canonical(name: str) -> tuple[str, int]:
            full = self.resolve(name, size, x.shape[1]) if names is not None else name
            return split_call(full)

        edit_at = {canonical(n): fn for n, fn in edits.items() if n not in (INPUT, LOGITS)}
        read_at = {canonical(n): n for n in read if n not in (INPUT, LOGITS)}
        calls: dict[str, int] = defaultdict(int)
        out: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(_module, _inputs, output):
                calls[name] += 1
                key = (name, calls[name])
                if not isinstance(output, torch.Tensor):
                    return None
                if key in edit_at:
                    output = edit_at[key](output)
                if key in read_at:
                    out[read_at[key]] = output.detach().clone()
                return output if key in edit_at else None

            return hook

        wanted = {n for n, _ in edit_at} | {n for n, _ in read_at}
        image = x.detach().to(self.device).clone()
        if INPUT in edits:
            image = edits[INPUT](image)
        handles = []
        with self._lock, preserved(self.module), torch.no_grad():
            try:
                for name, sub in self.module.named_modules():
                    if name in wanted:
                        handles.append(sub.register_forward_hook(hook_for(name)))
                output = _first_tensor(self.module(image))
            finally:
                for handle in handles:
                    handle.remove()
        if output is None:
            raise CnnscopeError("the model returned no tensor")
        if LOGITS in edits:
            output = edits[LOGITS](output)
        if INPUT in read:
            out[INPUT] = image.detach().clone()
        if LOGITS in read:
            out[LOGITS] = output.detach().clone()
        return {n: out[n] for n in read if n in out}

    def layers(self, input_size: tuple[int, int], channels: int = 3) -> list[LayerInfo]:
        """Every addressable layer for inputs of ``input_size`` (H, W), in execution order."""
        size = (int(input_size[0]), int(input_size[1]))
        if size not in self._layers:
            self._layers[size] = self._trace_layers(size, channels)
        return self._layers[size]

    def dataflow(self, input_size: tuple[int, int], channels: int = 3) -> Dataflow | None:
        """Which layers feed or go around which (:class:`~.dataflow.Dataflow`), read in
        the trace of :meth:`layers`; None where the trace could not run with autograd."""
        self.layers(input_size, channels)
        return self._flows.get((int(input_size[0]), int(input_size[1])))

    def _trace_layers(self, size, channels) -> list[LayerInfo]:
        # with autograd, for the dataflow; an in-place op on the input forbids it. Not for
        # TorchScript: no hooks to read, and grad runs make its executor fuse activations
        grad = not isinstance(self.module, torch.jit.ScriptModule)
        try:
            acts, rf_mode = self._trace(size, channels, grad)
            if grad:
                self._flows[size] = Dataflow(acts, acts[LOGITS], acts[INPUT])
        except RuntimeError as exc:
            if not grad:
                raise
            log.debug("layer trace without autograd (no dataflow): %s", exc)
            acts, rf_mode = self._trace(size, channels, grad=False)
        modules = dict(self.module.named_modules())
        infos = []
        for name, tensor in acts.items():
            base = split_call(name)[0]
            kind = type(modules[base]).__name__ if base in modules and base else name
            infos.append(LayerInfo(name, kind, tuple(tensor.shape[1:]), rf_mode.field(tensor)))
        return infos

    def _trace(self, size, channels, grad: bool) -> tuple[dict, ReceptiveFieldMode]:
        x = torch.zeros(1, channels, *size, device=self.device, requires_grad=grad)
        rf_mode = ReceptiveFieldMode(x)
        recorder = _Recorder(set(), None)
        with self._lock, torch.set_grad_enabled(grad):
            acts = recorder.named(x, recorder.run(self.module, x, rf_mode))
        return acts, rf_mode

    def layer_names(self, input_size: tuple[int, int], channels: int = 3) -> list[str]:
        """Names of :meth:`layers`."""
        return [info.name for info in self.layers(input_size, channels)]

    def resolve(self, layer: str, input_size: tuple[int, int], channels: int = 3) -> str:
        """Canonical name of ``layer``, or ``UnknownLayerError`` with suggestions."""
        names = self.layer_names(input_size, channels)
        if layer in names:
            return layer
        base, call = split_call(layer)
        for candidate in (base if call == 1 else None, f"{base}#{call}"):
            if candidate in names:
                return candidate
        raise unknown_layer(layer, names)


def weights_fingerprint(module: nn.Module) -> str:
    """:meth:`Engine.weights_fingerprint` of ``module``'s shared engine.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> before = weights_fingerprint(net)
    >>> before == weights_fingerprint(net)
    True
    >>> with torch.no_grad():
    ...     _ = net.bias.add_(1)
    >>> before == weights_fingerprint(net)
    False
    """
    return Engine.for_module(module).weights_fingerprint()


class _Truncated(Exception):
    """Raised by a recording hook to end a truncated forward pass early."""


class _Recorder:
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
                    output = _first_tensor(module(x))
            except _Truncated:
                return None
            finally:
                for handle in handles:
                    handle.remove()
        if output is None:
            raise CnnscopeError("the model returned no tensor")
        return output

    def named(self, x: torch.Tensor, output: torch.Tensor) -> dict[str, torch.Tensor]:
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
