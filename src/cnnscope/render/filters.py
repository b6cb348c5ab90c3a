"""Image filters on tensors, shared by attribution (blurred baselines, masks) and synthesis.

Examples
--------
>>> import torch
>>> x = torch.full((1, 3, 6, 6), 2.0)  # a constant image stays constant
>>> torch.allclose(gaussian_blur(x, 1.5), x)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["TRUNCATE", "gaussian_blur", "gaussian_kernel"]

#: The kernel reaches this many standard deviations each side, as scipy.ndimage's default
#: (cnn-vis blurred with it): it leaves out 6e-5 of the Gaussian's mass, and is renormalised.
TRUNCATE = 4.0


def gaussian_kernel(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian of std ``sigma`` pixels, radius ``round(4 sigma)`` (>= 1).

    Examples
    --------
    >>> k = gaussian_kernel(1.0)
    >>> k.numel(), round(k.sum().item(), 6), bool(k.argmax() == 4)
    (9, 1.0, True)
    """
    radius = max(1, int(TRUNCATE * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of ``x`` (N x C x H x W) with a Gaussian of std ``sigma`` pixels.

    Separable, truncated at 4 sigma (:data:`TRUNCATE`), with mirrored borders (``c b | a b
    c``), so a constant image stays constant: ``scipy.ndimage.gaussian_filter(x, sigma,
    mode="mirror")`` over H and W; an image no larger than the kernel's radius repeats its
    edge pixels instead (``mode="nearest"``). ``sigma <= 0`` returns a copy. The input is
    not changed.

    Parameters
    ----------
    x : torch.Tensor
        N x C x H x W images (any float dtype, any device).
    sigma : float
        Standard deviation in pixels.

    Returns
    -------
    torch.Tensor
        The blurred images, same shape, dtype and device.

    Examples
    --------
    An impulse further than 4 sigma from the borders keeps its mass:

    >>> x = torch.zeros(1, 1, 17, 17); x[0, 0, 8, 8] = 1.0
    >>> y = gaussian_blur(x, 1.0)
    >>> round(y.sum().item(), 4), y[0, 0, 8, 8].item() < 1
    (1.0, True)
    """
    if sigma <= 0:
        return x.clone()
    k = gaussian_kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    mode = "reflect" if (h > r and w > r) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)
