"""Any PyTorch CNN: every entry point on look-alikes of real architectures (issue 15).

timm and torchvision cannot be imported beside the CPU torch wheel, so the architectures
are the small look-alike models of the tests (``tests/lookalike_models.py``,
``tests/structure_models.py``), with random weights and randomised BatchNorm statistics,
on gallery photos. One run measures, and writes into ``docs/architectures.md``:

1. the matrix: architecture x entry point, "ok" or the one-line reason the code gives
   (and any warning it logs), with a TorchScript row and a bare-module row;
2. agreement with Captum where both define a method the same way (Pearson r);
3. LRP conservation per architecture and composite, flagged when more than 5% off;
4. time of each method against one plain forward + backward of the same model and batch,
   interleaved in the same run, medians.

Usage::

    python bench/architectures.py            # full run, a few minutes on 2 cores
    python bench/architectures.py --quick    # fewer repetitions
    python bench/architectures.py --out /tmp/arch.md   # write elsewhere
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.lookalike_models, tests.structure_models

import captum  # noqa: E402
import captum.attr as captum_attr  # noqa: E402
from timing import interleaved  # noqa: E402

import cnnscope  # noqa: E402
from cnnscope.attribution import attribute  # noqa: E402
from cnnscope.attribution.lrp import COMPOSITES, CONSERVATION_TOLERANCE  # noqa: E402
from cnnscope.engine.rules import RuleState, attach_rules  # noqa: E402
from cnnscope.errors import CnnscopeError  # noqa: E402
from cnnscope.images import load_gallery_image  # noqa: E402
from cnnscope.index import build_index, open_index  # noqa: E402
from cnnscope.synthesis import visualize_units  # noqa: E402
from cnnscope.tree import Explorer, parse_path  # noqa: E402
from cnnscope.views import mosaic, order_channels  # noqa: E402
from cnnscope.views.mosaic import layer_activations  # noqa: E402
from tests import structure_models as sm  # noqa: E402
from tests.lookalike_models import ResNetLike, lookalikes, randomize_batchnorms  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
LABELS = [f"class {i}" for i in range(5)]
LRP_METHODS = ("lrp", "lrp_epsilon", "lrp_zplus", "lrp_alpha_beta")
TIMED = (
    "gradient",
    "guided_backprop",
    "grad_cam",
    "integrated_gradients",
    "smoothgrad",
    *LRP_METHODS,
)
#: what each look-alike stands for
STANDS_FOR = {
    "vgg": "VGG (conv-ReLU, max-pool, dense head)",
    "resnet": "ResNet basic blocks",
    "fused_bn_act": "timm BatchNormAct2d (ReLU, SiLU)",
    "densenet": "timm DenseNet (fused BN-act on concatenations)",
    "densenet_torchvision": "torchvision DenseNet (BN on concatenations, functional ReLU)",
    "inception": "timm Inception (fused BN-act branches)",
    "inception_torchvision": "torchvision Inception (BN, in-place F.relu branches)",
    "efficientnet_se": "EfficientNet-B0 / RegNetY (SiLU, SE gate)",
    "mobilenetv3_se": "MobileNetV3 (hardswish, hard-sigmoid SE gate)",
    "convnext": "ConvNeXt (LayerNorm, GELU, channels-last Linear)",
    "tv_densenet121": "torchvision densenet121 module layout",
    "tv_inception_v3": "torchvision inception_v3 module layout (80 px)",
    "timm_efficientnet_b0": "timm efficientnet_b0 layout (stages, BatchNormAct2d SiLU)",
    "tv_resnet18": "torchvision resnet18 layout",
    "tv_vgg": "torchvision VGG layout",
    "resnet (TorchScript)": "`torch.jit.script(resnet)`, saved and loaded by path",
    "resnet (bare module)": "the `nn.Module` itself, handed to every entry point",
}

log = logging.getLogger("bench.architectures")


@dataclass
class Arch:
    """One row: a model as the entry points get it, its module, input size and kind."""

    name: str
    model: object  # LoadedModel, or the bare module for the bare-module row
    module: nn.Module
    size: int
    kind: str = "loaded"  # "loaded" | "script" | "bare"
    source: nn.Module | None = None  # the Python module a TorchScript row was made from


def architectures(tmp: Path) -> list[Arch]:
    """Every look-alike at its input size, through ``load_model(module, input_size=...)``."""
    modules: dict[str, tuple[nn.Module, int]] = {k: (m, 64) for k, m in lookalikes().items()}
    structural = {
        "tv_densenet121": (sm.DenseNetLike, 64),
        "tv_inception_v3": (sm.InceptionLike, 80),
        "timm_efficientnet_b0": (sm.EfficientNetLike, 64),
        "tv_resnet18": (sm.ResNetLike, 64),
        "tv_vgg": (sm.VGGLike, 64),
    }
    for i, (name, (make, size)) in enumerate(structural.items()):
        torch.manual_seed(100 + i)
        modules[name] = (randomize_batchnorms(make(), seed=100 + i), size)
    rows = [
        Arch(n, cnnscope.load_model(m, input_size=s, labels=LABELS), m, s)
        for n, (m, s) in modules.items()
    ]
    torch.manual_seed(1)
    net = randomize_batchnorms(ResNetLike(), seed=1)
    path = tmp / "resnet_script.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    with captured():  # loading warns that layers cannot be recorded: the matrix says so
        scripted = cnnscope.load_model(str(path), input_size=64, labels=LABELS)
    rows.append(Arch("resnet (TorchScript)", scripted, scripted.module, 64, "script", net))
    rows.append(Arch("resnet (bare module)", net, net, 224, "bare"))
    return rows


# ---------------------------------------------------------------------------------------
# Running one entry point


class Suspicious(Exception):
    """An entry point returned, but its answer is not what the method shapes."""


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured():
    """Collect cnnscope's log warnings and Python warnings raised inside the block."""
    handler = _Collect()
    logger = logging.getLogger("cnnscope")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield handler.messages
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            handler.messages += [
                str(w.message)
                for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning))
            ]


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_cell(fn, notes: dict[str, int]) -> str:
    """``ok`` (plus what the call reports), ``no: <the code's one line>`` or ``CRASH``."""
    with captured() as messages:
        try:
            detail = fn()
        except CnnscopeError as exc:
            text = _one_line(exc)
            if len(text) <= 120:
                return f"no: {text}"
            notes.setdefault(text, len(notes) + 1)
            return f"no [w{notes[text]}]"
        except Suspicious as exc:
            return f"**WRONG**: {_one_line(exc)}"
        except Exception as exc:  # a raw traceback a user would see
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return f"**CRASH** {type(exc).__name__}: {_one_line(exc, 160)} ({where.name})"
    out = "ok" + (f" ({detail})" if detail else "")
    for m in dict.fromkeys(messages):
        key = _one_line(m)
        notes.setdefault(key, len(notes) + 1)
        out += f" [w{notes[key]}]"
    return out


