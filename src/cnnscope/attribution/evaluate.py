"""How good is a map? Deletion / insertion, the randomisation sanity check, axioms.

* :func:`deletion_insertion` (Petsiuk et al. 2018, RISE): remove the most salient
  pixels first (deletion: the score should fall fast, low AUC is good), or add them
  to a blurred image (insertion: the score should rise fast, high AUC is good).
* :func:`randomization_check` (Adebayo et al. 2018): re-initialise the layers of a
  *copy* of the model from the top down (cascading) and measure the Spearman rank
  correlation of the new maps with the original one. A method that explains the model
  must change: low correlation is good.
* :func:`completeness` (IG: ``sum IG = f(x) - f(baseline)``) and :func:`conservation`
  (LRP: ``sum R = f(x)``), as relative errors.
* :func:`evaluate` runs them for several methods and returns one row per method.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import Engine
from ..errors import CnnscopeError
from .api import attribute
from .context import Context
from .inputs import prepare_input
from .registry import check_positive, get_method
from .result import Attribution

log = logging.getLogger(__name__)

__all__ = [
    "completeness",
    "conservation",
    "deletion_insertion",
    "evaluate",
    "randomization_check",
    "rank",
    "spearman",
]


def _auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions of [0, 1] (trapezoid)."""
    if len(curve) < 2:
        return float(curve[0]) if len(curve) else float("nan")
    return float((curve[:-1] + curve[1:]).sum() / (2 * (len(curve) - 1)))


def deletion_insertion(
    model,
    image,
    attribution: Attribution | np.ndarray,
    *,
    target=None,
    steps: int = 32,
    deletion_baseline="zero",
    insertion_baseline="blur",
    sigma: float = 10.0,
    batch_size: int | None = None,
) -> list[dict]:
    """Deletion and insertion curves and AUCs for each image.

    Parameters
    ----------
    model, image
        As for :func:`~cnnscope.attribution.attribute`.
    attribution : Attribution or array
        The maps to test; an array is an ``[N x] H x W`` saliency (higher = more important).
    target
        What the score is (default: the attribution's targets, else top-1).
    steps : int
        Number of equal steps from 0 to all pixels.
    deletion_baseline, insertion_baseline
        What removed pixels become / what the insertion starts from: ``zero``,
        ``black``, ``blur``, ``uniform``, a number or a tensor.

    Returns
    -------
    list of dict
        Per image: ``deletion`` and ``insertion`` AUCs of the score (softmax probability
        for classes, the raw value for units) and both curves.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> model, img = load_model(), load_gallery_image("chelsea")
    >>> attr = attribute(model, img, "grad_cam")
    >>> row = deletion_insertion(model, img, attr, steps=8)[0]
    >>> row["deletion"] < row["insertion"]
    True
    """
    from .gradient import make_baseline

    steps = check_positive("steps", steps, integer=True)
    module, loaded, x, _, _ = prepare_input(model, image)
    if isinstance(attribution, Attribution):
        sal = attribution.saliency()
        target = attribution.targets if target is None else target
    else:
        sal = np.asarray(attribution, dtype=np.float32)
    sal = sal.reshape(-1, *sal.shape[-2:])
    if sal.shape[0] != x.shape[0] or tuple(sal.shape[-2:]) != tuple(x.shape[-2:]):
        raise CnnscopeError(
            f"saliency of shape {sal.shape} does not fit {x.shape[0]} input(s) of {tuple(x.shape[-2:])}"
        )
    ctx = Context(module, x, target, loaded=loaded, batch_size=batch_size)
    deleted = make_baseline(ctx, deletion_baseline, sigma)
    inserted = make_baseline(ctx, insertion_baseline, sigma)
    h, w = ctx.size
    counts = torch.as_tensor(
        np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64), device=ctx.device
    )
    rows = []
    for i in range(ctx.n):
        flat = torch.as_tensor(sal[i].reshape(-1), device=ctx.device)
        order = torch.argsort(-flat, stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel(), device=ctx.device)
        ranks = ranks.view(1, 1, h, w)
        x_i = ctx.x[i : i + 1]
        curves = {}
        for name, start, end in (
            ("deletion", x_i, deleted[i : i + 1]),
            ("insertion", inserted[i : i + 1], x_i),
        ):

            def make(s: slice, start=start, end=end, ranks=ranks) -> torch.Tensor:
                k = counts[s].view(-1, 1, 1, 1)
                return torch.where(ranks < k, end, start)

            scores = ctx.scores_of(make, [i] * (steps + 1), softmax=True, desc=name)
            curves[name] = scores.detach().double().cpu().numpy()
        rows.append(
            {
                "deletion": _auc(curves["deletion"]),
                "insertion": _auc(curves["insertion"]),
                "deletion_curve": curves["deletion"].tolist(),
                "insertion_curve": curves["insertion"].tolist(),
                "target": str(ctx.targets[i]),
            }
        )
    return rows


