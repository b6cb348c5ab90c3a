"""Image parameterizations: raw pixels, or a scaled Fourier spectrum with decorrelated colour.

A parameterization holds a leaf tensor (``.tensor``) that the optimizer updates and
renders it as an image batch in *working units*: pixel values on the 0..255 scale minus
the model's mean colour (so 0 is the mean colour, as in cnn-vis). The model input is
that divided by the model's std (see :class:`ImageSpace`).

The Fourier parameterization (Lucid style) stores the image's real 2-D spectrum, each
frequency scaled by ``1 / max(f, 1 / max(H, W)) ** decay`` so that the optimizer sees
a whitened image; the three channels are mixed by the square root of the colour
covariance (decorrelated colour) and squashed into 0..255 by a sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CnnscopeError

__all__ = [
    "COLOUR_SQRT_COV",
    "PARAMS",
    "FourierParam",
    "ImageSpace",
    "PixelParam",
    "colour_sqrt_covariance",
    "make_param",
]

PARAMS = ("pixel", "fft")

#: Square root of the RGB covariance (pixels in [0, 1]) of the built-in gallery photos:
#: columns are the principal colour axes scaled by their standard deviations. Computed
#: by :func:`colour_sqrt_covariance` on ``cnnscope.images.gallery_images()``.
COLOUR_SQRT_COV = np.array(
    [
        [0.2815, 0.1298, 0.0109],
        [0.2594, -0.0365, -0.0359],
        [0.2484, -0.1089, 0.0251],
    ]
)


def colour_sqrt_covariance(images: Sequence) -> np.ndarray:
    """A matrix ``M`` with ``M M^T`` = the RGB covariance of ``images`` (values in [0, 1]).

    ``M = V sqrt(L)`` from the eigen-decomposition of the covariance, axes ordered by
    decreasing variance, each axis signed so that its red component is positive.

    Examples
    --------
    >>> from PIL import Image
    >>> m = colour_sqrt_covariance([Image.new("RGB", (4, 4), (10, 200, 30))])
    >>> round(float(np.abs(m).max()), 12)  # one colour: no covariance (up to rounding)
    0.0
    """
    px = np.concatenate([np.asarray(im, dtype=np.float64).reshape(-1, 3) / 255.0 for im in images])
    cov = np.cov(px.T)
    w, v = np.linalg.eigh(cov)
    w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
    v = v * np.where(v[0:1, :] < 0, -1.0, 1.0)
    return v @ np.diag(np.sqrt(w))


@dataclass(frozen=True)
class ImageSpace:
    """How working-unit images map to the model's input and to uint8 pictures.

    ``pixel = x + mean``; ``model input = x / std`` (per channel, on the 0..255 scale).

    Examples
    --------
    >>> space = ImageSpace((127.0,) * 3, (128.0,) * 3)
    >>> space.to_input(torch.full((1, 3, 1, 1), 64.0)).flatten().tolist()
    [0.5, 0.5, 0.5]
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_model(cls, model) -> ImageSpace:
        """The space of a :class:`~cnnscope.models.LoadedModel`'s preprocessing."""
        cfg = model.preprocess_config
        k = 255.0 / cfg.scale
        return cls(tuple(m * k for m in cfg.mean), tuple(s * k for s in cfg.std))

    def _vec(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Working units -> the model's input."""
        return x / self._vec(self.std, x)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """0..255 pixels (N x 3 x H x W) -> working units."""
        return pixels - self._vec(self.mean, pixels)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Working units -> 0..255 pixel values (not clipped)."""
        return x + self._vec(self.mean, x)

    def to_uint8(self, x: torch.Tensor, rescale: bool = False, contrast: float = 1.0) -> np.ndarray:
        """Working units (N x 3 x H x W or 3 x H x W) -> N x H x W x 3 uint8 pictures.

        ``contrast`` multiplies the working values first (cnn-vis used 1.2). With
        ``rescale`` each picture is min-max stretched to 0..255 instead of clipped.
        """
        x = x.detach().float().cpu()
        if x.dim() == 3:
            x = x[None]
        p = self.to_pixels(x * contrast)
        if rescale:
            lo = p.flatten(1).min(1).values.view(-1, 1, 1, 1)
            hi = p.flatten(1).max(1).values.view(-1, 1, 1, 1)
            p = (p - lo) / (hi - lo).clamp_min(1e-12) * 255.0
        return p.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def pixel_bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The working-unit values of pixel 0 and pixel 255 per channel."""
        mean = self._vec(self.mean, like)
        return -mean, 255.0 - mean


class PixelParam:
    """The image itself (working units) is the parameter.

    Examples
    --------
    >>> p = PixelParam(torch.zeros(1, 3, 4, 4))
    >>> p().shape, p.tensor.requires_grad
    (torch.Size([1, 3, 4, 4]), True)
    """

    kind = "pixel"

    def __init__(self, image: torch.Tensor):
        self.tensor = image.detach().clone().requires_grad_(True)

    def __call__(self) -> torch.Tensor:
        return self.tensor

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[-2:])  # type: ignore[return-value]

    def image(self) -> torch.Tensor:
        """The current image, detached."""
        return self.tensor.detach()

    @torch.no_grad()
    def set_image(self, x: torch.Tensor) -> None:
        """Replace the image (same batch size; any spatial size)."""
        self.tensor = x.detach().clone().to(self.tensor).requires_grad_(True)