def _not_cuts(net: nn.Module, x: torch.Tensor, layers) -> list[str]:
    """The ``layers`` that are no cut of the graph: with the layer's output held constant,
    the model's output still depends on the input (another branch goes around it)."""
    modules, out = dict(net.named_modules()), []
    for layer in layers:
        mod = modules.get(layer)
        if mod is None or not layer:  # logits, ``name#k`` calls: not checked
            continue
        hook = mod.register_forward_hook(lambda m, i, o: o.detach())
        try:
            xr = x[:1].clone().requires_grad_(True)
            y = net(xr)
            g = torch.autograd.grad(y.sum(), xr, allow_unused=True)[0] if y.requires_grad else None
        finally:
            hook.remove()
        if g is not None and float(g.abs().max()) > 0:
            out.append(layer)
    return out


def _check_map(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise Suspicious(f"{what} has non-finite values")
    if float(t.abs().max()) == 0 or float(t.float().std()) == 0:
        raise Suspicious(f"{what} is constant")


def _rectifier_calls(net: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(ReLU-family or smooth rectifier calls on the graph, of which ReLU, nn.ReLU module calls)."""
    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in net.modules()
        if type(m) is nn.ReLU
    ]
    try:
        with torch.enable_grad():
            found = attach_rules([net(x.clone().requires_grad_(True))], RuleState("gradient"))
    finally:
        for h in hooks:
            h.remove()
    rect = sum(n for a, n in found.items() if a.family != "other")
    relu = sum(n for a, n in found.items() if a.family == "relu" and a.name == "ReLU")
    return rect, relu, calls[0]


class Matrix:
    """Each entry point of one architecture, as a user would call it."""

    def __init__(self, arch: Arch, x: torch.Tensor, pics, folder: Path, tmp: Path):
        self.arch, self.x, self.pics, self.folder, self.tmp = arch, x, pics, folder, tmp
        self.m = arch.model
        # a bare module takes tensors; a loaded model takes the pictures themselves
        self.images = x if arch.kind == "bare" else pics

    def attr(self, method: str, check: bool = True, **kw):
        a = attribute(self.m, self.images, method, **kw)
        if check:
            _check_map(a.tensor, method)
        return a

    def gradient(self):
        self.attr("gradient")

    def guided(self):
        g = self.attr("guided_backprop", check=False)
        plain = attribute(self.m, self.images, "gradient").tensor
        rect, relu, modules = _rectifier_calls(self.arch.module, self.x)
        if rect and torch.equal(g.tensor, plain):
            raise Suspicious("guided backprop equals the plain gradient bit for bit")
        if float(g.tensor.abs().max()) == 0:
            if self.arch.source is not None:  # TorchScript: its Python module's map
                src = attribute(self.arch.source, self.x, "guided_backprop").tensor
                if float(src.abs().max()) != 0:
                    raise Suspicious("guided backprop is 0 everywhere, on its Python module not")
                return "0 everywhere, as on its Python module"
            if not (rect == relu == modules):
                raise Suspicious("guided backprop is 0 everywhere")
            ref = _captum_maps(self.arch.module, self.x, captum_attr.GuidedBackprop)
            if float(ref.abs().max()) != 0:
                raise Suspicious("guided backprop is 0 everywhere, Captum's is not")
            return "0 everywhere, as Captum's: no positive gradient path to the input"
        return None if rect == relu else f"{relu} of {rect} rectifier calls are ReLU"

    def grad_cam(self):
        a = self.attr("grad_cam", relu=False)
        shape = a.meta["cam"][a.layer].shape
        where = f"`{a.layer}`, {self._channels(a.layer)} ch at {shape[-2]}x{shape[-1]}"
        if _not_cuts(self.arch.module, self.x, [a.layer]):
            raise Suspicious(
                f"the default CAM layer {where} is no cut of the graph: the output also "
                "depends on the input around it (one branch of several)"
            )
        return where

    def _channels(self, layer: str) -> int:
        _, acts = layer_activations(self.m, self._one(), layer)
        return acts.shape[0]

    def _one(self):
        return self.x[:1] if self.arch.kind == "bare" else self.pics[0]

    def ig(self):
        a = self.attr("integrated_gradients", steps=8)
        err = float(torch.as_tensor(a.meta["completeness"]).max())
        return f"completeness err {err:.1e}"

    def smoothgrad(self):
        self.attr("smoothgrad", samples=4)

    def lrp(self):
        outs = []
        for method in LRP_METHODS:
            try:
                self.attr(method)
            except CnnscopeError as exc:
                outs.append(f"{method}: {_one_line(exc)}")
        if len(outs) == len(LRP_METHODS):
            raise CnnscopeError(outs[0].partition(": ")[2])
        return "; ".join(outs) or None

    def explorer(self) -> tuple[Explorer, torch.Tensor]:
        ex = Explorer(self.m)
        pic = self.pics[0]
        return ex, ex.input(pic)

    def tree(self):
        ex, x = self.explorer()
        top = ex.predictions(x, k=1)[0]["index"]
        root = parse_path(f"logits:{top}")
        chain = ", ".join(f"`{n}`" for n in ex.chain[:5]) + (", ..." if len(ex.chain) > 5 else "")
        kids = ex.children(x, root, k=2)
        if not kids:
            against = ex.children(x, root, k=2, sign="neg")
            return (
                f"{len(ex.chain)} levels: {chain}; the top class has no excitatory child in "
                f"`{ex.chain[1]}` (its logit is carried by its bias), {len(against)} inhibitory"
            )
        fwd = ex.forward(x)
        unfed = [
            (up, low)
            for up, low in zip(ex.chain, ex.chain[1:])
            if float(fwd.grad(up, torch.ones_like(fwd.activation(up)), to=low).abs().max()) == 0
        ]
        if unfed:
            raise Suspicious(
                f"default chain {chain}: "
                + ", ".join(f"`{lo}` does not feed `{up}`" for up, lo in unfed)
                + " (parallel branches as levels: their expansions are empty)"
            )
        around = _not_cuts(self.arch.module, self.x, [n for n in ex.chain if n != "logits"])
        pics = ex.reconstructions(x, [k.path for k in kids])
        for kid, pic in zip(kids, pics):
            if float(pic.std()) == 0:
                raise Suspicious(
                    f"child `{kid.unit}` (weight {kid.weight:+.3g}) of logits:{top} has a flat "
                    "guided reconstruction"
                )
        skip = (
            f"; {', '.join(f'`{n}`' for n in around)} bypassed by a skip or dense connection"
            if around
            else ""
        )
        return f"{len(ex.chain)} levels: {chain}{skip}"

    def overview(self):
        ex, x = self.explorer()
        ov = ex.overview(x, per_layer=3)
        if not ov or not all(level["units"] for level in ov):
            raise Suspicious("a level without units")

    def _view_layer(self) -> str:
        chain = cnnscope.models.as_loaded(self.m).default_chain
        spatial = [n for n in chain if n != "logits"]
        if not spatial:
            raise Suspicious("no layer to view in the default chain")
        return spatial[len(spatial) // 2]

    def views(self):
        layer = self._view_layer()
        mo = mosaic(self.m, self._one(), layer, order="kmeans", order_options={"k": 2})
        if float(mo.image.std()) == 0:
            raise Suspicious("blank mosaic")
        _, acts = layer_activations(self.m, self._one(), layer)
        order = order_channels(acts, "pca")
        if sorted(order.permutation.tolist()) != list(range(acts.shape[0])):
            raise Suspicious("the PCA ordering is not a permutation")
        return f"`{layer}`"

    def synthesis(self):
        layer = self._view_layer()
        img = visualize_units(self.m, [f"{layer}:0"], steps=3, size=self.arch.size)[0]
        if float(img.std()) == 0:
            raise Suspicious("a constant picture")

    def index(self):
        layer = self._view_layer()
        out = build_index(
            self.m, self.folder, [layer], top_k=2, out=self.tmp / "ix", workers=0, rebuild=True
        )
        if len(open_index(out).examples(f"{layer}:0")) != 2:
            raise Suspicious("the index kept fewer examples than images")


ENTRY_POINTS = {
    "saliency": Matrix.gradient,
    "guided": Matrix.guided,
    "Grad-CAM (default layer)": Matrix.grad_cam,
    "IG": Matrix.ig,
    "SmoothGrad": Matrix.smoothgrad,
    "LRP (4 methods)": Matrix.lrp,
    "tree": Matrix.tree,
    "overview": Matrix.overview,
    "views": Matrix.views,
    "synthesis": Matrix.synthesis,
    "index": Matrix.index,
}


def inputs(arch: Arch) -> tuple[torch.Tensor, list]:
    """The gallery photos as the model sees them (a bare module: ImageNet defaults)."""
    loaded = cnnscope.models.as_loaded(arch.model, layers=False)
    pics = [load_gallery_image(p) for p in PHOTOS]
    return torch.cat([loaded.preprocess(p) for p in pics]), pics


# ---------------------------------------------------------------------------------------
# Peers, conservation, time


def _captum_maps(net: nn.Module, x: torch.Tensor, cls, target=None, **kw) -> torch.Tensor:
    """Captum's ``cls`` on ``net`` for the top-1 classes (or ``target``) of ``x``."""
    if target is None:
        with torch.no_grad():
            target = net(x).argmax(1).tolist()
    with warnings.catch_warnings():  # Captum's own notes, not cnnscope's
        warnings.simplefilter("ignore")
        return cls(net).attribute(x.clone().requires_grad_(True), target=target, **kw).detach()


def _r(a: torch.Tensor, b: torch.Tensor) -> float | str:
    """The smallest per-image Pearson r of two batches of maps."""
    if float(a.abs().max()) == 0 and float(b.abs().max()) == 0:
        return "both 0 everywhere"
    rs = []
    for u, v in zip(a.detach().float(), b.detach().float()):
        rs.append(float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]))
    return min(rs)


