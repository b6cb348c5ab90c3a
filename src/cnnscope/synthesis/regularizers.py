"""Image priors with hand-written gradients, as in cnn-vis, plus clipping (and the blur,
:func:`cnnscope.render.filters.gaussian_blur`).

Every regularizer takes an image batch ``x`` (N x C x H x W, any float dtype) and
returns ``(loss, grad)``: the scalar loss summed over the batch and its exact gradient
with respect to ``x``. The synthesis loop *descends* ``grad`` (scaled by the
regularizer's weight) together with the negative objective gradient.

Formulas (``s`` a scale, ``t`` a target image):

* p-norm: ``L = sum |(x - t) / s|^p``, ``dL/dx = (p / s) sign(u) |u|^(p-1)`` with ``u = (x - t) / s``.
* total variation (per channel, over the valid window of a 2x2 or 3x3 stencil):
  ``g2 = max(Gx^2 + Gy^2, 1e-3)``, ``L = sum g2^(beta/2)``,
  ``dL/dGx = beta g2^(beta/2 - 1) Gx`` (same for ``Gy``), scattered back through the stencil.
  ``Gx``, ``Gy`` come from one of three operators: ``naive`` (neighbour differences,
  ``x[i,j] - x[i,j+1]`` and ``x[i,j] - x[i+1,j]``), ``sobel`` and ``sobel_squish``.
* L1 decay ``L = sum |x|``; L2 decay ``L = sum x^2 / 2`` (so the gradient is ``x``, like
  SGD weight decay).
"""

from __future__ import annotations

import torch

from ..errors import CnnscopeError
from ..render.filters import gaussian_blur

__all__ = [
    "TV_OPERATORS",
    "TV_FLOOR",
    "clip_grad_norm",
    "gaussian_blur",
    "l1_decay",
    "l2_decay",
    "pnorm",
    "tv",
    "tv_kernels",
]

#: Floor of the squared gradient magnitude in the TV norm (as in cnn-vis).
TV_FLOOR = 1e-3

TV_OPERATORS = ("naive", "sobel", "sobel_squish")

# Cross-correlation kernels (out[i, j] = sum k[a, b] x[i + a, j + b]) giving Gx and Gy.
_KERNELS = {
    "naive": ([[1.0, -1.0], [0.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]]),
    "sobel": (
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
    ),
    "sobel_squish": (
        [[-1.0, 1.0, 0.0], [-2.0, 2.0, 0.0], [-1.0, 1.0, 0.0]],
        [[-1.0, -2.0, -1.0], [1.0, 2.0, 1.0], [0.0, 0.0, 0.0]],
    ),
}