def rank(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties sharing their average rank.

    Examples
    --------
    >>> rank(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    new = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, a.size))
    out = np.empty(a.size)
    out[order] = (starts + (counts + 1) / 2.0)[group]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (ties get average ranks; NaN if constant).

    Examples
    --------
    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 25.0]))
    1.0
    """
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _constant(a: np.ndarray) -> bool:
    return a.size == 0 or bool(np.all(a == a.flat[0]))


def _randomised_spearman(original: np.ndarray, randomised: np.ndarray) -> float | None:
    """Spearman correlation of a map with its randomised model's map, defined for constants.

    A constant randomised map (e.g. Grad-CAM's ReLU of an all-negative map) has no
    ranking: with its ties broken at random, the expected correlation is 0, which is
    what it scores. A constant original has nothing to compare: ``None``.

    Examples
    --------
    >>> _randomised_spearman(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    0.0
    >>> _randomised_spearman(np.ones(3), np.array([1.0, 2.0, 3.0])) is None
    True
    """
    if _constant(original):
        return None
    if _constant(randomised):
        return 0.0
    return spearman(original, randomised)


def _parametrised(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of conv / linear modules with weights, in execution order."""
    fwd = Engine(module).forward(x[:1], cache=False, grad=False)
    modules = dict(module.named_modules())
    out = []
    for name in fwd.layers:
        base = name.partition("#")[0]
        m = modules.get(base)
        w = getattr(m, "weight", None) if m is not None else None
        if isinstance(w, torch.Tensor) and w.dim() >= 2 and base not in out:
            out.append(base)
    return out


def randomization_check(
    model,
    image,
    method: str,
    target=None,
    layer=None,
    *,
    stages: int = 4,
    seed: int = 0,
    reference: Attribution | None = None,
    **options,
) -> dict:
    """Cascading model-randomisation sanity check on a copy of the model.

    The conv / linear layers are re-initialised (``reset_parameters``) from the output
    down, in ``stages`` cumulative steps; after each, the method runs on the copy for the
    same targets and the Spearman correlation of ``|map|`` with the original is taken.
    A randomised map that is constant (nothing left of the original's ranking, e.g. a
    CAM whose ReLU zeroes everything) counts as 0, the expected correlation with its
    ties broken at random.

    Returns
    -------
    dict
        ``layers`` (the lowest layer randomised at each stage), ``spearman`` (one per
        stage, per image averaged; ``None`` where every original map is constant, so
        that there is nothing to compare), ``constant`` (the stages, from 1, where a
        randomised map was constant) and ``final`` (after randomising every layer).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> out = randomization_check(load_model(), load_gallery_image("chelsea"), "gradient", stages=2)
    >>> len(out["spearman"]), out["final"] < 0.5
    (2, True)
    """
    stages = check_positive("stages", stages, integer=True)
    ref = reference or attribute(model, image, method, target, layer, **options)
    module, loaded, x, _, _ = prepare_input(model, image)
    twin = copy.deepcopy(module).eval()
    names = _parametrised(twin, x.to(Engine.for_module(module).device))
    if not names:
        raise CnnscopeError("the model has no conv or linear layer to randomise")
    top_down = names[::-1]
    modules = dict(twin.named_modules())
    twin_model = dataclasses.replace(loaded, module=twin) if loaded is not None else twin
    fixed = [dataclasses.replace(t) for t in ref.targets]
    base = np.abs(ref.saliency()).reshape(len(ref), -1)
    done = 0
    out: dict[str, Any] = {"layers": [], "spearman": [], "constant": []}
    with torch.random.fork_rng(devices=[]):
        for s in range(1, stages + 1):
            upto = math.ceil(s * len(top_down) / stages)
            for j in range(done, upto):
                torch.manual_seed(seed + j)
                m = modules[top_down[j]]
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                else:
                    with torch.no_grad():
                        m.weight.normal_(0, 0.02)
            done = upto
            attr = attribute(
                twin_model, image, method, fixed if len(fixed) > 1 else fixed[0], layer, **options
            )
            new = np.abs(attr.saliency()).reshape(len(attr), -1)
            rhos = [_randomised_spearman(a, b) for a, b in zip(base, new)]
            defined = [r for r in rhos if r is not None]
            out["layers"].append(top_down[upto - 1])
            out["spearman"].append(float(np.mean(defined)) if defined else None)
            if any(_constant(b) and not _constant(a) for a, b in zip(base, new)):
                out["constant"].append(s)
    out["final"] = out["spearman"][-1]
    return out


def completeness(attr: Attribution) -> float | list[float]:
    """IG's relative completeness error ``|sum IG - (f(x) - f(x'))| / |f(x) - f(x')|``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)  # float32 rounding: a few draws in 1000 exceed 1e-5
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    >>> completeness(attribute(net, torch.randn(3, 2, 2), "ig", target=0)) < 1e-5
    True
    """
    if "completeness" not in attr.meta:
        raise CnnscopeError(f"completeness is defined for integrated_gradients, not {attr.method}")
    v = attr.meta["completeness"]
    return float(v) if attr.single else [float(t) for t in v]


def conservation(attr: Attribution) -> float | list[float]:
    """LRP's conservation error ``|(sum R + absorbed) / f(x) - 1|``.

    ``sum R`` is the relevance at the input and ``absorbed`` what the layers' biases took
    (``meta["input_share"]`` is ``sum R / f(x)`` alone).

    Examples
    --------
    >>> _ = torch.manual_seed(0)  # an unseeded net can output only zeros: then the error is NaN
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    >>> conservation(attribute(net, torch.rand(3, 5, 5), "lrp")) < 1e-4
    True
    """
    if "conservation" not in attr.meta or attr.layer is not None:
        raise CnnscopeError(f"conservation is defined for LRP at the input, not {attr.method}")
    v = torch.as_tensor(attr.meta["conservation"]).reshape(-1)
    errs = [abs(float(t) - 1.0) for t in v]
    return errs[0] if attr.single else errs


def _sanity_note(check: dict) -> str | None:
    """Why the sanity score is what it is, when a map was constant."""
    if check["final"] is None:
        return "undefined: the method's map of the original model is constant (nothing to rank)"
    if check["constant"]:
        stages = ", ".join(map(str, check["constant"]))
        word = "stage" if len(check["constant"]) == 1 else "stages"
        return (
            f"the randomised model's map was constant at {word} {stages} (nothing left of the "
            "original's ranking): scored 0, the expected rank correlation of a constant map"
        )
    return None


def evaluate(
    model,
    image,
    methods: Sequence[str],
    target=None,
    *,
    steps: int = 32,
    sanity: int = 0,
    options: dict | None = None,
    batch_size: int | None = None,
) -> list[dict]:
    """Score several methods on one image: one row per method.

    Parameters
    ----------
    methods : sequence of str
        Method names.
    steps : int
        Steps of the deletion / insertion curves.
    sanity : int
        Stages of the randomisation check (0: skip it, it reruns each method).
    options : dict, optional
        ``{method: {option: value}}``.

    Returns
    -------
    list of dict
        ``method``, ``seconds`` (the attribution itself), ``deletion`` (lower is better),
        ``insertion`` (higher is better), ``sanity`` (final Spearman, lower is better;
        with ``sanity_curve``, and ``sanity_note`` when a map was constant),
        ``completeness`` (IG) and ``conservation`` (LRP) errors, ``target``.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> rows = evaluate(load_model(), load_gallery_image("chelsea"), ["gradient", "grad_cam"], steps=8)
    >>> [r["method"] for r in rows]
    ['gradient', 'grad_cam']
    """
    options = options or {}
    rows = []
    for name in methods:
        spec = get_method(name)
        opts = dict(options.get(name, options.get(spec.name, {})))
        layer = opts.pop("layer", None)
        start = time.perf_counter()
        attr = attribute(model, image, spec.name, target, layer, batch_size=batch_size, **opts)
        seconds = time.perf_counter() - start
        if len(attr) != 1:
            raise CnnscopeError("evaluate takes one image")
        di = deletion_insertion(model, image, attr, steps=steps, batch_size=batch_size)[0]
        row = {
            "method": spec.name,
            "target": str(attr.target),
            "seconds": seconds,
            "deletion": di["deletion"],
            "insertion": di["insertion"],
            "sanity": None,
            "completeness": None,
            "conservation": None,
        }
        if sanity:
            check = randomization_check(
                model,
                image,
                spec.name,
                attr.targets[0],
                layer,
                stages=sanity,
                reference=attr,
                **opts,
            )
            row["sanity"] = check["final"]
            row["sanity_curve"] = check["spearman"]
            note = _sanity_note(check)
            if note:
                row["sanity_note"] = note
        one = attr[0]
        if "completeness" in one.meta:
            row["completeness"] = completeness(one)
        if "conservation" in one.meta and one.layer is None:
            row["conservation"] = conservation(one)
        rows.append(row)
    return rows