def peers(arch: Arch, x: torch.Tensor) -> dict[str, str]:
    """Pearson r between cnnscope and Captum, method by method (minimum over the images)."""
    net, m = arch.module, arch.model
    with torch.no_grad():
        target = net(x).argmax(1).tolist()
    xr = x.clone().requires_grad_(True)

    def cap(cls, **kw):
        return _captum_maps(net, x, cls, target, **kw)

    out: dict[str, str] = {}

    def cell(name, fn):
        try:
            r = fn()
            out[name] = r if isinstance(r, str) else f"{r:.6f}"
        except CnnscopeError as exc:
            out[name] = f"n/a: {_one_line(exc, 120)}"
        except Exception as exc:
            out[name] = f"Captum: {type(exc).__name__}: {_one_line(exc, 100)}"

    ours = lambda method, **kw: attribute(m, x, method, target=target, **kw).tensor  # noqa: E731
    cell("saliency", lambda: _r(ours("gradient"), cap(captum_attr.Saliency, abs=False)))
    cell("input x gradient", lambda: _r(ours("gradient_x_input"), cap(captum_attr.InputXGradient)))
    cell(
        "IG (16, Gauss-Legendre, zero baseline)",
        lambda: _r(
            ours("integrated_gradients", steps=16),
            cap(captum_attr.IntegratedGradients, baselines=0.0, n_steps=16, method="gausslegendre"),
        ),
    )
    rect, relu, modules = _rectifier_calls(net, x) if arch.kind != "script" else (0, 0, 0)
    for name, method, cls in (
        ("guided backprop", "guided_backprop", captum_attr.GuidedBackprop),
        ("deconvnet", "deconvnet", captum_attr.Deconvolution),
    ):
        if arch.kind == "script":
            out[name] = "n/a: Captum hooks modules, a TorchScript model has none it can hook"
        elif rect != relu or relu != modules:
            out[name] = (
                f"not the same method: {rect} rectifier calls, {relu} ReLU, {modules} "
                "through nn.ReLU modules (Captum overrides nn.ReLU modules only)"
            )
        else:
            cell(name, lambda method=method, cls=cls: _r(ours(method), cap(cls)))

    def cam():
        a = attribute(m, x, "grad_cam", target=target, relu=False)
        layer = dict(net.named_modules()).get(a.layer)
        if layer is None:
            raise CnnscopeError(f"the CAM layer {a.layer!r} is no module Captum can hook")
        ref = captum_attr.LayerGradCam(net, layer).attribute(xr, target=target)
        ref = captum_attr.LayerAttribution.interpolate(
            ref.detach(), tuple(x.shape[-2:]), "bilinear"
        )
        return _r(a.tensor, ref)

    if arch.kind == "script":
        out["Grad-CAM (upsampled)"] = (
            "n/a: " + run_cell(lambda: attribute(m, x, "grad_cam"), {}).partition("no: ")[2]
        )
    else:
        cell("Grad-CAM (upsampled)", cam)
    return out


