"""Turn a model spec string into a :class:`~cnnscope.models.base.LoadedModel`.

Spec forms, tried in this order:

* a built-in name: ``efficientnet_lite0`` (also ``efficientnet-lite0``,
  ``lite0``), ``efficientnet_lite1``, ``efficientnet_lite2``;
* ``package.module:callable``: a factory called with no arguments;
* an existing file: a TorchScript model (``torch.jit.save``);
* a torchvision classification architecture (``resnet18``) with ``weights``,
  when torchvision is installed.

Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from cnnscope.errors import ModelSpecError
from cnnscope.models.base import (
    LoadedModel,
    Preprocessing,
    imagenet_labels,
    load_weights,
    read_state_dict,
)
from cnnscope.models.efficientnet_lite import (
    LITE_VARIANTS,
    efficientnet_lite,
    stage_last_blocks,
)

__all__ = ["BUILTIN_MODELS", "builtin_name", "clear_cache", "load_model"]

log = logging.getLogger(__name__)

BUILTIN_MODELS = tuple(LITE_VARIANTS)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# Built-in modules by name: loading one twice in a process reuses the module.
_CACHE: dict[str, nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def builtin_name(spec: str) -> str | None:
    """Canonical built-in model name for ``spec``, or ``None``.

    Example
    -------
    >>> builtin_name("Lite0"), builtin_name("efficientnet-lite2"), builtin_name("resnet18")
    ('efficientnet_lite0', 'efficientnet_lite2', None)
    """
    key = spec.strip().lower().replace("-", "_")
    for name in (key, f"efficientnet_{key}"):
        if name in LITE_VARIANTS:
            return name
    return None


def clear_cache() -> None:
    """Forget cached built-in modules (the next :func:`load_model` rebuilds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_model(
    spec: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: str | None = None,
    scale: float | None = None,
) -> LoadedModel:
    """Load a model for exploration.

    Parameters
    ----------
    spec
        Built-in name, ``package.module:callable``, TorchScript file, or
        torchvision architecture name (see the module docstring).
    weights
        State-dict file for a factory, a torchvision architecture, or a
        built-in (either key layout; replaces the ImageNet weights).
    input_size, mean, std, resize, scale
        Override the preprocessing. ``mean``/``std`` are in units of the
        model's ``scale`` (255 for EfficientNet-Lite, 1 otherwise) unless
        ``scale`` is given too.

    Returns
    -------
    LoadedModel
        The module in eval mode with preprocessing, labels and layer hints.
        A built-in loaded without ``weights`` is cached: each call returns a
        new :class:`LoadedModel` that shares the same (read-only) module.

    Raises
    ------
    ModelSpecError
        If the spec, the weights or an override cannot be used.

    Example
    -------
    >>> model = load_model("lite0")
    >>> model.name, model.preprocess_config.input_size, model.logits_layer
    ('efficientnet_lite0', (224, 224), 'classifier')
    """
    spec = str(spec).strip()
    builtin = builtin_name(spec)
    if builtin:
        size = LITE_VARIANTS[builtin][2]
        # crop_fraction 1.0 keeps the whole shorter side (TF evaluation crops 0.875):
        # users see their whole image, and borderline photos such as "chelsea" stay correct.
        pre = Preprocessing(
            (size, size), (127.0,) * 3, (128.0,) * 3, scale=255.0, crop_fraction=1.0
        )
    else:
        pre = Preprocessing((224, 224), _IMAGENET_MEAN, _IMAGENET_STD)
    overrides = {
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "resize": resize,
        "scale": scale,
    }
    pre = replace(pre, **{k: v for k, v in overrides.items() if v is not None})

    if builtin:
        return _load_builtin(builtin, weights, pre)
    if _FACTORY.match(spec) and not Path(spec).exists():
        return _load_factory(spec, weights, pre)
    if Path(spec).is_file():
        if weights is not None:
            raise ModelSpecError(
                f"--weights cannot be used with a TorchScript file ({spec}): the file holds its weights"
            )
        return _load_torchscript(spec, pre)
    if Path(spec).suffix in (".pt", ".pth", ".ts", ".jit") or "/" in spec or "\\" in spec:
        raise ModelSpecError(f"model file not found: {spec}")
    return _load_torchvision(spec, weights, pre)


def _load_builtin(name: str, weights: str | Path | None, pre: Preprocessing) -> LoadedModel:
    if weights is not None:
        module = efficientnet_lite(name, read_state_dict(weights))
    else:
        with _CACHE_LOCK:
            if name not in _CACHE:
                log.info("loading %s", name)
                _CACHE[name] = efficientnet_lite(name)
            module = _CACHE[name]
    n = module.classifier.out_features
    # The expanded (ReLU6) input of each stage's first block: sparse units, and a cut of
    # the network (no residual bypasses it), chosen by looking at trees (docs/benchmarks/tree.md).
    starts = [i + 1 for i in reversed(stage_last_blocks(module.configs)[:-1])]
    stages = [f"blocks.{i}.expand_act" for i in starts]
    return LoadedModel(
        module=module,
        preprocess_config=pre,
        labels=imagenet_labels() if n == 1000 else [f"class {i}" for i in range(n)],
        name=name,
        default_chain=["classifier", "head_act", *stages, "stem_act"],
        logits_layer="classifier",
    )


def _load_factory(spec: str, weights: str | Path | None, pre: Preprocessing) -> LoadedModel:
    module_name, attr = spec.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ModelSpecError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ModelSpecError(f"{spec!r} is not callable: give package.module:function")
    try:
        module = obj()
    except Exception as exc:
        raise ModelSpecError(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelSpecError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(module, read_state_dict(weights), spec)
    return _generic(module.eval(), spec, pre)


def _load_torchscript(path: str, pre: Preprocessing) -> LoadedModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # TorchScript is deprecated upstream
            module = torch.jit.load(path, map_location="cpu")
    except Exception:
        raise ModelSpecError(
            f"{path} is not a TorchScript file; for a state dict give package.module:callable "
            "and pass the file as --weights"
        ) from None
    return _generic(module.eval(), Path(path).stem, pre)


def _load_torchvision(spec: str, weights: str | Path | None, pre: Preprocessing) -> LoadedModel:
    unknown = (
        f"unknown model {spec!r}: give a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a TorchScript file, package.module:callable, or a torchvision name with --weights"
    )
    try:
        import torchvision.models as tvm
    except Exception:
        raise ModelSpecError(unknown + " (torchvision is not installed)") from None
    if spec not in tvm.list_models(module=tvm):
        raise ModelSpecError(unknown)
    if weights is None:
        raise ModelSpecError(
            f"torchvision model {spec!r} needs --weights FILE (a state dict); cnnscope never downloads weights"
        )
    module = tvm.get_model(spec, weights=None)
    load_weights(module, read_state_dict(weights), spec)
    return _generic(module.eval(), spec, pre)


def _generic(module: nn.Module, name: str, pre: Preprocessing) -> LoadedModel:
    """Probe an arbitrary model with one dummy forward to find labels and layer hints."""
    scripted = isinstance(module, torch.jit.ScriptModule)
    records: list[tuple[str, object]] = []
    handles = []
    if not scripted:
        for mod_name, mod in module.named_modules():
            if mod_name:
                handles.append(
                    mod.register_forward_hook(
                        lambda _m, _i, out, n=mod_name: records.append((n, out))
                    )
                )
    h, w = pre.input_size
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, h, w))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelSpecError(
            f"model {name!r} fails on a 1x3x{h}x{w} input ({type(exc).__name__}: {first}); "
            "check --input-size"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor):
        raise ModelSpecError(
            f"model {name!r} returns {type(out).__name__}; cnnscope needs a tensor of logits"
        )

    n = out.shape[1] if out.ndim == 2 else 0
    if n == 1000:
        labels = imagenet_labels()
    else:
        labels = [f"class {i}" for i in range(n)]
        if not n:
            log.warning(
                "model %s output has shape %s; class labels unknown", name, tuple(out.shape)
            )

    # The innermost module whose output *is* the model output holds the logits
    # (hooks fire innermost first).
    logits_layer = next((mod_name for mod_name, o in records if o is out), None)
    feature_maps = [
        mod_name
        for mod_name, o in records
        if "." not in mod_name and isinstance(o, torch.Tensor) and o.ndim == 4
    ]
    chain = [logits_layer] if logits_layer else []
    chain += [
        mod_name for mod_name in dict.fromkeys(reversed(feature_maps)) if mod_name not in chain
    ]
    return LoadedModel(module, pre, labels, name, chain, logits_layer)