def pnorm(
    x: torch.Tensor, p: float, scale: float = 1.0, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """p-norm penalty ``sum |(x - target) / scale|^p`` and its gradient.

    Parameters
    ----------
    x : torch.Tensor
        The image batch.
    p : float
        The exponent (cnn-vis ``--alpha``), > 0.
    scale : float
        Divide ``x - target`` by this first (cnn-vis ``--p_scale``).
    target : torch.Tensor, optional
        Pull toward this image instead of zero (broadcastable to ``x``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The scalar loss and ``dL/dx``.

    Examples
    --------
    >>> loss, grad = pnorm(torch.tensor([[-2.0, 1.0]]), p=2)
    >>> loss.item(), grad.tolist()
    (5.0, [[-4.0, 2.0]])
    """
    u = (x - target if target is not None else x) / scale
    a = u.abs()
    loss = a.pow(p).sum()
    grad = (p / scale) * torch.sign(u) * a.pow(p - 1)
    return loss, grad


def l1_decay(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum |x|`` and its (sub)gradient ``sign(x)``.

    Examples
    --------
    >>> l1_decay(torch.tensor([-3.0, 0.5]))[1].tolist()
    [-1.0, 1.0]
    """
    return x.abs().sum(), torch.sign(x)


def l2_decay(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum x^2 / 2`` and its gradient ``x`` (the weight decay of SGD).

    Examples
    --------
    >>> l2_decay(torch.tensor([-3.0, 1.0]))[0].item()
    5.0
    """
    return 0.5 * x.pow(2).sum(), x.clone()


def tv_kernels(
    operator: str, dtype=torch.float32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(kx, ky)`` stencils of a TV gradient operator, as 2-D tensors.

    Examples
    --------
    >>> tv_kernels("naive")[0].tolist()
    [[1.0, -1.0], [0.0, 0.0]]
    """
    if operator not in _KERNELS:
        raise CnnscopeError(
            f"unknown TV operator {operator!r}: choose one of {', '.join(TV_OPERATORS)}"
        )
    kx, ky = _KERNELS[operator]
    return (
        torch.tensor(kx, dtype=dtype, device=device),
        torch.tensor(ky, dtype=dtype, device=device),
    )


def tv(
    x: torch.Tensor, beta: float = 2.0, operator: str = "naive", scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total variation ``sum max(Gx^2 + Gy^2, 1e-3)^(beta/2)`` and its gradient.

    The norm is taken per channel over the positions where the stencil fits (the
    valid window), on ``x / scale``; the gradient is divided by ``scale`` again, as
    cnn-vis does with ``--tv_reg_scale``.

    Parameters
    ----------
    x : torch.Tensor
        The image batch, N x C x H x W.
    beta : float
        The exponent (cnn-vis ``--beta``).
    operator : {"naive", "sobel", "sobel_squish"}
        How ``Gx`` and ``Gy`` are computed (cnn-vis ``--tv_grad_operator``).
    scale : float
        Divide the image by this first (cnn-vis ``--tv_reg_scale``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The scalar loss and ``dL/dx``.

    Examples
    --------
    >>> x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    >>> loss, grad = tv(x, beta=2.0)
    >>> loss.item(), grad[0, 0].tolist()
    (1.0, [[-2.0, 2.0], [0.0, 0.0]])
    """
    if x.dim() != 4:
        raise CnnscopeError("tv expects an N x C x H x W image batch")
    kx, ky = _KERNELS[operator] if operator in _KERNELS else tv_kernels(operator)
    k = len(kx)
    n, c, h, w = x.shape
    if h < k or w < k:
        zero = x.new_zeros(())
        return zero, torch.zeros_like(x)
    u = x / scale
    oh, ow = h - k + 1, w - k + 1
    # The stencils as sums of shifted slices (much faster than 1-channel convolutions).
    taps_x = [(a, b, v) for a, row in enumerate(kx) for b, v in enumerate(row) if v]
    taps_y = [(a, b, v) for a, row in enumerate(ky) for b, v in enumerate(row) if v]
    gx = sum(v * u[..., a : a + oh, b : b + ow] for a, b, v in taps_x)
    gy = sum(v * u[..., a : a + oh, b : b + ow] for a, b, v in taps_y)
    g2 = (gx * gx + gy * gy).clamp_min(TV_FLOOR)
    loss = g2.pow(beta / 2).sum()
    coef = beta * g2.pow(beta / 2 - 1)
    dgx, dgy = coef * gx, coef * gy
    grad = torch.zeros_like(u)
    for a, b, v in taps_x:
        grad[..., a : a + oh, b : b + ow] += v * dgx
    for a, b, v in taps_y:
        grad[..., a : a + oh, b : b + ow] += v * dgy
    return loss, grad / scale


def clip_grad_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each image's gradient so that its L2 norm is at most ``max_norm``.

    Unlike pytorch-cnn-visualizations' regularized class images, whose
    ``clip_grad_norm(model.parameters())`` clipped the model's gradients and so did
    nothing, this clips the gradient of the image itself.

    Examples
    --------
    >>> g = torch.tensor([[[[3.0, 4.0]]]])
    >>> clip_grad_norm(g, 1.0).flatten().tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    if max_norm <= 0:
        return grad
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (max_norm / norms).clamp(max=1.0)
    return grad * factor.view(-1, *([1] * (grad.dim() - 1)))