def _span(t: torch.Tensor, digits: int) -> str:
    lo, hi = float(t.min()), float(t.max())
    return (
        f"{lo:.{digits}f}"
        if round(lo, digits) == round(hi, digits)
        else f"{lo:.{digits}f}..{hi:.{digits}f}"
    )


def conservation(arch: Arch, x: torch.Tensor, notes: dict[str, int]) -> dict[str, str]:
    """``input share / conservation`` per composite, each flagged when more than 5% off."""
    out = {}
    for comp in COMPOSITES:
        with captured() as messages:
            try:
                a = attribute(arch.model, x, "lrp", composite=comp)
            except CnnscopeError as exc:
                out[comp] = f"no: {_one_line(exc, 120)}"
                continue
        c, share = a.meta["conservation"], a.meta["input_share"]
        off = lambda t: float((t.double() - 1).abs().max()) > CONSERVATION_TOLERANCE  # noqa: E731
        left, right = _span(share, 2), _span(c, 3)
        cell = f"{'*' + left + '*' if off(share) else left} / {'**' + right + '**' if off(c) else right}"
        for msg in dict.fromkeys(messages):
            key = _one_line(msg)
            notes.setdefault(key, len(notes) + 1)
            cell += f" [w{notes[key]}]"
        out[comp] = cell
    return out


