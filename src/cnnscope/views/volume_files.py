"""Volumes as files: the ``.vox`` + ``.hd`` pair of the CNN-VIS project, ``.npy``, NRRD
and legacy VTK.

Axis conventions of the files: ``x`` (map column) varies fastest, then ``y`` (map row),
then ``z`` (channel position), i.e. the C-order bytes of a ``C x H x W`` array.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CnnscopeError
from .ordering import Ordering, apply_order

__all__ = [
    "as_volume",
    "read_nrrd",
    "read_vox",
    "to_uint8_volume",
    "write_npy",
    "write_nrrd",
    "write_vox",
    "write_vtk",
]


def as_volume(acts) -> np.ndarray:
    """``acts`` (a C x H x W or 1 x C x H x W tensor or array) as a C x H x W array.

    Examples
    --------
    >>> as_volume(np.zeros((1, 2, 3, 4))).shape
    (2, 3, 4)
    """
    if hasattr(acts, "detach"):
        acts = acts.detach().float().cpu().numpy()
    a = np.asarray(acts)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or min(a.shape) < 1:
        raise CnnscopeError(f"a volume needs C x H x W values, got shape {tuple(a.shape)}")
    return a


def to_uint8_volume(acts, ordering: Ordering | Sequence[int] | None = None) -> np.ndarray:
    """Global min-max to 0..255, rounded: the ``.vox`` values (in display order).

    Examples
    --------
    >>> to_uint8_volume(np.array([0.0, 1.0, 2.0]).reshape(3, 1, 1))[:, 0, 0].tolist()
    [0, 128, 255]
    """
    a = apply_order(as_volume(acts).astype(np.float64), ordering)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.rint(scaled).astype(np.uint8)


# ----------------------------------------------------------------------------- .vox / .hd


def write_vox(
    path: str | Path,
    acts,
    ordering: Ordering | Sequence[int] | None = None,
    rescale: bool = True,
) -> tuple[Path, Path]:
    """Write the raw ``.vox`` volume and its ``.hd`` header (the CNN-VIS format).

    The ``.vox`` file holds ``C * H * W`` unsigned bytes: the activations scaled jointly
    to 0..255 (:func:`to_uint8_volume`), ``x`` fastest, then ``y``, then the channel.
    The header next to it (same name, suffix ``.hd``) reads::

        Size WxHxC unsigned byte
        Spacing 1.0x1.0x1.0

    with the sizes fastest axis first (the CNN-VIS files only had square maps).
    With ``rescale=False`` a uint8 volume is written as it is (e.g. a binary 0/1 volume
    or one scaled jointly with others).

    Returns
    -------
    tuple of Path
        The ``.vox`` and ``.hd`` paths.

    Examples
    --------
    >>> import tempfile, os
    >>> vox, hd = write_vox(os.path.join(tempfile.mkdtemp(), "a.vox"), np.zeros((2, 3, 4)))
    >>> hd.read_text().splitlines()[0]
    'Size 4x3x2 unsigned byte'
    """
    path = Path(path)
    if path.suffix.lower() != ".vox":
        path = path.with_name(path.name + ".vox")
    if rescale:
        data = to_uint8_volume(acts, ordering)
    else:
        data = apply_order(as_volume(acts), ordering)
        if data.dtype != np.uint8:
            raise CnnscopeError(f"rescale=False needs a uint8 volume, got {data.dtype}")
    c, h, w = data.shape
    _parent(path)
    path.write_bytes(np.ascontiguousarray(data).tobytes())
    hd = path.with_suffix(".hd")
    hd.write_text(f"Size {w}x{h}x{c} unsigned byte\nSpacing 1.0x1.0x1.0\n", encoding="ascii")
    return path, hd


def read_vox(path: str | Path) -> np.ndarray:
    """Read a ``.vox`` volume through its ``.hd`` header, as ``C x H x W`` uint8.

    Examples
    --------
    >>> import tempfile, os
    >>> vox, _ = write_vox(os.path.join(tempfile.mkdtemp(), "a.vox"), np.arange(6.0).reshape(1, 2, 3))
    >>> read_vox(vox).tolist()
    [[[0, 51, 102], [153, 204, 255]]]
    """
    path = Path(path)
    hd = path.with_suffix(".hd")
    if not hd.is_file():
        raise CnnscopeError(f"header file not found: {hd}")
    text = hd.read_bytes()[:4096].decode("ascii", errors="replace")
    match = re.search(r"Size\s+(\d+)x(\d+)x(\d+)\s+unsigned\s+byte", text)
    if not match:
        raise CnnscopeError(f"{hd} is not a .hd header ('Size WxHxC unsigned byte')")
    w, h, c = (int(v) for v in match.groups())
    raw = path.read_bytes()
    if len(raw) != w * h * c:
        raise CnnscopeError(f"{path} has {len(raw)} bytes, the header says {w}x{h}x{c}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(c, h, w).copy()


def write_npy(path: str | Path, acts, ordering: Ordering | Sequence[int] | None = None) -> Path:
    """Save the float32 ``C x H x W`` activations (in display order) with ``numpy.save``.

    Examples
    --------
    >>> import tempfile, os
    >>> p = write_npy(os.path.join(tempfile.mkdtemp(), "a.npy"), np.arange(3.0).reshape(3, 1, 1), [2, 1, 0])
    >>> np.load(p).ravel().tolist()
    [2.0, 1.0, 0.0]
    """
    path = Path(path)
    _parent(path)
    np.save(path, apply_order(as_volume(acts).astype(np.float32), ordering))
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


# ----------------------------------------------------------------------------- NRRD

_NRRD_TYPES: dict[np.dtype, str] = {
    np.dtype(np.uint8): "uchar",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "ushort",
    np.dtype(np.int16): "short",
    np.dtype(np.uint32): "uint",
    np.dtype(np.int32): "int",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
_NRRD_NAMES: dict[str, np.dtype] = {v: k for k, v in _NRRD_TYPES.items()}
_NRRD_NAMES.update(
    {
        "unsigned char": np.dtype(np.uint8),
        "uint8": np.dtype(np.uint8),
        "int8": np.dtype(np.int8),
        "uint16": np.dtype(np.uint16),
        "int16": np.dtype(np.int16),
        "uint32": np.dtype(np.uint32),
        "int32": np.dtype(np.int32),
    }
)


def write_nrrd(
    path: str | Path,
    acts,
    ordering: Ordering | Sequence[int] | None = None,
    dtype=np.float32,
    comments: Sequence[str] = (),
) -> Path:
    """Write the ``C x H x W`` volume as an NRRD file (attached header, raw little-endian).

    3D viewers (3D Slicer, ParaView, ITK-SNAP, napari plugins) open it as a scalar
    volume with ``x`` = map column, ``y`` = map row and ``z`` = channel position.

    Parameters
    ----------
    dtype : numpy dtype
        ``float32`` (default: the activation values) or e.g. ``uint8`` (then scaled
        jointly to 0..255 like ``.vox``).
    comments : sequence of str
        ``#`` lines added to the header (layer, image, permutation ...).

    Examples
    --------
    >>> import tempfile, os
    >>> p = write_nrrd(os.path.join(tempfile.mkdtemp(), "a.nrrd"), np.zeros((2, 3, 4)))
    >>> p.read_bytes().split(b"\\n")[:3]
    [b'NRRD0004', b'# cnnscope activation volume', b'type: float']
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    if dtype not in _NRRD_TYPES:
        raise CnnscopeError(f"NRRD export does not support {dtype}")
    if dtype == np.uint8:
        data = to_uint8_volume(acts, ordering)
    else:
        data = apply_order(as_volume(acts), ordering).astype(dtype)
    c, h, w = data.shape
    lines = ["NRRD0004", "# cnnscope activation volume"]
    lines += [f"# {line}" for text in comments for line in str(text).splitlines()]
    lines += [
        f"type: {_NRRD_TYPES[dtype]}",
        "dimension: 3",
        f"sizes: {w} {h} {c}",
        "spacings: 1 1 1",
        "kinds: domain domain domain",
        'labels: "x" "y" "channel"',
    ]
    if dtype.itemsize > 1:
        lines.append("endian: little")
    lines.append("encoding: raw")
    _parent(path)
    body = np.ascontiguousarray(data).astype(dtype.newbyteorder("<"), copy=False).tobytes()
    path.write_bytes(("\n".join(lines) + "\n\n").encode("ascii") + body)
    return path


