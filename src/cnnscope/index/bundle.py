"""Bundles, the on-disk format of a dataset index: versioned JSON manifests + ``.npz``.

An index is a folder. Its state is one *bundle*: a JSON manifest (``index.json``) that
names an ``.npz`` file of arrays (``topk-<digest>.npz``) and gives the SHA-256 of the
arrays. The arrays are written first under a content-addressed name, then the manifest
replaces the old one with :func:`os.replace`, so a reader always sees a complete old or
a complete new index, whatever moment the writer is killed at. Build checkpoints are
bundles of the same kind (``.building/rank<R>.json``). See ``docs/index-format.md``.

Every file is written with :func:`cnnscope.atomic.atomic_write`: to a temporary file in
the same folder, flushed and ``fsync``'d, and renamed over the target; the folder itself
is then ``fsync``'d.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, crash_point
from ..errors import CnnscopeError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "IndexFormatError",
    "array_digest",
    "read_bundle",
    "write_bundle",
]

#: Value of the manifest's ``format`` field.
FORMAT = "cnnscope-index"
#: Version of the layout written by this code; readers refuse newer major versions.
#: 2: units are ranked, placed and stored by their strength (cnnscope.engine.strength).
VERSION = 2
#: File name of the manifest inside an index folder.
MANIFEST = "index.json"
#: The arrays of a bundle may declare at most this many times their file's size (plus
#: 1 MiB) when inflated. The writer stores them uncompressed; a zip bomb is refused unread.
MAX_INFLATION = 32


class IndexFormatError(CnnscopeError):
    """A path is not a cnnscope index, or the index is damaged or too new."""


# What reading a damaged .npz can raise (zlib.error: a corrupt deflate stream).
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, IndexFormatError)


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes), independent of file layout.

    Examples
    --------
    >>> a = array_digest({"x": np.zeros(3, np.float32)})
    >>> a == array_digest({"x": np.zeros(3, np.float32)}), a == array_digest({"x": np.ones(3)})
    (True, False)
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})  # type: ignore[arg-type]
    return buf.getvalue()


def write_bundle(
    folder: str | os.PathLike,
    stem: str,
    meta: dict,
    arrays: Mapping[str, np.ndarray],
    *,
    arrays_prefix: str | None = None,
    kill_point: str | None = None,
) -> Path:
    """Atomically replace bundle ``stem`` in ``folder``: ``<stem>.json`` + its ``.npz``.

    The arrays go to ``<prefix>-<digest16>.npz`` first (a new name, so the old bundle
    stays valid), then the manifest is replaced, then unreferenced ``.npz`` files of the
    same prefix are removed. ``meta`` gains an ``arrays`` entry with the file name and
    digest.

    Returns
    -------
    Path
        The manifest file.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = write_bundle(d, "state", {"n": 1}, {"a": np.arange(3)})
    >>> meta, arrays = read_bundle(d, "state")
    >>> meta["n"], arrays["a"].tolist()
    (1, [0, 1, 2])
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = arrays_prefix or stem
    digest = array_digest(arrays)
    npz = folder / f"{prefix}-{digest[:16]}.npz"
    if not (npz.is_file() and _digest_of_file(npz) == digest):
        atomic_write(npz, _npz_bytes(arrays))
    meta = {**meta, "arrays": {"file": npz.name, "sha256": digest}}
    if kill_point:
        crash_point(kill_point)
    manifest = folder / f"{stem}.json"
    atomic_write(
        manifest,
        (json.dumps(meta, indent=1, sort_keys=False) + "\n").encode("utf-8"),
        kill_point=f"{kill_point}-tmp" if kill_point else None,
    )
    for old in folder.glob(f"{prefix}-*.npz"):
        if old.name != npz.name:
            old.unlink(missing_ok=True)
    return manifest


