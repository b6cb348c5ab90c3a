"""The engine: one recorded forward per input, any number of rule-aware backwards.

:class:`Engine` wraps a model. :meth:`Engine.forward` runs it once with a forward hook on
every module (:class:`~.recorder.Recorder`) and returns a :class:`~.forward.Forward`,
which keeps the graph and puts the rule hooks on its rectifier nodes
(:func:`~cnnscope.engine.rules.attach_rules`) when a backward first needs them. The
engine also caches forwards, lists layers (:meth:`Engine.layers`) and keys every
weight-dependent cache (:meth:`Engine.weights_fingerprint`).

Nothing leaks into the caller's objects: hooks are removed, training flags restored and
the caller's input is copied, even when the model raises.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnscopeError
from .dataflow import Dataflow
from .fingerprint import WeightSamples, state_digest
from .forward import Forward
from .receptive import Field, ReceptiveFieldMode
from .recorder import Recorder, first_tensor, preserved
from .rules import RuleState
from .units import INPUT, LOGITS, resolve_layer, split_call

log = logging.getLogger(__name__)

_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()
_MODEL_FINGERPRINT = "cnnscope.engine.model_fingerprint"  # memo key: (quick token, digest)


@dataclass(frozen=True)
class LayerInfo:
    """An addressable layer: name, module type, output shape (no batch) and field."""

    name: str
    kind: str
    shape: tuple[int, ...]
    field: Field | None = None


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
        stop: dict[str, int] | None = None
        if truncate and layers is not None and LOGITS not in layers:
            stop = {}
            for base, call in map(split_call, layers):
                stop[base] = max(call, stop.get(base, 0))
            stop.pop(INPUT, None)
            only = frozenset(split_call(n)[0] for n in layers) - {INPUT}
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

    def model_fingerprint(self) -> str:
        """The full fingerprint of the model (:func:`~.fingerprint.state_digest`): the same
        for the same weights in any process, for what is written to files.

        Computed again only when :meth:`weights_fingerprint` changes; kept in :attr:`memo`.

        Examples
        --------
        >>> a = torch.nn.Linear(3, 2)
        >>> b = torch.nn.Linear(3, 2)
        >>> _ = b.load_state_dict(a.state_dict())
        >>> Engine(a).model_fingerprint() == Engine(b).model_fingerprint()
        True
        """
        quick = self.weights_fingerprint()
        known = self.memo.get(_MODEL_FINGERPRINT)
        if known is None or known[0] != quick:
            known = self.memo[_MODEL_FINGERPRINT] = (quick, state_digest(self.module))
        return known[1]

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
        recorder = Recorder(self._clone, only, stop)
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
        size = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else None

        def canonical(name: str) -> tuple[str, int]:
            full = self.resolve(name, size, x.shape[1]) if size is not None else name
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
                output = first_tensor(self.module(image))
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
        recorder = Recorder(set(), None)
        with self._lock, torch.set_grad_enabled(grad):
            acts = recorder.named(x, recorder.run(self.module, x, rf_mode))
        return acts, rf_mode

    def layer_names(self, input_size: tuple[int, int], channels: int = 3) -> list[str]:
        """Names of :meth:`layers`."""
        return [info.name for info in self.layers(input_size, channels)]

    def resolve(self, layer: str, input_size: tuple[int, int], channels: int = 3) -> str:
        """Canonical name of ``layer``, or ``UnknownLayerError`` with suggestions."""
        return resolve_layer(layer, self.layer_names(input_size, channels))


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


def model_fingerprint(module: nn.Module) -> str:
    """:meth:`Engine.model_fingerprint` of ``module``'s shared engine: SHA-256 of its class
    and state dict, cached while :func:`weights_fingerprint` holds.

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
    """
    return Engine.for_module(module).model_fingerprint()
