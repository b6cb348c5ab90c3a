"""Turn a model spec string into a :class:`~cnnscope.models.base.LoadedModel`.

Spec forms, tried in this order:

* a built-in name: ``efficientnet_lite0`` (also ``efficientnet-lite0``,
  ``lite0``), ``efficientnet_lite1``, ``efficientnet_lite2``;
* ``package.module:callable``: a factory, called with no arguments or with the literal
  arguments written after it (``pkg.mod:make_net(width=32, name='a')``: parsed with
  ``ast.literal_eval``, never evaluated). The module is looked for on the Python path,
  then in the current folder;
* ``timm:NAME`` (arguments as above) with ``weights``, when timm is installed: its
  ``pretrained_cfg`` gives the input size, mean, std and class names;
* an existing file: a TorchScript model (``torch.jit.save``): only the pixel attribution
  methods work with it (see :data:`~cnnscope.models.user.TORCHSCRIPT_LIMITS`);
* a torchvision classification architecture (``resnet18``) with ``weights``,
  when torchvision is installed: its weights enum gives the preprocessing and class names.

A module you hold is wrapped by :func:`~cnnscope.models.user.as_loaded`. Only a spec a
user typed may import code: files (index manifests, configs) name built-ins only.
Nothing is ever downloaded.
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    EfficientNetLite,
    efficientnet_lite,
    stage_last_blocks,
)
from cnnscope.models.user import as_loaded, metadata_of

__all__ = ["BUILTIN_MODELS", "builtin_name", "clear_cache", "load_model"]

log = logging.getLogger(__name__)

BUILTIN_MODELS = tuple(LITE_VARIANTS)
# package.module:callable, optionally with its arguments: "pkg.mod:make(width=32)"
_FACTORY = re.compile(
    r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?P<args>\(.*)?$", re.S
)

# Built-in modules by name: loading one twice in a process reuses the module.
_CACHE: dict[str, EfficientNetLite] = {}
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
    spec: str | os.PathLike | nn.Module = "efficientnet_lite0",
    weights: str | Path | None = None,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    resize: str | None = None,
    scale: float | None = None,
    labels: Sequence[str] | str | os.PathLike | None = None,
    metadata: Any = None,
) -> LoadedModel:
    """Load a model for exploration, or wrap a module you hold.

    Parameters
    ----------
    spec
        A ``torch.nn.Module`` (wrapped as it is, see :func:`~cnnscope.models.as_loaded`),
        or a spec: built-in name, ``package.module:callable`` (with literal arguments:
        ``pkg.mod:make(width=32)``), ``timm:NAME``, TorchScript file, or torchvision
        architecture name (see the module docstring).
    weights
        State-dict file for a factory, a timm or torchvision architecture, or a built-in
        (either key layout; replaces the ImageNet weights).
    input_size, mean, std, resize, scale
        Override the preprocessing. ``mean``/``std`` are in units of the model's
        ``scale`` (255 for EfficientNet-Lite, 1 otherwise) unless ``scale`` is given too.
    labels
        Class names (a list, or a text file with one per line).
    metadata
        For your own models: a timm ``pretrained_cfg`` or a torchvision weights enum
        member (``ResNet50_Weights.DEFAULT``), read for preprocessing and class names.

    Returns
    -------
    LoadedModel
        The module in eval mode (a module you pass keeps its mode) with preprocessing,
        labels and layer hints. A built-in loaded without ``weights`` is cached: each
        call returns a new :class:`LoadedModel` that shares the same (read-only) module.

    Raises
    ------
    ModelSpecError
        If the spec, the weights or an override cannot be used.

    Example
    -------
    >>> model = load_model("lite0")
    >>> model.name, model.preprocess_config.input_size, model.logits_layer
    ('efficientnet_lite0', (224, 224), 'classifier')
    >>> mine = load_model(model.module, mean=127.0, std=128.0, scale=255.0)  # a module you hold
    >>> mine.logits_layer, mine.label(285)
    ('classifier', 'Egyptian cat')
    """
    overrides: dict[str, Any] = {
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "resize": resize,
        "scale": scale,
    }
    if not isinstance(spec, (str, os.PathLike)):
        if weights is not None:
            raise ModelSpecError(
                "weights= goes with a model spec: load them into your module with "
                "module.load_state_dict(...)"
            )
        return as_loaded(spec, labels=labels, metadata=metadata, layers=False, **overrides)
    spec = str(spec).strip()
    builtin = builtin_name(spec)
    if builtin:
        size = LITE_VARIANTS[builtin][2]
        # crop_fraction 1.0 keeps the whole shorter side (TF evaluation crops 0.875):
        # users see their whole image, and borderline photos such as "chelsea" stay correct.
        pre = Preprocessing(
            (size, size), (127.0,) * 3, (128.0,) * 3, scale=255.0, crop_fraction=1.0
        )
        pre = replace(pre, **{k: v for k, v in overrides.items() if v is not None})
        return as_loaded(_load_builtin(builtin, weights, pre), labels=labels, layers=False)
    module, name, own = _build(spec, weights)
    return as_loaded(
        module,
        name=name,
        labels=labels,
        metadata=metadata if metadata is not None else own,
        layers=False,
        **overrides,
    )


def _build(spec: str, weights: str | Path | None) -> tuple[nn.Module, str, Any]:
    """``(module in eval mode, name, metadata)`` of a spec that is not a built-in."""
    factory = _FACTORY.match(spec)
    if factory and not _is_file(spec):
        module_name, attr, args = factory.group("module", "attr", "args")
        if module_name == "timm":
            return _load_timm(spec, attr, _arguments(spec, args), weights)
        return _load_factory(spec, module_name, attr, _arguments(spec, args), weights)
    if _is_file(spec):
        if weights is not None:
            raise ModelSpecError(
                f"--weights cannot be used with a TorchScript file ({spec}): the file holds its weights"
            )
        return _load_torchscript(spec), Path(spec).stem, None
    if Path(spec).suffix in (".pt", ".pth", ".ts", ".jit") or "/" in spec or "\\" in spec:
        raise ModelSpecError(f"model file not found: {spec}")
    return _load_torchvision(spec, weights)


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


def _arguments(spec: str, text: str | None) -> tuple[tuple, dict]:
    """The literal arguments of ``factory(...)`` in a spec: parsed, never evaluated.

    Example
    -------
    >>> _arguments("m:f(1, width=32, name='a')", "(1, width=32, name='a')")
    ((1,), {'width': 32, 'name': 'a'})
    """
    if not text:
        return (), {}
    bad = (
        f"bad arguments in model {spec!r}: write literal values only, "
        "e.g. pkg.mod:make(32, depth=2, name='x')"
    )
    try:
        call = ast.parse(f"f{text}", mode="eval").body
    except SyntaxError:
        raise ModelSpecError(bad) from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ModelSpecError(bad)
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        raise ModelSpecError(bad)
    try:
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModelSpecError(bad) from None
    return args, kwargs


def _import(module_name: str, spec: str):
    """Import a user-named module; the current folder is searched after the Python path."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ModelSpecError(
                f"cannot import {module_name!r} for model {spec!r}: no module named "
                f"{exc.name!r} (looked in the Python path and the current folder {cwd})"
            ) from None
        raise ModelSpecError(
            f"importing {module_name!r} for model {spec!r} failed: {exc}"
        ) from None
    except Exception as exc:
        raise ModelSpecError(
            f"importing {module_name!r} for model {spec!r} failed: {_one_line(exc)}"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)


