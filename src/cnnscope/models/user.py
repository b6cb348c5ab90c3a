"""Your own model: :func:`as_loaded` turns a ``torch.nn.Module`` into a :class:`LoadedModel`.

``Explorer``, ``visualize_units``, ``build_index`` and :func:`~cnnscope.models.load_model`
take a :class:`LoadedModel` or a bare module through it: this is the one place where a
bare module gets its preprocessing, class names and layer hints (``attribute`` and the
views run a bare module on input tensors as it is).

Preprocessing and class names come, first to last, from the arguments, from the model's
own metadata, and from ImageNet defaults (224 x 224, torchvision's mean and std). Two
kinds of metadata are read, by their attributes only (neither library is imported):

* a timm model's ``pretrained_cfg`` (or ``default_cfg``): ``input_size``, ``mean``,
  ``std``, ``crop_pct``, ``crop_mode``, ``label_names``, ``label_descriptions``;
* a torchvision weights enum member passed as ``metadata`` (``ResNet50_Weights.DEFAULT``):
  its ``transforms()`` (crop and resize size, mean, std) and ``meta["categories"]``.

Layer hints (the logits layer, the default chain) come from one probe forward of a zero
image, cached per model and input size (keyed on the weights fingerprint, so it is run
again when a submodule is replaced).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import Engine, preserved
from ..engine.dataflow import Dataflow
from ..engine.structure import Call, call_names, default_chain_of
from ..errors import ModelSpecError
from .base import LoadedModel, Preprocessing, imagenet_labels

__all__ = ["as_loaded", "metadata_of"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PROBE = "cnnscope.models.probe"  # engine.memo key of the probe results

TORCHSCRIPT_LIMITS = (
    "TorchScript runs no Python hooks, so its layers cannot be recorded: CAMs, trees, "
    "layer views, indexes and synthesis need the Python model (--model pkg.mod:factory "
    "--weights FILE), torch.export.unflatten(program) or a torch.fx.symbolic_trace module; "
    "the pixel attribution methods (gradient, guided backprop, integrated gradients...) work"
)


def as_loaded(
    model: LoadedModel | nn.Module,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: str | None = None,
    scale: float | None = None,
    labels: Sequence[str] | str | os.PathLike | None = None,
    metadata: Any = None,
    name: str | None = None,
    layers: bool = True,
) -> LoadedModel:
    """The :class:`LoadedModel` of a loaded model or of a bare ``torch.nn.Module``.

    A :class:`LoadedModel` is returned as it is (a copy when something is overridden).
    A module is wrapped without being changed: its hooks, training flags and weights
    stay as they are (cnnscope runs it in eval mode and restores the flags).

    Parameters
    ----------
    model
        A :class:`LoadedModel` (from :func:`cnnscope.load_model`) or a ``torch.nn.Module``.
    input_size, mean, std, resize, scale
        Preprocessing, as in :class:`Preprocessing`; each overrides the model's metadata.
        ``mean`` and ``std`` are in units of ``scale`` (1: pixels in [0, 1]).
    labels
        Class names, index order: a sequence, or a text file with one name per line.
    metadata
        A timm ``pretrained_cfg`` (dict) or a torchvision weights enum member, read for
        preprocessing and class names; by default the module's own ``pretrained_cfg``.
    name
        Display name (default: the metadata's architecture or the module's class name).
    layers
        Whether the caller records layers: then a model without recordable layers
        (TorchScript, a flat ``torch.export`` graph) is refused with one line.

    Raises
    ------
    ModelSpecError
        If ``model`` is neither, an override or the metadata cannot be used, the model
        fails on a zero image of the input size, or (``layers``) it has no layers.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(1), nn.Linear(3600, 2))
    >>> model = as_loaded(net, input_size=32, labels=["cat", "dog"])
    >>> model.label(1), model.preprocess_config.input_size, model.logits_layer
    ('dog', (32, 32), '3')
    """
    overrides = _given(input_size=input_size, mean=mean, std=std, resize=resize, scale=scale)
    if isinstance(model, LoadedModel):
        if layers:
            _check_recordable(model.module, model.name)
        return _overridden(model, overrides, labels)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(_not_a_model(model))
    meta = metadata if metadata is not None else metadata_of(model)
    name = name or str(
        _read(meta, "architecture")
        or getattr(model, "original_name", None)  # a TorchScript module's Python class
        or type(model).__name__
    )
    if layers:
        _check_recordable(model, name)
    pre = Preprocessing((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    pre = replace(pre, **{**preprocessing_of(meta), **overrides})
    return wrap(model, name, pre, labels=labels, metadata=meta)


def metadata_of(module: nn.Module) -> Any:
    """A module's own preprocessing metadata (timm's ``pretrained_cfg``), or ``None``.

    Example
    -------
    >>> net = nn.Conv2d(3, 1, 1)
    >>> net.pretrained_cfg = {"input_size": (3, 299, 299)}
    >>> metadata_of(net)
    {'input_size': (3, 299, 299)}
    """
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(module, attr, None)
        if cfg:
            return cfg
    return None


def preprocessing_of(meta: Any) -> dict[str, Any]:
    """:class:`Preprocessing` fields from timm or torchvision metadata (see the module doc).

    Example
    -------
    >>> preprocessing_of({"input_size": (3, 299, 299), "crop_pct": 0.875, "mean": (0.5,) * 3})
    {'input_size': (299, 299), 'mean': (0.5, 0.5, 0.5), 'crop_fraction': 0.875, 'scale': 1.0}
    """
    if meta is None:
        return {}
    try:
        if _is_torchvision_weights(meta):
            t = meta.transforms()
            crop, short = _first(t.crop_size), _first(getattr(t, "resize_size", None))
            if crop is None:
                raise TypeError("the weights' transforms have no crop_size")
            out: dict[str, Any] = {
                "input_size": (crop, crop),
                "mean": tuple(t.mean),
                "std": tuple(t.std),
            }
            if short:
                out["crop_fraction"] = min(1.0, crop / short)
            return {**out, "scale": 1.0}
        out = {}
        size = _read(meta, "input_size")
        if size:
            out["input_size"] = tuple(int(s) for s in size)[-2:]
        for key in ("mean", "std"):
            if _read(meta, key) is not None:
                out[key] = tuple(float(v) for v in _read(meta, key))
        crop = _read(meta, "crop_pct")
        if crop is not None and 0 < float(crop) <= 1:
            out["crop_fraction"] = float(crop)
        if _read(meta, "crop_mode") == "squash":
            out["resize"] = "resize"
        return {**out, "scale": 1.0} if out else {}
    except (AttributeError, TypeError, ValueError, IndexError) as exc:
        raise ModelSpecError(
            f"cannot read the preprocessing from the model's metadata "
            f"({type(exc).__name__}: {exc}): pass input_size, mean and std"
        ) from None


def labels_of(meta: Any) -> list[str] | None:
    """Class names from timm or torchvision metadata, or ``None``.

    Example
    -------
    >>> labels_of({"label_names": ["n1", "n2"], "label_descriptions": {"n1": "cat"}})
    ['cat', 'n2']
    """
    if meta is None:
        return None
    if _is_torchvision_weights(meta):
        names = (getattr(meta, "meta", None) or {}).get("categories")
        return [str(n) for n in names] if names else None
    names = _read(meta, "label_names")
    if not names:
        return None
    described = _read(meta, "label_descriptions") or {}
    offset = int(_read(meta, "label_offset") or 0)
    return ["background"] * offset + [str(described.get(n, n)) for n in names]


def wrap(
    module: nn.Module,
    name: str,
    pre: Preprocessing,
    *,
    labels: Sequence[str] | str | os.PathLike | None = None,
    metadata: Any = None,
) -> LoadedModel:
    """A :class:`LoadedModel` of ``module`` with ``pre``: labels and layer hints probed.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(1), nn.Linear(392, 3))
    >>> model = wrap(net, "toy", Preprocessing(16, (0.5,) * 3, (0.5,) * 3))
    >>> model.labels, model.default_chain
    (['class 0', 'class 1', 'class 2'], ['2', '0'])
    """
    probe = probe_of(module, name, pre.input_size)
    n = probe.classes
    if isinstance(module, torch.jit.ScriptModule):
        log.warning("%s is TorchScript: %s", name, TORCHSCRIPT_LIMITS)
    chain = default_chain_of(module, probe.calls, probe.logits_layer, probe.flow)
    names = _class_names(n, labels, labels_of(metadata))
    if not n and labels is None:
        log.warning("model %s output has shape %s; class labels unknown", name, probe.shape)
    return LoadedModel(module, pre, names, name, chain, probe.logits_layer)


@dataclass(frozen=True)
class Probe:
    """What one forward of a zero image tells about a model."""

    shape: tuple[int, ...]  # of the output, batch of one
    logits_layer: str | None  # the innermost module whose output *is* the model output
    calls: tuple[Call, ...]  # every submodule call with a tensor output: name, shape
    recorded: int  # submodule outputs seen (0: nothing can be recorded)
    flow: Dataflow | None = None  # which calls feed or bypass which (None: not known)

    @property
    def classes(self) -> int:
        """Outputs per image when the output is ``N x K``, else 0."""
        return self.shape[1] if len(self.shape) == 2 else 0


def probe_of(module: nn.Module, name: str, size: tuple[int, int]) -> Probe:
    """The :class:`Probe` of ``module`` at input ``size``, run once per model and size.

    Cached in the model's shared engine (:attr:`Engine.memo`, gone with the model) and
    keyed on its weights fingerprint: replacing a submodule probes again.

    Example
    -------
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(1))
    >>> probe_of(net, "toy", (8, 8)) is probe_of(net, "toy", (8, 8))
    True
    """
    engine = Engine.for_module(module)
    stamp = engine.weights_fingerprint()
    known = engine.memo.get((_PROBE, tuple(size)))
    if known is None or known[0] != stamp:
        known = engine.memo[(_PROBE, tuple(size))] = (stamp, _probe(module, name, size))
    return known[1]


def _probe(module: nn.Module, name: str, size: tuple[int, int]) -> Probe:
    records: list[tuple[str, object]] = []
    handles = []
    if not isinstance(module, torch.jit.ScriptModule):  # TorchScript runs no Python hooks
        for mod_name, mod in module.named_modules():
            if mod_name:
                handles.append(
                    mod.register_forward_hook(lambda _m, _i, o, n=mod_name: records.append((n, o)))
                )
    param = next(iter([*module.parameters(), *module.buffers()]), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    h, w = size
    # with autograd for the dataflow (structure); an in-place op on x forbids it. Not for
    # TorchScript: no hooks to read, and grad runs make its executor fuse the activations
    scripted = isinstance(module, torch.jit.ScriptModule)
    x = torch.zeros(1, 3, h, w, device=device, dtype=dtype, requires_grad=not scripted)
    try:
        try:
            with _eval_mode(module, name), torch.set_grad_enabled(not scripted):
                out = module(x)
        except RuntimeError:
            if scripted:
                raise
            records.clear()
            x = x.detach()
            with _eval_mode(module, name), torch.no_grad():
                out = module(x)
    except ModelSpecError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelSpecError(
            f"model {name!r} fails on a 1x3x{h}x{w} input ({type(exc).__name__}: {first}); "
            "check the input size (--input-size, or input_size= in Python)"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor):
        raise ModelSpecError(
            f"model {name!r} returns {type(out).__name__}; cnnscope needs a tensor of logits"
        )
    # hooks fire innermost first: the first module whose output is the model output
    logits = next((n for n, o in records if o is out), None)
    named = [
        (n, o)
        for n, o in zip(call_names([n for n, _ in records]), (o for _, o in records))
        if isinstance(o, torch.Tensor)
    ]
    calls = tuple((n, tuple(o.shape[1:])) for n, o in named)
    flow = Dataflow(dict(named), out, x) if out.grad_fn is not None else None
    return Probe(tuple(out.detach().shape), logits, calls, len(records), flow)


@contextlib.contextmanager
def _eval_mode(module: nn.Module, name: str):
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(preserved(module))
    except NotImplementedError as exc:  # torch.export's program.module() refuses eval()
        raise ModelSpecError(
            f"model {name!r} cannot be put in eval mode ({exc}): for a torch.export program "
            "pass torch.export.unflatten(program)"
        ) from None
    with stack:
        yield


def _check_recordable(module: nn.Module, name: str) -> None:
    """One line for a model whose layers cannot be recorded."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelSpecError(f"{name} is a TorchScript model: {TORCHSCRIPT_LIMITS}")
    if isinstance(module, torch.fx.GraphModule) and not any(
        node.op == "call_module" and not str(node.target).startswith("_")
        for node in module.graph.nodes
    ):
        raise ModelSpecError(
            f"{name} is a flat torch.fx graph that calls no submodule (torch.export's "
            "program.module()?), so it has no layers to record: pass "
            "torch.export.unflatten(program), or the Python model"
        )


