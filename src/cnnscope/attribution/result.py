"""The result of an attribution: raw maps, what they explain, and their pictures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CnnscopeError
from ..render import grid, png_bytes
from .figures import render_map
from .inputs import Pictures
from .registry import Method
from .targets import Target

__all__ = ["Attribution"]


class Attribution:
    """The result of :func:`~cnnscope.attribution.attribute`: raw maps plus what they explain.

    For one image ``tensor``/``array`` are ``3 x H x W`` (pixel methods) or ``H x W``
    (maps such as CAMs), at the model's input resolution, signed and unnormalised. For
    a batch they get a leading ``N``; ``attr[i]`` is the attribution of image ``i``.

    Attributes
    ----------
    method : str
        Registry name of the method.
    targets : list of Target
        What each image's map explains.
    scores : torch.Tensor
        The target score of each image (class logit or unit value).
    layer : str or list of str or None
        The layer(s) a CAM or layer method used.
    meta : dict
        Method extras (IG completeness, LRP conservation, low-resolution CAMs, options).
    pictures : sequence of numpy.ndarray
        What the model saw, H x W x 3 uint8 (for overlays; made on first access).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> from cnnscope.attribution import attribute
    >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "grad_cam")
    >>> attr.array.shape, attr.target.label
    ((224, 224), 'Egyptian cat')
    """

    def __init__(
        self,
        maps: torch.Tensor,
        method: Method,
        targets: list[Target],
        scores: torch.Tensor,
        *,
        single: bool,
        pictures: Sequence[np.ndarray | None] | None = None,
        layer=None,
        meta: dict | None = None,
        options: dict | None = None,
    ):
        self._maps = maps.detach().float().cpu()  # N x C x H x W
        self._method = method
        self.method = method.name
        self.targets = list(targets)
        self.scores = scores
        self.single = single
        self.pictures = pictures if pictures is not None else [None] * len(self._maps)
        self.layer = layer
        self.meta = dict(meta or {})
        self.options = dict(options or {})

    # ---- data ----------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``pixel`` (3-channel maps) or ``map`` (one channel)."""
        return self._method.output

    @property
    def signed(self) -> bool:
        """Whether the sign of the values carries meaning."""
        return self._method.signed

    @property
    def tensor(self) -> torch.Tensor:
        """The raw maps (CPU float32): ``[N x] 3 x H x W`` or ``[N x] H x W``."""
        maps = self._maps[:, 0] if self.kind == "map" else self._maps
        return maps[0] if self.single else maps

    @property
    def array(self) -> np.ndarray:
        """:attr:`tensor` as a numpy array."""
        return self.tensor.numpy()

    @property
    def target(self) -> Target:
        """The target of a single-image attribution (the first one of a batch)."""
        return self.targets[0]

    def saliency(self) -> np.ndarray:
        """``[N x] H x W`` map used for rankings: signed channel sum, or ``sum |a|``."""
        m = self._maps
        s = (m.sum(1) if self.signed or self.kind == "map" else m.abs().sum(1)).numpy()
        return s[0] if self.single else s

    def __len__(self) -> int:
        return len(self._maps)

    def __getitem__(self, i: int) -> Attribution:
        if not isinstance(i, (int, np.integer)):
            raise TypeError("index an Attribution with an integer")
        n = len(self._maps)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range (0-{n - 1})")
        i = int(i) % n

        def pick(v):
            if isinstance(v, (list, torch.Tensor)) and len(v) == n:
                return v[i : i + 1] if isinstance(v, torch.Tensor) else v[i]
            if isinstance(v, dict):
                return {k: pick(u) if isinstance(u, torch.Tensor) else u for k, u in v.items()}
            return v

        meta = {k: pick(v) for k, v in self.meta.items()}
        return Attribution(
            self._maps[i : i + 1],
            self._method,
            [self.targets[i]],
            self.scores[i : i + 1],
            single=True,
            pictures=Pictures([lambda: self.pictures[i]]),
            layer=self.layer,
            meta=meta,
            options=self.options,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.tensor.shape)
        targets = ", ".join(str(t) for t in self.targets[:4]) + (
            " ..." if len(self.targets) > 4 else ""
        )
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"Attribution({self.method}, {shape}, target={targets}{layer})"

    # ---- pictures ------------------------------------------------------------------

    def render(
        self,
        style: str | None = None,
        cmap: str | None = None,
        alpha: float = 0.5,
        percentile: float | None = None,
    ) -> np.ndarray:
        """Draw the map(s) as an H x W x 3 uint8 picture (a row of pictures for a batch).

        Parameters
        ----------
        style : str, optional
            ``colored``, ``grayscale``, ``positive``, ``negative``, ``mask``,
            ``heatmap``, ``overlay`` or ``seismic`` (default: the method's own).
        cmap : str, optional
            Matplotlib colormap for ``heatmap``/``overlay`` (default ``jet``) and
            ``seismic`` (default ``seismic``).
        alpha : float
            Opacity of the heatmap in ``overlay``.
        percentile : float, optional
            Clipping percentile (default 99; 99.5 for ``seismic``); 100 gives the plain
            min-max pictures of pytorch-cnn-visualizations.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> from cnnscope.attribution import attribute
        >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "gradient")
        >>> attr.render("grayscale").shape
        (224, 224, 3)
        """
        style = style or self._method.style
        pics = [
            render_map(
                self._maps[i].numpy(),
                style,
                picture=self.pictures[i],
                cmap=cmap,
                alpha=alpha,
                percentile=percentile,
            )
            for i in range(len(self._maps))
        ]
        if len(pics) == 1:
            return pics[0]
        return grid(pics, cols=len(pics))

    def save(self, path, style: str | None = None, **render_options) -> Path:
        """Write a PNG (any image suffix) of :meth:`render`, or the raw map to ``.npy``.

        Examples
        --------
        >>> import tempfile, os
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> from cnnscope.attribution import attribute
        >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "grad_cam")
        >>> attr.save(os.path.join(tempfile.mkdtemp(), "cam.npy")).suffix
        '.npy'
        """
        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".npy":
            np.save(path, self.array.astype(np.float32))
            return path
        picture = self.render(style, **render_options)
        try:
            Image.fromarray(picture).save(path)
        except (ValueError, KeyError) as exc:
            raise CnnscopeError(f"cannot write {path}: {exc}") from None
        return path

    def _repr_png_(self) -> bytes:
        return png_bytes(self.render())