#: inner samples of IG and SmoothGrad in the timings (their defaults are 50)
TIMED_SAMPLES = {"integrated_gradients": {"steps": 16}, "smoothgrad": {"samples": 16}}


def timings(arch: Arch, x: torch.Tensor, repeats: int) -> dict[str, float | str]:
    """Each method's median time over one plain forward + backward to the input."""
    net = arch.module
    with torch.no_grad():
        top = net(x).argmax(1, keepdim=True)
    calls = [0]

    def fresh() -> torch.Tensor:
        """Another input for every call, so that no call reuses a cached forward."""
        calls[0] += 1
        return x * (1 + 1e-3 * calls[0])

    def plain():
        xr = fresh().requires_grad_(True)
        torch.autograd.grad(net(xr).gather(1, top).sum(), xr)

    fns = {"fwd+bwd": plain}
    skipped: dict[str, str] = {}
    for method in TIMED:
        kw = TIMED_SAMPLES.get(method, {})
        fn = lambda method=method, kw=kw: attribute(  # noqa: E731
            arch.model, fresh(), method, target=top[:, 0].tolist(), **kw
        )
        try:
            with captured():
                fn()
        except CnnscopeError as exc:
            skipped[method] = "n/a"
            log.debug("%s: %s", method, exc)
            continue
        fns[method] = fn
    with captured():
        t = interleaved(fns, repeats)
    out: dict[str, float | str] = {"fwd+bwd": t["fwd+bwd"]}
    for method in TIMED:
        out[method] = skipped.get(method) or t[method] / t["fwd+bwd"]
    return out


