"""Class activation maps: weight a layer's feature maps and sum them.

With ``A`` the layer's activation (K x h x w per image) and ``G`` the gradient of the
target at that layer (from :meth:`cnnscope.engine.Forward.grad`, one backward for every
layer asked for), the maps are:

==============  ==================================================================
grad_cam        ``relu(sum_k mean_hw(G_k) A_k)``
grad_cam_pp     ``relu(sum_k (sum_hw a_k relu(G_k)) A_k)``, ``a = G^2 / (2 G^2 + sum_hw(A) G^3)``
xgrad_cam       ``relu(sum_k (sum_hw G_k A_k / sum_hw A_k) A_k)``
hires_cam       ``relu(sum_k G_k * A_k)``
layer_cam       ``sum_k relu(G_k) * A_k``; several layers fused: ``max`` of the deepest map
                and the shallower ones boosted by ``tanh(2 m / max m)``
score_cam       ``relu(sum_k s_k A_k)``, ``s_k`` the target's softmax score on ``x * up(A_k)``
ablation_cam    ``relu(sum_k (y - y_k) / y A_k)``, ``y_k`` the score with channel ``k`` zeroed
eigen_cam       the first principal component of ``A`` (class-agnostic)
guided_grad_cam ``grad_cam / max(grad_cam) * guided_backprop`` (pixel map)
==============  ==================================================================

Maps are upsampled bilinearly to the input size; the raw (unnormalised) map of each
layer is kept in ``meta["cam"]`` at the layer's own resolution.
"""

from __future__ import annotations

import logging

import torch

from ..engine import INPUT, LOGITS
from ..errors import CnnscopeError
from .context import Context, upsample
from .registry import MethodOutput, check_positive, register

log = logging.getLogger(__name__)

FUSIONS = ("mean", "max", "tanh_max")
_EPS = 1e-7


def _layers(ctx: Context, layer) -> list[str]:
    if layer is None:
        return [ctx.default_cam_layer()]
    names = [layer] if isinstance(layer, str) else list(layer)
    if not names:
        raise CnnscopeError("no layer given")
    out: list[str] = []
    for name in names:
        if isinstance(name, str) and "," in name:
            out.extend(ctx.resolve_layer(n) for n in name.split(",") if n.strip())
        else:
            out.append(ctx.resolve_layer(name))
    return out


def _record_cam(ctx: Context, layers: list[str], rule: str = "gradient", grads: bool = True):
    """Forward x once; return activations and (optionally) target gradients per layer."""
    fwd = ctx.record(ctx.x, layers)
    ctx.resolve_targets(fwd)
    order = fwd.layers
    names = sorted(dict.fromkeys(fwd.resolve(n) for n in layers), key=order.index)  # shallow first
    acts = []
    for name in names:
        a = fwd.activation(name)
        if a.dim() != 4:
            raise CnnscopeError(
                f"layer {name!r} has no spatial map (output {tuple(a.shape[1:])}): "
                "pick a convolutional layer"
            )
        if ctx.target_layer != LOGITS and not fwd.below(name, ctx.target_layer):
            raise CnnscopeError(
                f"layer {name!r} is not below the target's layer {ctx.target_layer!r}"
            )
        acts.append(a)
    if not grads:
        return names, acts, None
    g = ctx.grad(fwd, list(range(ctx.n)), names, rule, last=True)
    return names, acts, list(g)