class FourierParam:
    """A scaled real spectrum per channel, decorrelated colour and a sigmoid.

    Parameters
    ----------
    shape : (N, 3, H, W)
        The image batch rendered.
    space : ImageSpace
        Maps the sigmoid's 0..255 output to working units.
    decay : float
        Spectrum scaling exponent (1 = 1/f).
    decorrelate : bool
        Mix channels by :data:`COLOUR_SQRT_COV` (normalised) instead of using RGB.
    std : float
        Standard deviation of the random initial spectrum.
    generator : torch.Generator, optional
        Random source of the initial spectrum.

    Examples
    --------
    >>> space = ImageSpace((127.0,) * 3, (128.0,) * 3)
    >>> p = FourierParam((2, 3, 16, 20), space, generator=torch.Generator().manual_seed(0))
    >>> x = p()
    >>> x.shape, bool((space.to_pixels(x) > 0).all() and (space.to_pixels(x) < 255).all())
    (torch.Size([2, 3, 16, 20]), True)
    """

    kind = "fft"

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        space: ImageSpace,
        *,
        decay: float = 1.0,
        decorrelate: bool = True,
        std: float = 0.01,
        generator: torch.Generator | None = None,
        dtype=torch.float32,
        device=None,
    ):
        n, c, h, w = shape
        if c != 3:
            raise CnnscopeError("the Fourier parameterization renders 3-channel images")
        self.space = space
        self.shape = (n, c, h, w)
        self.decay = float(decay)
        self.decorrelate = bool(decorrelate)
        self.dtype, self.device = dtype, device
        self._build_scale()
        spec = torch.randn((n, c, h, w // 2 + 1, 2), generator=generator, dtype=torch.float32)
        self.tensor = (spec * std).to(dtype=dtype, device=device).requires_grad_(True)

    def _build_scale(self) -> None:
        _, _, h, w = self.shape
        fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
        freq = torch.sqrt(fy * fy + fx * fx)
        scale = 1.0 / torch.clamp(freq, min=1.0 / max(h, w)) ** self.decay
        self._scale = scale.to(dtype=self.dtype, device=self.device)[None, None, :, :, None]
        m = torch.tensor(COLOUR_SQRT_COV, dtype=torch.float64)
        m = m / m.norm(dim=0).max()
        if not self.decorrelate:
            m = torch.eye(3, dtype=torch.float64)
        self._mix = m.to(dtype=self.dtype, device=self.device)
        self._unmix = torch.linalg.inv(m).to(dtype=self.dtype, device=self.device)

    @property
    def size(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    def _logits(self) -> torch.Tensor:
        _, _, h, w = self.shape
        spec = torch.view_as_complex((self.tensor * self._scale).contiguous())
        planes = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0
        return torch.einsum("ij,njhw->nihw", self._mix, planes)

    def __call__(self) -> torch.Tensor:
        rgb = torch.sigmoid(self._logits()) * 255.0
        return self.space.from_pixels(rgb)

    def image(self) -> torch.Tensor:
        """The current image (working units), detached."""
        with torch.no_grad():
            return self().detach()

    @torch.no_grad()
    def set_image(self, x: torch.Tensor) -> None:
        """Fit the spectrum so that the rendered image is ``x`` (resizing if needed)."""
        n, c, h, w = x.shape
        self.shape = (n, c, h, w)
        self._build_scale()
        rgb = (self.space.to_pixels(x.to(self.dtype)) / 255.0).clamp(1e-4, 1 - 1e-4)
        logits = torch.log(rgb) - torch.log1p(-rgb)
        planes = torch.einsum("ij,njhw->nihw", self._unmix, logits) * 4.0
        spec = torch.view_as_real(torch.fft.rfft2(planes, norm="ortho")) / self._scale
        self.tensor = spec.contiguous().requires_grad_(True)


def make_param(
    kind: str,
    init: torch.Tensor,
    space: ImageSpace,
    *,
    decorrelate: bool = True,
    decay: float = 1.0,
    generator: torch.Generator | None = None,
    random_init: bool = False,
):
    """Build a parameterization rendering ``init`` (N x 3 x H x W, working units).

    With ``random_init`` the Fourier parameterization starts from its own small random
    spectrum (Lucid's initialisation) instead of fitting ``init``.
    """
    if kind == "pixel":
        return PixelParam(init)
    if kind == "fft":
        n, c, h, w = init.shape
        p = FourierParam(
            (int(n), int(c), int(h), int(w)),
            space,
            decay=decay,
            decorrelate=decorrelate,
            generator=generator,
            dtype=init.dtype,
            device=init.device,
        )
        if not random_init:
            p.set_image(init)
        return p
    raise CnnscopeError(f"unknown parameterization {kind!r}: choose pixel or fft")