def _load_npz(path: Path, expected: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``; every size is checked before any data is inflated.

    The members' declared sizes together may exceed the file's size only
    :data:`MAX_INFLATION` times, and each member must hold exactly the bytes its ``.npy``
    header declares (and, if ``expected`` maps names to ``(dtype, shape or None)``, that
    dtype and shape), so that neither a zip bomb nor a lying header makes the reader
    allocate more than the file justifies. Pickled objects are never loaded.
    """
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        members = {info.filename.removesuffix(".npy"): info for info in infos}
        if len(members) != len(infos) or any(not i.filename.endswith(".npy") for i in infos):
            raise IndexFormatError("it holds something else than distinct .npy arrays")
        declared = sum(info.file_size for info in infos)
        if declared > MAX_INFLATION * path.stat().st_size + (1 << 20):
            raise IndexFormatError(
                f"it would inflate to {declared} bytes from {path.stat().st_size}: refused"
            )
        if expected is not None and set(members) != set(expected):
            raise IndexFormatError(
                f"it holds the arrays {', '.join(sorted(members))}; expected "
                f"{', '.join(sorted(expected))}"
            )
        return {
            name: _read_npy(zf, info, None if expected is None else expected[name])
            for name, info in sorted(members.items())
        }


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, want: tuple | None) -> np.ndarray:
    """One ``.npy`` member, read only after its header matched its size (and ``want``)."""
    where = f"array {info.filename[:-4]!r}"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 1:
        raise IndexFormatError(f"{where} is encrypted or compressed in an unsupported way")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise IndexFormatError(f"{where} has .npy version {version}")
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if dtype.hasobject:
            raise IndexFormatError(f"{where} holds Python objects (pickles are never loaded)")
        if want is not None:
            dt, sh = np.dtype(want[0]), want[1]
            if dtype.newbyteorder("=") != dt or (len(shape) != 1 if sh is None else shape != sh):
                size = "[n]" if sh is None else list(sh)
                raise IndexFormatError(f"{where} is {dtype} {list(shape)}; expected {dt} {size}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - fh.tell():
            raise IndexFormatError(f"{where} holds another number of bytes than its header says")
        data = fh.read(nbytes)
    if len(data) != nbytes:
        raise IndexFormatError(f"{where} is truncated")
    array = np.frombuffer(data, dtype)  # read only: nobody changes an index in memory
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _digest_of_file(path: Path) -> str | None:
    try:
        return array_digest(_load_npz(path))
    except _DAMAGED:
        return None


def read_bundle(
    folder: str | os.PathLike,
    stem: str,
    expect: Callable[[dict], Mapping[str, tuple]] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Read bundle ``stem`` from ``folder`` and check its arrays against the digest.

    Parameters
    ----------
    folder, stem
        The bundle ``<folder>/<stem>.json`` and the ``.npz`` it names.
    expect : callable, optional
        Called with the manifest before any array is read; returns each array's
        ``(dtype, shape)`` (shape ``None``: any 1-D length) or raises
        :class:`IndexFormatError`. Arrays that differ are refused unread.

    Raises
    ------
    IndexFormatError
        If the manifest is missing or unreadable, or the arrays are missing, damaged,
        or not what ``expect`` says.
    """
    folder = Path(folder)
    manifest = folder / f"{stem}.json"
    try:
        meta = json.loads(manifest.read_text("utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{manifest} not found") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexFormatError(f"{manifest} is unreadable: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), dict):
        raise IndexFormatError(f"{manifest} is not a cnnscope manifest")
    name = meta["arrays"].get("file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name[0] == ".":
        raise IndexFormatError(f"{manifest} names a bad arrays file {name!r}")
    expected = expect(meta) if expect is not None else None
    try:
        arrays = _load_npz(folder / name, expected)
    except FileNotFoundError:
        raise IndexFormatError(f"{folder / name} is missing (the index is damaged)") from None
    except IndexFormatError as exc:
        raise IndexFormatError(f"{folder / name}: {exc}") from None
    except _DAMAGED as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IndexFormatError(f"{folder / name} is damaged: {reason}") from None
    if array_digest(arrays) != meta["arrays"].get("sha256"):
        raise IndexFormatError(f"{folder / name} does not match its manifest (damaged index)")
    return meta, arrays
