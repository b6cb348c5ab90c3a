"""The per-call context: everything a method function needs, and nothing else.

:func:`~cnnscope.attribution.attribute` builds one :class:`Context` per call. It holds
the engine, the input batch and the targets, and the helpers that batch and chunk the
work (:meth:`Context.input_gradients`, :meth:`Context.scores_of`). No method touches
the model directly: every gradient comes from :meth:`cnnscope.engine.Forward.grad` and
every plain forward from :meth:`cnnscope.engine.Engine.forward`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..engine import INPUT, LOGITS, Engine, Forward, structure
from ..engine.units import split_call
from ..errors import CnnscopeError, warn_renamed
from ..models import LoadedModel
from .targets import Target, complete_targets, parse_targets, resolve_layer_name

__all__ = ["DEFAULT_MEMORY", "Context", "upsample"]

#: Default memory budget of one chunk of inner samples (bytes).
DEFAULT_MEMORY = 2 << 30
#: Largest automatic chunk on CPU and on CUDA (bigger batches stop paying off).
_CPU_CAP, _CUDA_CAP = 16, 64


class Context:
    """Everything a method needs for one call: engine, inputs, targets and chunking.

    :func:`~cnnscope.attribution.attribute` builds it. Methods read ``ctx.x``
    (N x 3 x H x W on the model's device), ``ctx.targets`` and the options, and call
    the helpers below, which batch the work over images and inner samples in chunks of
    at most :attr:`batch_size` rows.

    Examples
    --------
    >>> ctx = Context(torch.nn.Conv2d(3, 2, 1), torch.ones(1, 3, 8, 8), 0)
    >>> ctx.n, ctx.size, ctx.target_layer
    (1, (8, 8), 'logits')
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        target,
        *,
        loaded: LoadedModel | None = None,
        quirks: bool = False,
        legacy: bool | None = None,
        batch_size: int | None = None,
        max_memory: int | None = None,
        progress: bool = False,
    ):
        self.module = module
        self.loaded = loaded
        self.engine = Engine.for_module(module)
        self.device = self.engine.device
        self.x = x.detach().to(self.device, torch.float32)
        self.n = int(self.x.shape[0])
        self.size = (int(self.x.shape[-2]), int(self.x.shape[-1]))
        if legacy is not None:
            warn_renamed("Context(legacy=...)", "Context(quirks=...)")
        #: Reproduce pytorch-cnn-visualizations' quirks (``attribute(..., quirks=True)``).
        self.quirks = bool(quirks or legacy)
        self.progress = bool(progress)
        self.max_memory = int(max_memory or DEFAULT_MEMORY)
        if batch_size is not None and int(batch_size) < 1:
            raise CnnscopeError(f"batch_size must be >= 1, got {batch_size}")
        self._batch_size = None if batch_size is None else int(batch_size)
        self._targets: list[Target] | None = None
        self._requested = parse_targets(target, self.n, module, loaded)
        self._scores: torch.Tensor | None = None

    @property
    def legacy(self) -> bool:
        """Deprecated name of :attr:`quirks` (a ``DeprecationWarning``)."""
        warn_renamed("Context.legacy", "Context.quirks")
        return self.quirks

    # ---- targets -------------------------------------------------------------------

    @property
    def target_layer(self) -> str:
        """Layer where the targets' seeds go (``logits`` for classes)."""
        for t in self._requested:
            if t is not None:
                return t.layer
        return LOGITS

    @property
    def targets(self) -> list[Target]:
        """The resolved target of each image (top-1 classes are found on first use)."""
        if self._targets is None:
            self.resolve_targets()
        return self._targets  # type: ignore[return-value]

    def resolve_targets(self, fwd: Forward | None = None) -> list[Target]:
        """Fix the targets, taking top-1 classes from ``fwd`` (or one plain forward)."""
        if self._targets is not None:
            return self._targets
        layer = self.target_layer
        if fwd is not None and (layer == LOGITS or layer in fwd.layers):
            out = fwd.activation(layer)
        else:
            out = self.plain(self.x, layer)
        targets = complete_targets(self._requested, out, self.loaded)
        self._targets = targets
        self._scores = self._score_rows(out, list(range(self.n))).detach().float().cpu()
        return targets

    @property
    def scores(self) -> torch.Tensor:
        """The target score of each image (logit, or unit value), on the CPU."""
        self.targets  # noqa: B018 - resolves and fills the scores
        return self._scores  # type: ignore[return-value]

    def seeds(self, rows: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        """Seeds for rows that belong to images ``rows`` (k x *shape)."""
        targets = self.targets
        cache: dict[int, torch.Tensor] = {}
        out = []
        for r in rows:
            if r not in cache:
                cache[r] = targets[r].seed(shape)
            out.append(cache[r])
        return torch.stack(out).to(self.device)

    def _score_rows(self, out: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        seed = self.seeds(rows, out.shape[1:])
        return (out * seed).flatten(1).sum(1)

    # ---- layers --------------------------------------------------------------------

    def resolve_layer(self, name: str) -> str:
        """Check a layer name (``UnknownLayerError`` with suggestions)."""
        if not isinstance(name, str):
            raise CnnscopeError(f"bad layer {name!r}: give a layer name")
        layer = resolve_layer_name(self.module, name.strip())
        if layer in (INPUT, LOGITS):
            raise CnnscopeError(f"layer {layer!r} has no feature maps: pick a convolutional layer")
        return layer

    def default_cam_layer(self) -> str:
        """The default CAM layer below the target (:func:`.structure.default_cam_layer`)."""
        channels = int(self.x.shape[1])
        top = self.target_layer
        below = None if top == LOGITS else self.engine.resolve(top, self.size, channels)
        return structure.default_cam_layer(self.engine, self.size, channels, before=below)

    # ---- forwards and gradients ----------------------------------------------------

    def record(self, x: torch.Tensor, layers: Sequence[str] = ()) -> Forward:
        """A graph-keeping forward of ``x`` recording ``layers`` (plus the target layer)."""
        wanted = {self.target_layer, *layers} - {INPUT, LOGITS}
        # a unit target needs the model only up to its layer
        cut = self.target_layer != LOGITS
        return self.engine.forward(x, cache=False, layers=sorted(wanted), truncate=cut)

    def plain(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """``layer``'s output for ``x`` from a forward without graph (detached)."""
        only = [] if layer in (INPUT, LOGITS) else [layer]
        fwd = self.engine.forward(x, cache=False, grad=False, layers=only, truncate=bool(only))
        return fwd.activation(fwd.resolve(layer))

    def grad(
        self, fwd: Forward, rows: Sequence[int], to, rule: str = "gradient", last: bool = False
    ):
        """Backpropagate the targets of ``rows`` (one image index per batch row) to ``to``.

        ``last``: the forward's only or last backward (its graph is freed as it goes).
        """
        top = self.target_layer
        shape = fwd.activation(top).shape[1:]
        return fwd.grad(top, self.seeds(rows, shape), to=to, rule=rule, keep_graph=not last)

    @property
    def batch_size(self) -> int:
        """Rows per chunk: the option, or what fits the memory budget (capped)."""
        if self._batch_size is not None:
            return self._batch_size
        per_row = _bytes_per_row(self.engine, self.x)
        cap = _CUDA_CAP if self.device.type == "cuda" else _CPU_CAP
        self._batch_size = max(1, min(cap, self.max_memory // max(per_row, 1)))
        return self._batch_size

    def chunks(self, total: int, desc: str = "") -> Iterator[slice]:
        """Slices of ``range(total)`` of at most :attr:`batch_size` rows (with progress)."""
        size = self.batch_size
        starts = range(0, total, size)
        if self.progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc or "attribution", unit="chunk", leave=False)
        for start in starts:
            yield slice(start, min(start + size, total))

    def single_pass(self, rule: str = "gradient") -> torch.Tensor:
        """Gradient at the input of the images themselves, under ``rule``.

        When all images fit one chunk, the top-1 targets come from the same forward
        pass, so a single-pass method costs exactly one forward and one backward.
        """
        if self._targets is None and self.n <= self.batch_size:
            fwd = self.record(self.x)
            self.resolve_targets(fwd)
            return self.grad(fwd, list(range(self.n)), INPUT, rule, last=True)
        return self.input_gradients(self.x, rule=rule)

    def input_gradients(
        self,
        inputs,
        rows: Sequence[int] | None = None,
        rule: str = "gradient",
        weights: torch.Tensor | None = None,
        groups: Sequence[int] | None = None,
        desc: str = "",
    ) -> torch.Tensor:
        """Gradients of the targets at the input, for a batch of (modified) inputs.

        Parameters
        ----------
        inputs : torch.Tensor or callable
            M x C x H x W, or ``make(slice) -> chunk`` for ``len(rows)`` rows, so that
            large sets of inner samples are never built at once.
        rows : sequence of int
            The image (target) each input row explains (default: row i explains image i).
        rule : str
            The engine's backward rule.
        weights : torch.Tensor, optional
            When given, return the weighted sums ``sum_r weights[r] * grad[r]`` over the
            rows of each group instead of one gradient per row.
        groups : sequence of int, optional
            The output row each input row adds to (default: ``rows``).
        """
        self.targets  # noqa: B018 - fix the targets before any modified input
        rows = list(range(len(inputs))) if rows is None else list(rows)
        make = inputs if callable(inputs) else (lambda s: inputs[s])
        out_rows = rows if groups is None else list(groups)
        if weights is not None:
            total = torch.zeros(
                (max(out_rows) + 1, *self.x.shape[1:]), device=self.device, dtype=torch.float64
            )
        parts = []
        for s in self.chunks(len(rows), desc):
            fwd = self.record(make(s))
            g = self.grad(fwd, rows[s], INPUT, rule, last=True)
            del fwd
            if weights is None:
                parts.append(g)
            else:
                w = weights[s].to(g.device, torch.float64).view(-1, *([1] * (g.dim() - 1)))
                index = torch.as_tensor(out_rows[s], device=g.device)
                total.index_add_(0, index, g.double() * w)
        if weights is not None:
            return total.float()
        if not parts:
            return torch.zeros(0, *self.x.shape[1:], device=self.device)
        return torch.cat(parts)

    def scores_of(
        self, inputs, rows: Sequence[int], softmax: bool = False, desc: str = ""
    ) -> torch.Tensor:
        """Target scores of many (modified) inputs without a graph, chunked.

        ``inputs`` is a tensor or a callable ``make(slice) -> chunk``. With ``softmax``,
        class targets give probabilities (unit targets stay raw).
        """
        self.targets  # noqa: B018
        rows = list(rows)
        make = inputs if callable(inputs) else (lambda s: inputs[s])
        layer = self.target_layer
        out = []
        for s in self.chunks(len(rows), desc):
            act = self.plain(make(s), layer)
            if softmax and layer == LOGITS:
                act = torch.softmax(act.float(), dim=1)
            out.append(self._score_rows(act, rows[s]))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    # ---- input space ---------------------------------------------------------------

    def input_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel lowest and highest input values (1 or N x C x 1 x 1 each).

        From the model's preprocessing (pixel 0 and 255) when known, else each image's
        own per-channel range.
        """
        if self.loaded is not None:
            pre = self.loaded.preprocess_config
            mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
            std = torch.tensor(pre.std).view(1, 3, 1, 1)
            low, high = (0.0 - mean) / std, (pre.scale - mean) / std
            return low.to(self.device), high.to(self.device)
        return self.x.amin(dim=(2, 3), keepdim=True), self.x.amax(dim=(2, 3), keepdim=True)


def _bytes_per_row(engine: Engine, x: torch.Tensor) -> int:
    """Estimated memory of one row of a graph-keeping forward + backward.

    From the engine's layer trace: the outputs of leaf modules (a container's output is
    its last child's), twice: what autograd saves plus the gradients in flight.
    """
    modules = dict(engine.module.named_modules())
    total = 0
    for info in engine.layers((int(x.shape[-2]), int(x.shape[-1])), int(x.shape[1])):
        sub = modules.get(split_call(info.name)[0])
        if info.name == INPUT or (sub is not None and next(sub.children(), None) is None):
            total += math.prod(info.shape)
    return 2 * total * x.element_size()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x h x w (or N x C x h x w) maps to ``size`` (H, W).

    Examples
    --------
    >>> upsample(torch.ones(2, 3, 4), (6, 8)).shape
    torch.Size([2, 6, 8])
    """
    squeeze = maps.dim() == 3
    m = maps.unsqueeze(1) if squeeze else maps
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(
            m.float(), size=size, mode="bilinear", align_corners=False
        )
    return m[:, 0] if squeeze else m