def read_nrrd(path: str | Path) -> tuple[np.ndarray, dict[str, str]]:
    """Read a raw-encoded NRRD file with attached data (as written by :func:`write_nrrd`).

    Returns
    -------
    tuple
        The array (slowest axis first, so ``C x H x W`` for a volume) and the header
        fields (lower-case keys).

    Examples
    --------
    >>> import tempfile, os
    >>> p = write_nrrd(os.path.join(tempfile.mkdtemp(), "a.nrrd"), np.ones((2, 3, 4)))
    >>> a, header = read_nrrd(p)
    >>> a.shape, header["sizes"]
    ((2, 3, 4), '4 3 2')
    """
    raw = Path(path).read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise CnnscopeError(f"{path} is not an NRRD file with an attached header")
    header: dict[str, str] = {}
    try:
        lines = raw[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise CnnscopeError(f"{path}: the NRRD header is not ASCII text") from None
    for line in lines:
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise CnnscopeError(f"bad NRRD header line {line!r} in {path}")
        header[key.strip().lower()] = value.lstrip("=").strip()
    if header.get("encoding", "raw") != "raw":
        raise CnnscopeError(f"{path}: only raw NRRD encoding is supported")
    try:
        dtype = _NRRD_NAMES[header["type"]]
        sizes = [int(s) for s in header["sizes"].split()]
        dimension = int(header.get("dimension", len(sizes)))
    except (KeyError, ValueError):
        raise CnnscopeError(
            f"{path}: the NRRD header lacks a usable type, sizes or dimension"
        ) from None
    if len(sizes) != dimension or any(s < 1 for s in sizes):
        raise CnnscopeError(f"{path}: sizes {sizes} do not make a {dimension}-d array")
    body = raw[end + 2 :]
    if len(body) != math.prod(sizes) * dtype.itemsize:
        raise CnnscopeError(
            f"{path}: {len(body)} data bytes, the header says {sizes} of {header['type']}"
        )
    big = header.get("endian", "little") == "big"
    data = np.frombuffer(body, dtype=dtype.newbyteorder(">" if big else "<"))
    return data.reshape(sizes[::-1]).astype(dtype), header


def write_vtk(
    path: str | Path,
    acts,
    ordering: Ordering | Sequence[int] | None = None,
    name: str = "activation",
) -> Path:
    """Write the volume as a legacy VTK ``STRUCTURED_POINTS`` file (binary, float32).

    ParaView and VisIt open it directly (``x`` = column, ``y`` = row, ``z`` = channel).

    Examples
    --------
    >>> import tempfile, os
    >>> p = write_vtk(os.path.join(tempfile.mkdtemp(), "a.vtk"), np.zeros((2, 3, 4)))
    >>> p.read_bytes().split(b"\\n")[4]
    b'DIMENSIONS 4 3 2'
    """
    path = Path(path)
    data = apply_order(as_volume(acts), ordering).astype(">f4")
    c, h, w = data.shape
    header = (
        "# vtk DataFile Version 3.0\n"
        "cnnscope activation volume\n"
        "BINARY\n"
        "DATASET STRUCTURED_POINTS\n"
        f"DIMENSIONS {w} {h} {c}\n"
        "ORIGIN 0 0 0\n"
        "SPACING 1 1 1\n"
        f"POINT_DATA {c * h * w}\n"
        f"SCALARS {re.sub(r'[^A-Za-z0-9_]', '_', name) or 'activation'} float 1\n"
        "LOOKUP_TABLE default\n"
    )
    _parent(path)
    path.write_bytes(header.encode("ascii") + np.ascontiguousarray(data).tobytes() + b"\n")
    return path


def _parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CnnscopeError(f"cannot create folder {path.parent}: {exc.strerror}") from None