def _load_factory(
    spec: str, module_name: str, attr: str, arguments: tuple[tuple, dict], weights
) -> tuple[nn.Module, str, Any]:
    obj = _import(module_name, spec)
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ModelSpecError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ModelSpecError(f"{spec!r} is not callable: give package.module:function")
    args, kwargs = arguments
    try:
        module = obj(*args, **kwargs)
    except Exception as exc:
        raise ModelSpecError(f"calling {spec} failed: {_one_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelSpecError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(module, read_state_dict(weights), spec)
    return module.eval(), spec, None


def _load_timm(
    spec: str, name: str, arguments: tuple[tuple, dict], weights
) -> tuple[nn.Module, str, Any]:
    try:
        import timm
    except ImportError:
        raise ModelSpecError(
            f"model {spec!r} needs timm, which is not installed (pip install timm)"
        ) from None
    args, kwargs = arguments
    if kwargs.pop("pretrained", False):
        raise ModelSpecError(f"{spec}: cnnscope never downloads weights; give --weights FILE")
    if weights is None:
        raise ModelSpecError(
            f"timm model {name!r} needs --weights FILE (a state dict); cnnscope never downloads weights"
        )
    try:
        module = timm.create_model(name, *args, pretrained=False, **kwargs)
    except Exception as exc:
        raise ModelSpecError(f"timm cannot create {name!r}: {_one_line(exc)}") from None
    load_weights(module, read_state_dict(weights), spec)
    return module.eval(), spec, _with_imagenet_names(timm, module)


def _with_imagenet_names(timm, module: nn.Module) -> Any:
    """The module's ``pretrained_cfg`` plus timm's ImageNet-21k/12k class names if it has none."""
    cfg = dict(metadata_of(module) or {})
    try:
        subset = timm.data.infer_imagenet_subset(module)
        if not cfg.get("label_names") and subset and subset != "imagenet-1k":
            cfg["label_names"] = timm.data.ImageNetInfo(subset).label_descriptions()
            cfg.pop("label_descriptions", None)
    except Exception as exc:  # an older timm without ImageNetInfo: numbered classes
        log.debug("no timm class names: %s", exc)
    return cfg or None


def _load_torchscript(path: str) -> nn.Module:
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
    return module.eval()


def _load_torchvision(spec: str, weights: str | Path | None) -> tuple[nn.Module, str, Any]:
    unknown = (
        f"unknown model {spec!r}: give a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a TorchScript file, package.module:callable, timm:NAME, or a torchvision name "
        "with --weights"
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
    try:  # the weights enum knows the input size, mean, std and class names
        meta = tvm.get_model_weights(spec).DEFAULT
    except Exception:
        meta = None
    return module.eval(), spec, meta


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).is_file()
    except OSError:  # a name too long for a file, say
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