def _overridden(model: LoadedModel, overrides: dict, labels) -> LoadedModel:
    if not overrides and labels is None:
        return model
    pre = replace(model.preprocess_config, **overrides)
    names = model.labels if labels is None else _class_names(model.num_classes, labels, None)
    return replace(model, preprocess_config=pre, labels=names)


def _class_names(n: int, labels, from_meta: list[str] | None) -> list[str]:
    if labels is not None:
        names = _read_labels(labels)
        if n and len(names) != n:
            raise ModelSpecError(f"{len(names)} labels given, but the model has {n} classes")
        return names
    if from_meta and len(from_meta) == n:
        return from_meta
    return imagenet_labels() if n == 1000 else [f"class {i}" for i in range(n)]


def _read_labels(labels) -> list[str]:
    if isinstance(labels, (str, os.PathLike)):
        try:
            lines = [line.strip() for line in Path(labels).read_text("utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelSpecError(f"cannot read labels file {labels}: {exc}") from None
        while lines and not lines[-1]:
            lines.pop()
        return lines
    if isinstance(labels, Sequence) and all(isinstance(s, str) for s in labels):
        return list(labels)
    raise ModelSpecError("labels must be a list of class names or a text file, one per line")


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _read(meta: Any, key: str) -> Any:
    if meta is None:
        return None
    if isinstance(meta, Mapping):
        return meta.get(key)
    return getattr(meta, key, None)


def _is_torchvision_weights(meta: Any) -> bool:
    return callable(getattr(meta, "transforms", None)) and isinstance(
        getattr(meta, "meta", None), Mapping
    )


def _first(value) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _not_a_model(model: Any) -> str:
    what = type(model).__name__
    if isinstance(model, torch.export.ExportedProgram):
        return "an ExportedProgram is no module: pass torch.export.unflatten(program)"
    if isinstance(model, (str, os.PathLike)):
        return f"got the {what} {str(model)!r}: load it first with cnnscope.load_model(spec)"
    return (
        f"expected a LoadedModel or a torch.nn.Module, got {what}: wrap a module with "
        "cnnscope.load_model(module, input_size=..., mean=..., std=..., labels=...)"
    )
