"""3D volumes of stacked feature maps: interactive plotly views and their pages.

A layer's ``C x H x W`` activations are a volume: the maps stacked along ``z`` in channel
(or any other) order. :func:`volume_figure` shows it in 3D with a slice slider,
:func:`volume_html` makes that a self-contained offline page (plotly's JavaScript is
inlined from the Python package; nothing is fetched from a CDN). The file exports
(``.vox`` + ``.hd``, ``.npy``, NRRD, legacy VTK) are in :mod:`.volume_files`, and
importable from here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..errors import CnnscopeError
from .ordering import Ordering, apply_order, as_ordering
from .volume_files import (
    as_volume,
    read_nrrd,
    read_vox,
    to_uint8_volume,
    write_npy,
    write_nrrd,
    write_vox,
    write_vtk,
)

__all__ = [
    "figure_html",
    "plotly_js",
    "read_nrrd",
    "read_vox",
    "to_uint8_volume",
    "volume_figure",
    "volume_html",
    "volume_series_figure",
    "write_npy",
    "write_nrrd",
    "write_vox",
    "write_vtk",
]

log = logging.getLogger(__name__)


def plotly_js() -> str:
    """plotly.js as shipped inside the ``plotly`` Python package (for serving locally).

    Examples
    --------
    >>> "Plotly" in plotly_js()[:5000]
    True
    """
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _strides(shape: tuple[int, int, int], max_voxels: int) -> tuple[int, int]:
    c, h, w = shape
    step = 1
    while c * math.ceil(h / step) * math.ceil(w / step) > max_voxels and step < max(h, w):
        step += 1
    return step, step


def volume_figure(
    acts,
    order: str | Ordering | Sequence[int] | None = None,
    *,
    title: str = "",
    colorscale: str = "Viridis",
    max_voxels: int = 200_000,
    opacity: float = 0.12,
    surface_count: int = 14,
    order_options: dict | None = None,
    start: int | None = None,
):
    """An interactive 3D view of ``C x H x W`` maps stacked along ``z``, with a slice slider.

    Left: the volume rendering (maps at display positions ``z = 0 .. C-1``; large maps
    are subsampled to ``max_voxels``) with the selected slice drawn as a plane. Right:
    the selected map at full resolution. The slider (labelled with channel numbers)
    moves through the slices.

    Parameters
    ----------
    acts : array or tensor
        ``C x H x W`` activations.
    order : str, Ordering or list of int, optional
        Channel ordering of the stack (``kmeans``, ``pca-slice``, ``pca`` or a permutation).
    colorscale : str
        plotly colorscale name.
    max_voxels : int
        Budget of the 3D rendering (the slice view is always full resolution).
    start : int, optional
        Slider position shown first (default: the middle of the stack).

    Returns
    -------
    plotly.graph_objects.Figure

    Examples
    --------
    >>> fig = volume_figure(np.random.rand(4, 5, 6), order=[3, 2, 1, 0])
    >>> len(fig.frames), fig.layout.sliders[0].steps[0].label
    (4, '3')
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    a = as_volume(acts).astype(np.float32)
    ordering = as_ordering(order, a, len(a), **(order_options or {}))
    a = apply_order(a, ordering)
    perm = ordering.permutation if ordering is not None else np.arange(len(a))
    c, h, w = a.shape
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    sy, sx = _strides((c, h, w), max_voxels)
    sub = a[:, ::sy, ::sx]
    ys, xs = np.arange(0, h, sy), np.arange(0, w, sx)
    zz, yy, xx = np.meshgrid(np.arange(c), ys, xs, indexing="ij")

    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"type": "scene"}, {"type": "xy"}]],
        column_widths=[0.58, 0.42],
        horizontal_spacing=0.04,
    )
    fig.add_trace(
        go.Volume(
            x=xx.ravel().astype(np.float32),
            y=yy.ravel().astype(np.float32),
            z=zz.ravel().astype(np.float32),
            value=sub.ravel(),
            isomin=lo + 0.05 * (hi - lo),
            isomax=hi,
            cmin=lo,
            cmax=hi,
            opacity=opacity,
            surface_count=surface_count,
            colorscale=colorscale,
            showscale=False,
            name="volume",
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )

    def plane(k: int):
        return go.Surface(
            x=xs.astype(np.float32),
            y=ys.astype(np.float32),
            z=np.full(sub.shape[1:], k, np.float32),
            surfacecolor=sub[k],
            cmin=lo,
            cmax=hi,
            colorscale=colorscale,
            showscale=False,
            opacity=0.95,
            name=f"channel {perm[k]}",
            hovertemplate=f"channel {perm[k]}<br>x %{{x}} y %{{y}}<extra></extra>",
        )

    def heat(k: int):
        return go.Heatmap(
            z=a[k],
            zmin=lo,
            zmax=hi,
            colorscale=colorscale,
            colorbar={"title": {"text": "activation"}, "len": 0.8},
            name=f"channel {perm[k]}",
            hovertemplate=f"channel {perm[k]}<br>y %{{y}} x %{{x}}: %{{z:.3g}}<extra></extra>",
        )

    start = c // 2 if start is None else int(start)
    if not 0 <= start < c:
        raise CnnscopeError(f"start slice {start} is outside 0-{c - 1}")
    fig.add_trace(plane(start), row=1, col=1)
    fig.add_trace(heat(start), row=1, col=2)
    fig.frames = [go.Frame(data=[plane(k), heat(k)], traces=[1, 2], name=str(k)) for k in range(c)]
    steps = [
        {
            "method": "animate",
            "label": str(int(perm[k])),
            "value": str(k),
            "args": [
                [str(k)],
                {
                    "mode": "immediate",
                    "frame": {"duration": 0, "redraw": True},
                    "transition": {"duration": 0},
                },
            ],
        }
        for k in range(c)
    ]
    side = max(h, w)
    fig.update_layout(
        title={"text": title or f"{c} maps of {h}x{w}"},
        scene={
            "xaxis": {"title": {"text": "x"}},
            "yaxis": {"title": {"text": "y"}, "autorange": "reversed"},
            "zaxis": {"title": {"text": "position" if ordering is not None else "channel"}},
            "aspectmode": "manual",
            "aspectratio": {"x": w / side, "y": h / side, "z": 1.4},
            "camera": {"eye": {"x": 1.75, "y": -1.75, "z": 1.3}},
        },
        sliders=[
            {
                "active": start,
                "currentvalue": {"prefix": "channel ", "font": {"color": "#222", "size": 14}},
                "pad": {"t": 40},
                "steps": steps,
                # past a few dozen steps the tick labels overlap: only the current one shows
                "font": {"color": "#444" if c <= 48 else "rgba(0,0,0,0)"},
                "ticklen": 7 if c <= 48 else 0,
                "minorticklen": 4 if c <= 48 else 0,
            }
        ],
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=640,
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", row=1, col=2)
    return fig


def volume_series_figure(
    volumes: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    title: str = "",
    captions: Sequence[str] | None = None,
    colorscale: str = "RdBu_r",
    symmetric: bool = True,
    axis_titles: tuple[str, str, str] = ("kx", "ky", "filter"),
    opacity: float = 0.6,
    surface_count: int = 15,
    duration_ms: int = 900,
    max_markers: int = 20_000,
    marker_size: float = 11,
):
    """A time series of ``D x H x W`` volumes on one colour scale, with play button and slider.

    Used for weight gradients (one volume ``filters x ky x kx`` per image). Volumes of
    at most ``max_markers`` voxels are drawn voxel by voxel (a square marker each, so
    that small kernels stay readable); larger ones are volume-rendered. With
    ``symmetric`` the scale is ``-max|v| .. max|v|`` over the whole series (and the
    volume rendering makes values near zero transparent).
    ``captions`` (one per volume) replace the title while that volume is shown.

    Examples
    --------
    >>> fig = volume_series_figure([np.zeros((3, 2, 2)), np.ones((3, 2, 2))], ["a", "b"])
    >>> [s.label for s in fig.layout.sliders[0].steps]
    ['a', 'b']
    """
    import plotly.graph_objects as go

    vols = [as_volume(v).astype(np.float32) for v in volumes]
    if not vols or len(vols) != len(names):
        raise CnnscopeError("give one name per volume (and at least one volume)")
    if captions is not None and len(captions) != len(vols):
        raise CnnscopeError("give one caption per volume")
    if any(v.shape != vols[0].shape for v in vols):
        raise CnnscopeError("all volumes of a series must have the same shape")
    d, h, w = vols[0].shape
    allv = np.stack(vols)
    if symmetric:
        hi = float(np.abs(allv).max()) or 1.0
        lo = -hi
        fade = [[0.0, 1.0], [0.35, 0.25], [0.5, 0.0], [0.65, 0.25], [1.0, 1.0]]
    else:
        lo, hi = float(allv.min()), float(allv.max())
        hi = hi if hi > lo else lo + 1.0
        fade = [[0.0, 0.0], [1.0, 1.0]]
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    coords = {
        "x": xx.ravel().astype(np.float32),
        "y": yy.ravel().astype(np.float32),
        "z": zz.ravel().astype(np.float32),
    }

    voxels = d * h * w <= max_markers

    def trace(v: np.ndarray):
        if voxels:  # small volumes: one square marker per voxel, every value visible
            return go.Scatter3d(
                **coords,
                mode="markers",
                marker={
                    "symbol": "square",
                    "size": marker_size,
                    "color": v.ravel(),
                    "cmin": lo,
                    "cmax": hi,
                    "colorscale": colorscale,
                    "opacity": 0.95,
                    "colorbar": {"title": {"text": "gradient"}},
                    "line": {"width": 0},
                },
                customdata=v.ravel(),
                hovertemplate=f"{axis_titles[2]} %{{z}}, {axis_titles[1]} %{{y}}, "
                f"{axis_titles[0]} %{{x}}: %{{customdata:.3g}}<extra></extra>",
            )
        return go.Volume(
            **coords,
            value=v.ravel(),
            cmin=lo,
            cmax=hi,
            isomin=lo,
            isomax=hi,
            opacity=opacity,
            opacityscale=fade,
            surface_count=surface_count,
            colorscale=colorscale,
            colorbar={"title": {"text": "gradient"}},
        )

    heads = (
        list(captions)
        if captions is not None
        else [f"{title} - {n}" if title else str(n) for n in names]
    )
    fig = go.Figure(data=[trace(vols[0])])
    fig.frames = [
        go.Frame(data=[trace(v)], name=str(k), layout={"title": {"text": heads[k]}})
        for k, v in enumerate(vols)
    ]
    anim = {"frame": {"duration": duration_ms, "redraw": True}, "transition": {"duration": 0}}
    fig.update_layout(
        title={"text": heads[0], "font": {"size": 14}},
        scene={
            "xaxis": {"title": {"text": axis_titles[0]}},
            "yaxis": {"title": {"text": axis_titles[1]}, "autorange": "reversed"},
            "zaxis": {"title": {"text": axis_titles[2]}},
            "aspectmode": "manual",
            "aspectratio": {"x": 1, "y": h / w, "z": 1.6},
            "camera": {"eye": {"x": 1.9, "y": -1.9, "z": 1.2}},
        },
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "showactive": False,
                "x": 0.0,
                "xanchor": "left",
                "y": -0.02,
                "yanchor": "top",
                "buttons": [
                    {
                        "label": "play",
                        "method": "animate",
                        "args": [None, {**anim, "fromcurrent": True}],
                    },
                    {
                        "label": "pause",
                        "method": "animate",
                        "args": [
                            [None],
                            {"mode": "immediate", "frame": {"duration": 0, "redraw": False}},
                        ],
                    },
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.16,
                "len": 0.84,
                "y": 0.0,
                "currentvalue": {"prefix": "image: "},
                "pad": {"t": 10},
                "steps": [
                    {
                        "method": "animate",
                        "label": str(n),
                        "value": str(k),
                        "args": [[str(k)], {"mode": "immediate", **anim}],
                    }
                    for k, n in enumerate(names)
                ],
            }
        ],
        height=680,
        margin={"l": 10, "r": 10, "t": 60, "b": 90},
    )
    return fig


def figure_html(fig, title: str = "cnnscope") -> str:
    """A complete, self-contained HTML page for a plotly figure (plotly.js inlined).

    The page fetches nothing (no CDN) and does not start the figure's animation.

    Examples
    --------
    >>> import plotly.graph_objects as go
    >>> "<title>x</title>" in figure_html(go.Figure(), "x")
    True
    """
    html = fig.to_html(
        include_plotlyjs=True,
        full_html=True,
        auto_play=False,
        config={"displaylogo": False, "responsive": True},
    )
    return html.replace("<head>", f"<head><title>{_escape(title)}</title>", 1)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def volume_html(
    acts, order: str | Ordering | Sequence[int] | None = None, *, title: str = "", **options
) -> str:
    """:func:`volume_figure` as a self-contained offline HTML page (no CDN, no network).

    Examples
    --------
    >>> html = volume_html(np.random.rand(3, 4, 4))
    >>> "<html>" in html and "<script src=" not in html
    True
    """
    return figure_html(volume_figure(acts, order, title=title, **options), title or "volume")