# ---------------------------------------------------------------------------------------
# The document


def _range(times: dict, methods) -> tuple[float, float]:
    values = [t[m] for t in times.values() for m in methods if not isinstance(t[m], str)]
    return min(values), max(values)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _notes(notes: dict[str, int]) -> list[str]:
    return [f"- w{i}: {text}" for text, i in sorted(notes.items(), key=lambda kv: kv[1])]


def write_doc(path: Path, arches, matrix, matrix_notes, agree, cons, cons_notes, times, meta):
    lines = [
        "# Any PyTorch CNN: architectures",
        "",
        "Generated by `python bench/architectures.py` "
        f"({'`--quick`, ' if meta['quick'] else ''}{meta['seconds']:.0f} s; "
        f"{meta['machine']}; torch {torch.__version__}, {meta['threads']} torch thread(s); "
        f"Captum {captum.__version__}). Rerun it when an entry point changes.",
        "",
        "timm and torchvision do not load beside the CPU torch wheel of this machine, so the",
        "architectures are the look-alike models of the tests (`tests/lookalike_models.py`,",
        "`tests/structure_models.py`): each reproduces the structure that matters (fused",
        "BatchNorm-activation modules, BatchNorm on concatenations, Inception branches,",
        "squeeze-excitation gates with SiLU or hardswish, LayerNorm and channels-last Linear,",
        "the module layout of the torchvision / timm originals), tiny, with random weights and",
        "randomised BatchNorm statistics. Each is handed over as",
        "`cnnscope.load_model(module, input_size=S, labels=[...])` and run on four gallery",
        f"photos ({', '.join(PHOTOS)}) at S = 64 px (80 for the Inception v3 layout); the",
        "TorchScript row is the scripted ResNet look-alike loaded by path, the bare-module row",
        "the `nn.Module` itself, given to every entry point (at the default 224 px).",
        "The real timm models, measured in issue 15 with their own weights, are not here.",
        "",
        "| row | stands for |",
        "|---|---|",
        *[f"| {a.name} | {STANDS_FOR.get(a.name, '')} |" for a in arches],
        "",
        "## Entry points",
        "",
        "`ok`: the call returned and its answer passed a check that the method shaped it (finite,",
        "not constant; guided backprop not bit-equal to the plain gradient; tree children with",
        "non-flat reconstructions; a mosaic that is not blank; an index with the examples asked",
        "for). `no:` is the one-line `CnnscopeError` the code gives, word for word (`no [wN]`: a",
        "long one, written out under the table). `[wN]` after `ok` is a warning the call logged",
        "(listed under the table). `**WRONG**`: the call returned an answer that fails one of",
        "these checks, or a default layer that is no cut of the graph (the output also depends",
        "on the input around it) or a tree level that does not feed the level above it.",
        "Details in brackets: the default CAM",
        "layer (channels, resolution), the default tree chain, the layer the views use, IG's",
        "completeness error (8 steps). Views, synthesis and index use the middle layer of the",
        "default chain. The entry points: `attribute` (saliency = `gradient`, `guided_backprop`,",
        "`grad_cam`, `integrated_gradients`, `smoothgrad`, the four LRP methods), `Explorer`",
        "(`children` + `reconstructions`, `overview`), `views.mosaic` + `order_channels`,",
        "`synthesis.visualize_units` (3 steps), `index.build_index` (4 images, top 2).",
        "",
    ]
    header = ["architecture", *ENTRY_POINTS]
    lines += _table(header, [[a.name, *[matrix[a.name][e] for e in ENTRY_POINTS]] for a in arches])
    lines += ["", "Warnings and long errors:", "", *_notes(matrix_notes), ""]
    bad = [(a.name, e, v) for a in arches for e, v in matrix[a.name].items() if "**" in v]
    lines += [
        "Crashes (a raw exception instead of an answer or a one-line error) and wrong answers: "
        + ("none." if not bad else "; ".join(f"{n} / {e}: {v}" for n, e, v in bad)),
        "",
        "## Agreement with Captum",
        "",
        f"Pearson r between cnnscope and Captum {captum.__version__} on the same model, input",
        "and targets (each image's top-1 class), the smallest over the four images, for the",
        "methods both define the same way: saliency (`Saliency(abs=False)`), input x gradient,",
        "Integrated Gradients (zero baseline, 16 Gauss-Legendre points on both sides), guided",
        "backprop and deconvnet where every rectifier call of the graph is an `nn.ReLU` module",
        "(Captum overrides those modules only: on SiLU, GELU, hardswish or functional ReLUs it",
        "returns the plain gradient, cnnscope shapes them, see [methods](methods.md#backward-rules)),",
        "and Grad-CAM on cnnscope's default CAM layer as `LayerGradCam` + bilinear",
        "`LayerAttribution.interpolate` (both without the final ReLU, so that a random model's",
        "all-negative CAM is not compared as zeros). DeepLift: cnnscope has no DeepLift, so",
        "there is nothing to compare.",
        "",
        "zennit (the reference for LRP composites and canonizers) is not compared: zennit 0.5.1",
        "(the latest on PyPI) requires `torchvision` unpinned and imports it at import time",
        "(`zennit/__init__.py` line 10 imports `zennit.torchvision`, which imports",
        "`torchvision.models.resnet`), checked by `pip download zennit --no-deps` and reading",
        "the wheel. torchvision's PyPI build does not load beside this CPU torch wheel, and",
        "installing it would pull a second (CUDA) torch. The LRP rules are instead checked",
        "against hand-written references in `tests/test_lrp_architectures.py`, and",
        "conservation is below.",
        "",
    ]
    peer_cols = list(next(iter(agree.values())))
    lines += _table(
        ["architecture", *peer_cols], [[n, *[v[c] for c in peer_cols]] for n, v in agree.items()]
    )
    lows = [
        (n, c, v)
        for n, row in agree.items()
        for c, v in row.items()
        if v[:1].isdigit() or v.startswith("-")
        if float(v) < 0.9999
    ]
    lines += [
        "",
        "Below r = 0.9999: "
        + ("none." if not lows else "; ".join(f"{n} / {c}: {v}" for n, c, v in lows)),
        "",
        "## LRP conservation",
        "",
        "`lrp` with each composite of `cnnscope.attribution.lrp.COMPOSITES` (default epsilon,",
        "gamma, alpha and beta) on the four images, min..max over them. Left of the slash: the",
        "input share, `sum of input relevance / target logit`, *in italics* when more than",
        f"{100 * CONSERVATION_TOLERANCE:.0f}% off 1. Right: conservation as the code computes and",
        "checks it (`meta['conservation']`): `(sum of input relevance + relevance absorbed) /",
        "target logit`, where the absorbed part is what the layers' biases take (epsilon, gamma)",
        "and what reaches units with no input contribution of the rule's sign (z+, alpha-beta),",
        "each measured by its own probe; **bold** when more than",
        f"{100 * CONSERVATION_TOLERANCE:.0f}% off, which is when the code logs its warning",
        "(`[wN]`, listed below).",
        "",
    ]
    comps = list(COMPOSITES)
    lines += _table(
        ["architecture", *comps], [[n, *[v[c] for c in comps]] for n, v in cons.items()]
    )
    lines += [
        "",
        "The input share is far from 1 on most rows, with no warning: the code checks",
        "conservation, and these are random weights with randomised BatchNorm statistics, whose",
        "folded shifts give every layer large biases, so under epsilon and gamma most of the",
        "logit goes to biases (with either sign: hence shares below 0 or above 1). z+ and",
        "alpha-beta leave biases out; their share is near 1 unless a layer has no input",
        "contribution of the rule's sign for the target (`resnet`: its top class owes nothing",
        "positive to its last features, its logit is its bias). The input share is",
        "`meta['input_share']`, the rest `meta['absorbed']`.",
        "",
        "The TorchScript row is left out: LRP refuses it (`LRP rewrites a copy of the model:",
        "TorchScript models are not supported`); the bare-module row is the `resnet` row's module.",
        "",
        "Warnings:",
        "",
        *(_notes(cons_notes) or ["- none: relevance is conserved within 5% everywhere"]),
        "",
    ]
    lines += [
        "## Time against one forward + backward",
        "",
        "Median time of each `attribute` call over the median time of one plain forward and",
        "backward to the input (`torch.autograd.grad` of the targets' logits) of the same",
        "module and batch (the four photos; each call gets a slightly rescaled copy, so none",
        f"reuses a cached forward), interleaved in the same run, {meta['repeats']}",
        f"repeats after a warm-up, CPU, `torch.set_num_threads({meta['threads']})`. Methods at",
        "their defaults except IG (16 steps) and SmoothGrad (16 samples), whose time grows",
        "with their sample count (both default to 50). These models are tiny, so",
        "cnnscope's fixed cost per call (target resolution, the engine's recorded forward and",
        "graph walk, LRP's canonized copy reused from the cache) weighs more than on a real",
        "network; [benchmarks](benchmarks.md) has the figures on the 224 px built-in model.",
        "",
    ]
    header = ["architecture", "fwd+bwd (ms)", *TIMED]
    rows = []
    for name, t in times.items():
        cells = [name, f"{1000 * t['fwd+bwd']:.1f}"]
        cells += [v if isinstance(v, str) else f"{v:.1f}x" for v in (t[m] for m in TIMED)]
        rows.append(cells)
    lines += _table(header, rows)
    span = lambda ms: "{:.1f}x-{:.1f}x".format(*_range(times, ms))  # noqa: E731
    lines += [
        "",
        "`n/a`: the method refuses the model (see the matrix). When other jobs share the",
        "cores (load average in the header), calls of a few milliseconds spread by about 30%",
        f"between runs. Here: single-pass methods {span(TIMED[:3])} of one forward + backward,",
        f"IG and SmoothGrad with 16 samples {span(TIMED[3:5])} (64 rows, in chunks, against 4),",
        f"LRP {span(LRP_METHODS)}: each rule layer runs its layer again with modified weights",
        "(up to four extra convolutions for z+ and alpha-beta) and a probe for its absorbed",
        "relevance, a fixed cost per layer that dominates on these tiny layers.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5, quick 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "architectures.md")
    p.add_argument("--only", nargs="*", help="these rows only (a trial run)")
    args = p.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    start, load = time.perf_counter(), os.getloadavg()[0]
    matrix, matrix_notes, agree, cons, cons_notes, times = {}, {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "images"
        folder.mkdir()
        for p_name in PHOTOS:
            load_gallery_image(p_name).resize((96, 72)).save(folder / f"{p_name}.png")
        arches = [a for a in architectures(tmp) if not args.only or a.name in args.only]
        for arch in arches:
            t0 = time.perf_counter()
            x, pics = inputs(arch)
            mx = Matrix(arch, x, pics, folder, tmp)
            matrix[arch.name] = {
                e: run_cell(lambda f=f, mx=mx: f(mx), matrix_notes) for e, f in ENTRY_POINTS.items()
            }
            t1 = time.perf_counter()
            with captured():
                agree[arch.name] = peers(arch, x)
            t2 = time.perf_counter()
            if arch.kind == "loaded":  # LRP refuses TorchScript; the bare row is `resnet`
                cons[arch.name] = conservation(arch, x, cons_notes)
            t3 = time.perf_counter()
            if arch.kind != "bare":
                times[arch.name] = timings(arch, x, repeats)
            parts = (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)
            print(
                f"{arch.name}: matrix {parts[0]:.1f} s, peers {parts[1]:.1f} s, "
                f"conservation {parts[2]:.1f} s, timings {parts[3]:.1f} s",
                file=sys.stderr,
            )
    meta = {
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "threads": args.threads,
        "repeats": repeats,
    }
    write_doc(args.out, arches, matrix, matrix_notes, agree, cons, cons_notes, times, meta)
    print(f"wrote {args.out} in {meta['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
