"""Orderings of a layer's channels: k-means or PCA on one row slice, PCA over whole maps.

Every ordering returns an :class:`Ordering`: the permutation (``permutation[k]`` is the
channel shown at position ``k``) and, for clusterings, the positions where a new cluster
starts. Apply it to a mosaic (:func:`cnnscope.views.mosaic`), a volume
(:func:`cnnscope.views.volume_figure`) or any ``C x ...`` array (:func:`apply_order`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import CnnscopeError
from ..vocabulary import Term, names

__all__ = [
    "DEFAULT_CLUSTERS",
    "NO_ORDER",
    "ORDER_METHODS",
    "ORDER_TERMS",
    "Ordering",
    "apply_order",
    "as_ordering",
    "order_channels",
    "slice_image",
]

log = logging.getLogger(__name__)

#: The orderings of :func:`order_channels`, with their titles and help.
ORDER_TERMS: tuple[Term, ...] = (
    Term("kmeans", "K-means (row)", "channels clustered by their values along one row"),
    Term("pca-slice", "PCA (row)", "channels sorted by their first principal component on one row"),
    Term("pca", "PCA (maps)", "channels sorted by the principal image of their whole maps"),
)
#: Names accepted by :func:`order_channels` (``pca`` is PCA over whole maps).
ORDER_METHODS: tuple[str, ...] = names(ORDER_TERMS)
#: No ordering (``order=None``): the channels as the layer numbers them.
NO_ORDER = Term("none", "Channel order", "the channels as the layer numbers them")
#: How many clusters :func:`kmeans_slice` makes unless told.
DEFAULT_CLUSTERS = 6


@dataclass
class Ordering:
    """A permutation of channels, with cluster boundaries when there are clusters.

    Attributes
    ----------
    permutation : numpy.ndarray
        ``permutation[k]`` is the original channel shown at position ``k``.
    separators : list of int
        Positions ``k`` (in the permuted order) where a new cluster starts; a separator
        goes between position ``k - 1`` and ``k``. Empty for orderings without clusters.
    method : str
        ``kmeans``, ``pca-slice``, ``pca`` or ``given``.
    scores : numpy.ndarray or None
        Per original channel: the PCA score that was sorted (PCA methods only).
    labels : numpy.ndarray or None
        Per original channel: its cluster, numbered in display order (k-means only).
    info : dict
        Method parameters (``row``, ``k``, explained variance ...).

    Examples
    --------
    >>> o = Ordering(np.array([2, 0, 1]), [1])
    >>> o.groups()
    [[2], [0, 1]]
    >>> o.position(0)
    1
    """

    permutation: np.ndarray
    separators: list[int] = field(default_factory=list)
    method: str = "given"
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.permutation = np.asarray(self.permutation, dtype=np.int64)
        n = len(self.permutation)
        if sorted(self.permutation.tolist()) != list(range(n)):
            raise CnnscopeError(f"an ordering must be a permutation of 0..{n - 1}")
        self.separators = sorted(int(s) for s in self.separators)
        if any(not 0 < s < n for s in self.separators):
            raise CnnscopeError(f"separators must lie strictly between 0 and {n}")

    def __len__(self) -> int:
        return len(self.permutation)

    def groups(self) -> list[list[int]]:
        """The channels of each cluster, in display order (one group without clusters)."""
        bounds = [0, *self.separators, len(self.permutation)]
        return [self.permutation[a:b].tolist() for a, b in zip(bounds, bounds[1:])]

    def position(self, channel: int) -> int:
        """Where ``channel`` is shown in the permuted order."""
        return int(np.flatnonzero(self.permutation == channel)[0])

    def group_of_position(self) -> np.ndarray:
        """For each display position, the number of its cluster (0, 1, ...)."""
        marks = np.zeros(len(self.permutation), dtype=np.int64)
        marks[self.separators] = 1
        return np.cumsum(marks)

    def to_dict(self) -> dict:
        """A JSON-friendly description."""
        out = {
            "method": self.method,
            "permutation": self.permutation.tolist(),
            "separators": list(self.separators),
        }
        if self.scores is not None:
            out["scores"] = [float(s) for s in self.scores]
        if self.labels is not None:
            out["labels"] = self.labels.tolist()
        for key, value in self.info.items():
            if key not in out and not isinstance(value, np.ndarray):  # no principal image
                out[key] = value
        return out


def _as_maps(acts) -> np.ndarray:
    if hasattr(acts, "detach"):
        acts = acts.detach().cpu().double().numpy()
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise CnnscopeError(f"expected channel maps C x H x W, got shape {tuple(a.shape)}")
    if a.shape[0] < 1:
        raise CnnscopeError("the layer has no channels")
    if not np.all(np.isfinite(a)):
        raise CnnscopeError("the activations contain NaN or infinite values")
    return a


def _row_slice(a: np.ndarray, row: int | None) -> tuple[np.ndarray, int]:
    h = a.shape[1]
    row = h // 2 if row is None else int(row)
    if not 0 <= row < h:
        raise CnnscopeError(f"row {row} is outside the maps (0-{h - 1})")
    return a[:, row, :], row


def _global01(s: np.ndarray) -> np.ndarray:
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def _sign(scores: np.ndarray, reference: np.ndarray) -> float:
    """The sign that fixes a principal axis: scores then grow with ``reference``."""
    r = reference - reference.mean()
    c = float(np.dot(scores - scores.mean(), r))
    if abs(c) <= 1e-12 * (np.linalg.norm(scores) * np.linalg.norm(r) + 1e-300):
        c = float(scores.sum())  # no correlation: make the sum of scores non-negative
    return -1.0 if c < 0 else 1.0


def _pc1(x: np.ndarray) -> tuple[np.ndarray, float]:
    """First principal axis of the rows of a centred matrix, and its share of variance."""
    if not np.any(x):
        return np.zeros(x.shape[1]), 0.0
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    total = float((s**2).sum())
    return vt[0], float(s[0] ** 2 / total) if total > 0 else 0.0


def kmeans_slice(
    acts,
    k: int = DEFAULT_CLUSTERS,
    row: int | None = None,
    seed: int = 0,
    restarts: int = 20,
) -> Ordering:
    """Cluster the channels by their values along one row (k-means), grouped by cluster.

    The rows ``acts[c, row, :]`` of all channels form a ``C x W`` matrix (normalised
    jointly to [0, 1]); k-means with ``restarts`` random starts (the best one kept)
    gives each channel a cluster. Clusters are shown from the darkest to the brightest
    centroid (mean value), channels in their original order inside a cluster.

    Parameters
    ----------
    acts : array or tensor
        ``C x H x W`` activations (``1 x C x H x W`` is accepted).
    k : int
        Number of clusters (at most the number of distinct rows).
    row : int, optional
        Row ``y`` of the slice; the middle row by default.
    seed : int
        Random seed of the k-means starts.
    restarts : int
        Number of k-means runs; the one with the lowest within-cluster sum is kept.

    Returns
    -------
    Ordering
        ``separators`` are the positions where clusters 2, 3, ... start.

    Examples
    --------
    >>> acts = np.zeros((4, 1, 2))
    >>> acts[[1, 3], 0] = 1.0
    >>> o = kmeans_slice(acts, k=2, row=0)
    >>> o.permutation.tolist(), o.separators
    ([0, 2, 1, 3], [2])
    """
    from sklearn.cluster import KMeans

    a = _as_maps(acts)
    s, row = _row_slice(a, row)
    s = _global01(s)
    k = int(k)
    if k < 1:
        raise CnnscopeError(f"the number of clusters must be at least 1, got {k}")
    distinct = len(np.unique(s, axis=0))
    if k > distinct:
        log.info("k=%d > %d distinct rows: using k=%d", k, distinct, distinct)
        k = distinct
    if k == 1:
        labels = np.zeros(len(s), dtype=np.int64)
        centroids = s.mean(axis=0, keepdims=True)
    else:
        km = KMeans(n_clusters=k, n_init=max(1, int(restarts)), random_state=seed)
        labels = km.fit_predict(s).astype(np.int64)
        centroids = km.cluster_centers_
    # Clusters in order of centroid brightness; ties by their first channel.
    present = np.unique(labels)
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in present}
    rank = sorted(present, key=lambda c: (round(float(centroids[c].mean()), 12), first[c]))
    relabel = {int(c): i for i, c in enumerate(rank)}
    labels = np.array([relabel[int(c)] for c in labels], dtype=np.int64)
    perm = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=len(rank))
    separators = np.cumsum(sizes)[:-1].tolist()
    return Ordering(
        perm,
        separators,
        "kmeans",
        labels=labels,
        info={"row": row, "k": int(len(rank)), "sizes": sizes.tolist()},
    )


def pca_slice(acts, row: int | None = None) -> Ordering:
    """Sort the channels by their score on the first principal component of one row slice.

    The ``C x W`` matrix of rows ``acts[c, row, :]`` is standardised column by column
    (centred, divided by its standard deviation; constant columns are dropped), and
    each channel is scored by its projection on the first principal axis. Channels are
    sorted by increasing score; the sign of the axis is chosen so that the score grows
    with the row's mean value.

    Examples
    --------
    >>> acts = np.array([3.0, 1.0, 2.0, 0.0]).reshape(4, 1, 1) * np.ones((1, 1, 3))
    >>> pca_slice(acts, row=0).permutation.tolist()
    [3, 1, 2, 0]
    """
    a = _as_maps(acts)
    s, row = _row_slice(a, row)
    centred = s - s.mean(axis=0)
    std = s.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(s).max()))
    z = centred[:, keep] / std[keep]
    axis, share = _pc1(z)
    scores = z @ axis if keep.any() else np.zeros(len(s))
    scores = scores * _sign(scores, s.mean(axis=1))
    perm = np.argsort(scores, kind="stable")
    return Ordering(
        perm, [], "pca-slice", scores=scores, info={"row": row, "explained_variance": share}
    )


def pca_maps(acts) -> Ordering:
    """Sort the channels by their score on the principal image of the whole maps.

    Each ``H x W`` map is flattened into a row of a ``C x HW`` matrix; the rows are
    centred (the mean map is subtracted) and the first principal axis, reshaped to
    ``H x W``, is the *principal image* ``P``. The score of channel ``c`` is
    ``sum(P * map_c)`` on the original (uncentred) map; channels are sorted by
    increasing score, the sign of ``P`` chosen so that the score grows with the map's
    mean value.

    Examples
    --------
    >>> acts = np.array([2.0, 0.0, 1.0]).reshape(3, 1, 1) * np.ones((1, 2, 2))
    >>> pca_maps(acts).permutation.tolist()
    [1, 2, 0]
    """
    a = _as_maps(acts)
    x = a.reshape(len(a), -1)
    axis, share = _pc1(x - x.mean(axis=0))
    axis = axis * _sign(x @ axis, x.mean(axis=1))
    scores = x @ axis
    perm = np.argsort(scores, kind="stable")
    return Ordering(
        perm,
        [],
        "pca",
        scores=scores,
        info={"explained_variance": share, "principal_image": axis.reshape(a.shape[1:])},
    )


def order_channels(acts, method: str, **opts) -> Ordering:
    """Order the channels of ``C x H x W`` activations.

    Parameters
    ----------
    acts : array or tensor
        ``C x H x W`` (or ``1 x C x H x W``) activations.
    method : {"kmeans", "pca-slice", "pca"}
        ``kmeans``: k-means on one row slice (options ``k``, ``row``, ``seed``,
        ``restarts``); ``pca-slice``: PCA on one row slice (option ``row``);
        ``pca``: PCA over whole maps, scored by the principal image.

    Returns
    -------
    Ordering

    Examples
    --------
    >>> acts = np.arange(3.0)[::-1].reshape(3, 1, 1) * np.ones((1, 2, 2))
    >>> order_channels(acts, "pca").permutation.tolist()
    [2, 1, 0]
    """
    key = str(method).lower().replace("_", "-")
    if key in ("kmeans", "k-means"):
        return kmeans_slice(acts, **opts)
    if key in ("pca-slice", "pcaslice", "slice-pca"):
        return pca_slice(acts, **opts)
    if key in ("pca", "pca-maps", "pca-image"):
        if opts:
            raise CnnscopeError(f"the pca ordering takes no options (got {', '.join(opts)})")
        return pca_maps(acts)
    raise CnnscopeError(f"unknown ordering {method!r}: use {', '.join(ORDER_METHODS)}")


def as_ordering(order, acts=None, n: int | None = None, **opts) -> Ordering | None:
    """Turn ``None``, a method name, a sequence of channels or an :class:`Ordering` into one.

    Examples
    --------
    >>> as_ordering([1, 0]).permutation.tolist()
    [1, 0]
    >>> as_ordering(None) is None
    True
    """
    if order is None:
        return None
    if isinstance(order, Ordering):
        result = order
    elif isinstance(order, str):
        if acts is None:
            raise CnnscopeError("an ordering by name needs the activations")
        result = order_channels(acts, order, **opts)
    elif isinstance(order, (Sequence, np.ndarray)):
        result = Ordering(np.asarray(order, dtype=np.int64), [], "given")
    else:
        raise CnnscopeError(f"cannot use {type(order).__name__} as a channel ordering")
    if n is not None and len(result) != n:
        raise CnnscopeError(f"the ordering has {len(result)} channels, the layer has {n}")
    return result


def apply_order(array, ordering: Ordering | Sequence[int] | None):
    """``array`` (channels first) with its channels in display order.

    Examples
    --------
    >>> apply_order(np.array([10, 11, 12]), [2, 0, 1]).tolist()
    [12, 10, 11]
    """
    if ordering is None:
        return array
    perm = ordering.permutation if isinstance(ordering, Ordering) else np.asarray(ordering)
    if hasattr(array, "index_select"):
        import torch

        return array.index_select(0, torch.as_tensor(perm, device=array.device))
    return np.asarray(array)[perm]


def slice_image(
    acts, row: int | None = None, ordering: Ordering | None = None, fill: float = 1.0
) -> np.ndarray:
    """The row slice of every channel stacked into a ``C x W`` image, in display order.

    Values are normalised jointly to [0, 1]. One row of ``fill`` (white) is *inserted*
    at each separator of ``ordering``, so the image has ``C + len(separators)`` rows
    and no channel is lost.

    Examples
    --------
    >>> acts = np.arange(4.0).reshape(4, 1, 1)
    >>> slice_image(acts, 0, Ordering(np.array([3, 2, 1, 0]), [2]))[:, 0].round(2).tolist()
    [1.0, 0.67, 1.0, 0.33, 0.0]
    """
    a = _as_maps(acts)
    s, _ = _row_slice(a, row)
    s = _global01(s)
    if ordering is None:
        return s
    s = s[ordering.permutation]
    parts, start = [], 0
    for sep in ordering.separators:
        parts += [s[start:sep], np.full((1, s.shape[1]), fill)]
        start = sep
    parts.append(s[start:])
    return np.concatenate(parts, axis=0)