def _fuse(maps: list[torch.Tensor], fusion: str) -> torch.Tensor:
    if len(maps) == 1:
        return maps[0]
    if fusion not in FUSIONS:
        raise CnnscopeError(f"unknown fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    scaled = []
    for i, m in enumerate(maps):
        top = m.flatten(1).amax(1).clamp_min(_EPS).view(-1, 1, 1)
        # LayerCAM's fusion: shallow layers' maps are boosted by tanh(2 m / max m), the
        # deepest one is only scaled to [0, 1]; maps arrive shallow first
        shallow = fusion == "tanh_max" and i < len(maps) - 1
        scaled.append(torch.tanh(2 * m / top) if shallow else m / top)
    stack = torch.stack(scaled)
    return stack.mean(0) if fusion == "mean" else stack.amax(0)


def _finish(ctx: Context, names, cams, fusion: str, relu: bool) -> MethodOutput:
    cams = [c.clamp_min(0) if relu else c for c in cams]
    meta = {"cam": {n: c.detach().cpu() for n, c in zip(names, cams)}}
    up = [upsample(c, ctx.size) for c in cams]
    fused = _fuse(up, fusion)
    return MethodOutput(fused, meta, names[0] if len(names) == 1 else names)


def _gradient_cam(ctx: Context, layer, fusion: str, relu: bool, weigh) -> MethodOutput:
    names, acts, grads = _record_cam(ctx, _layers(ctx, layer))
    cams = [weigh(a.double(), g.double()).float() for a, g in zip(acts, grads)]
    return _finish(ctx, names, cams, fusion, relu)


@register(
    "grad_cam",
    title="Grad-CAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("gradcam",),
    summary="feature maps weighted by their spatially averaged gradients",
    reference="Selvaraju et al. 2017, Grad-CAM",
)
def grad_cam(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """Grad-CAM (``quirks``: pytorch-cnn-visualizations' ``1 + sum`` start)."""

    def weigh(a, g):
        w = g.mean(dim=(2, 3), keepdim=True)
        cam = (w * a).sum(1)
        return cam + 1 if ctx.quirks else cam

    return _gradient_cam(ctx, layer, fusion, relu, weigh)


@register(
    "grad_cam_pp",
    title="Grad-CAM++",
    family="cam",
    output="map",
    style="overlay",
    aliases=("gradcampp", "grad_cam_plus_plus", "gradcam_pp", "gradcamplusplus", "grad_campp"),
    summary="Grad-CAM with pixel-wise weights from second and third order terms",
    reference="Chattopadhyay et al. 2018, Grad-CAM++",
)
def grad_cam_pp(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """Grad-CAM++ (with the exponential-score closed form of the paper)."""

    def weigh(a, g):
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0)
        w = (alpha * g.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
        return (w * a).sum(1)

    return _gradient_cam(ctx, layer, fusion, relu, weigh)


@register(
    "xgrad_cam",
    title="XGrad-CAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("xgradcam", "axiom_cam"),
    summary="feature maps weighted by activation-normalised gradient x activation",
    reference="Fu et al. 2020, Axiom-based Grad-CAM",
)
def xgrad_cam(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """XGrad-CAM."""

    def weigh(a, g):
        w = (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + _EPS)
        return (w * a).sum(1)

    return _gradient_cam(ctx, layer, fusion, relu, weigh)


@register(
    "hires_cam",
    title="HiResCAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("hirescam",),
    summary="gradient times activation summed over channels, without spatial averaging",
    reference="Draelos & Carin 2020, HiResCAM",
)
def hires_cam(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """HiResCAM."""
    return _gradient_cam(ctx, layer, fusion, relu, lambda a, g: (g * a).sum(1))


@register(
    "layer_cam",
    title="LayerCAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("layercam",),
    summary="positive gradients times activations, fusable across several layers",
    reference="Jiang et al. 2021, LayerCAM",
)
def layer_cam(
    ctx: Context, layer=None, relu: bool = True, fusion: str = "tanh_max"
) -> MethodOutput:
    """LayerCAM; give several layers (a list or ``a,b,c``) to fuse them."""
    return _gradient_cam(ctx, layer, fusion, relu, lambda a, g: (g.clamp_min(0) * a).sum(1))


@register(
    "eigen_cam",
    title="Eigen-CAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("eigencam",),
    summary="the first principal component of the feature maps (ignores the target)",
    reference="Muhammad & Yeasin 2020, Eigen-CAM",
)
def eigen_cam(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """Eigen-CAM: projection of the centred feature vectors on their first principal axis.

    The sign of a principal axis is arbitrary: it is chosen so that the map correlates
    positively with the channel sum of the activations.
    """
    names, acts, _ = _record_cam(ctx, _layers(ctx, layer), grads=False)
    cams = []
    for a in acts:
        n, k, h, w = a.shape
        feats = a.double().reshape(n, k, h * w).transpose(1, 2)  # n x hw x k
        centred = feats - feats.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        proj = centred @ vh[:, 0, :].unsqueeze(-1)  # n x hw x 1
        cam = proj[..., 0]
        total = feats.sum(2)
        corr = ((cam - cam.mean(1, keepdim=True)) * (total - total.mean(1, keepdim=True))).sum(1)
        cam = cam * torch.where(corr < 0, -1.0, 1.0).to(cam).view(-1, 1)
        cams.append(cam.reshape(n, h, w).float())
    return _finish(ctx, names, cams, fusion, relu)


def _channel_masks(a: torch.Tensor, ks: slice, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsampled, min-max scaled maps ``a[ks]`` of one image: (k, 1, H, W) and which vary."""
    maps = upsample(a[ks].unsqueeze(1), size)[:, 0]  # k x H x W
    flat = maps.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    valid = hi > lo
    span = torch.where(valid, hi - lo, torch.ones_like(hi))
    masks = (maps - lo.view(-1, 1, 1)) / span.view(-1, 1, 1)
    return masks.unsqueeze(1), valid


@register(
    "score_cam",
    slow=True,
    title="Score-CAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("scorecam",),
    summary="feature maps weighted by the target's score on the image masked by each map",
    reference="Wang et al. 2020, Score-CAM",
)
def score_cam(
    ctx: Context, layer=None, score: str = "softmax", relu: bool = True, fusion: str = "mean"
) -> MethodOutput:
    """Score-CAM, batched over masks in chunks (never channels x 3 x H x W at once).

    ``score``: ``softmax`` (class probability, the paper) or ``logit``; unit targets
    use the unit's value. Constant maps get weight 0. ``quirks``: pytorch-cnn-visualizations' ``1 + sum``.
    """
    if score not in ("softmax", "logit"):
        raise CnnscopeError(f"unknown score {score!r}: choose softmax or logit")
    names, acts, _ = _record_cam(ctx, _layers(ctx, layer), grads=False)
    cams = []
    for name, a in zip(names, acts):
        k = a.shape[1]
        weights = torch.zeros(ctx.n, k, device=a.device)
        for i in range(ctx.n):
            x = ctx.x[i : i + 1]
            flat = a[i].flatten(1)
            # a constant map stays constant when upsampled: no mask, weight 0, no forward
            keep = torch.nonzero(flat.amax(1) > flat.amin(1)).flatten()
            if keep.numel() == 0:
                continue

            def make(s: slice, a=a, i=i, x=x, keep=keep) -> torch.Tensor:
                masks, _ = _channel_masks(a[i][keep[s]], slice(None), ctx.size)
                return x * masks

            w = ctx.scores_of(
                make, [i] * len(keep), softmax=score == "softmax", desc=f"Score-CAM {name}"
            )
            weights[i, keep] = w.to(weights.dtype)
        cam = (weights.view(ctx.n, k, 1, 1) * a).sum(1)
        cams.append(cam + 1 if ctx.quirks else cam)
    return _finish(ctx, names, cams, fusion, relu)


@register(
    "ablation_cam",
    slow=True,
    title="Ablation-CAM",
    family="cam",
    output="map",
    style="overlay",
    aliases=("ablationcam",),
    summary="feature maps weighted by how much the score drops when each is zeroed",
    reference="Desai & Ramaswamy 2020, Ablation-CAM",
)
def ablation_cam(ctx: Context, layer=None, relu: bool = True, fusion: str = "mean") -> MethodOutput:
    """Ablation-CAM: ``w_k = (y - y_k) / y`` with ``y_k`` the score with channel ``k`` zeroed.

    The ablations run through :meth:`cnnscope.engine.Engine.intervene`, one batch row
    per channel, in chunks.
    """
    names, acts, _ = _record_cam(ctx, _layers(ctx, layer), grads=False)
    top = ctx.target_layer
    read = top if top != LOGITS else LOGITS
    cams = []
    for name, a in zip(names, acts):
        k = a.shape[1]
        weights = torch.zeros(ctx.n, k, device=a.device)
        for i in range(ctx.n):
            y = ctx.scores[i].to(a.device)
            # zeroing a channel that is already zero changes nothing: weight 0, no forward
            live = torch.nonzero(a[i].flatten(1).abs().amax(1) > 0).flatten()
            drops = []
            for s in ctx.chunks(len(live), f"Ablation-CAM {name}"):
                channels = live[s]

                def zero(out, channels=channels):
                    keep = torch.ones(
                        len(channels), out.shape[1], device=out.device, dtype=out.dtype
                    )
                    keep[torch.arange(len(channels)), channels] = 0
                    return out * keep.view(*keep.shape, *([1] * (out.dim() - 2)))

                x = ctx.x[i : i + 1].expand(len(channels), *ctx.x.shape[1:])
                out = ctx.engine.intervene(x, {name: zero}, read=[read])[read]
                drops.append(ctx._score_rows(out, [i] * len(channels)))
            if not drops:
                continue
            y_k = torch.cat(drops)
            denom = y if y.abs() > _EPS else torch.ones_like(y)
            weights[i, live] = ((y - y_k) / denom).to(weights.dtype)
        cams.append((weights.view(ctx.n, k, 1, 1) * a).sum(1))
    return _finish(ctx, names, cams, fusion, relu)


@register(
    "guided_grad_cam",
    title="Guided Grad-CAM",
    family="cam",
    output="pixel",
    style="colored",
    aliases=("guided_gradcam", "ggrad_cam"),
    summary="guided backprop weighted by the (max-scaled) Grad-CAM map",
    reference="Selvaraju et al. 2017, Grad-CAM",
)
def guided_grad_cam(ctx: Context, layer=None) -> MethodOutput:
    """Guided Grad-CAM: ``grad_cam / max(grad_cam) * guided_backprop``."""
    names = _layers(ctx, layer)
    fwd = ctx.record(ctx.x, names)
    ctx.resolve_targets(fwd)
    names = [fwd.resolve(n) for n in names]
    rows = list(range(ctx.n))
    acts = [fwd.activation(n) for n in names]
    for n, a in zip(names, acts):
        if a.dim() != 4:
            raise CnnscopeError(f"layer {n!r} has no spatial map: pick a convolutional layer")
    grads = ctx.grad(fwd, rows, names, "gradient")
    guided = ctx.grad(fwd, rows, INPUT, "guided", last=True)
    cams = []
    for a, g in zip(acts, grads):
        w = g.mean(dim=(2, 3), keepdim=True)
        cam = upsample((w * a).sum(1).clamp_min(0), ctx.size)
        cams.append(cam / cam.flatten(1).amax(1).clamp_min(_EPS).view(-1, 1, 1))
    cam = torch.stack(cams).mean(0)
    return MethodOutput(
        guided * cam.unsqueeze(1), {"cam": cam.cpu()}, names[0] if len(names) == 1 else names
    )


__all__ = ["FUSIONS", "check_positive"]
