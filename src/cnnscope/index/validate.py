"""What a well-formed index is: every field of ``index.json`` and every array, checked on open.

An index folder is data, and it may come from anywhere. :func:`read_index` checks the
manifest's fields and types first, derives from them the exact dtype and shape of every
array (so that no array is read, let alone inflated, before its size is known to be
right), then checks the arrays' values against the manifest: image numbers, positions,
scores, their order and the counts. Any inconsistency is one :class:`IndexFormatError`
line; nothing in the folder is ever imported or called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from .bundle import FORMAT, VERSION, IndexFormatError, read_bundle
from .merge import IMAGE_LIMIT

__all__ = [
    "MAX_INPUT_SIDE",
    "MAX_TOP_K",
    "decode_ids",
    "encode_ids",
    "expected_arrays",
    "read_index",
]

#: Largest ``--top-k``.
MAX_TOP_K = 10_000
#: Largest side of the model input an index may ask for (grids are drawn at that size).
MAX_INPUT_SIDE = 4096
_FIELDS = {"activation": np.float32, "image": np.int32, "y": np.int32, "x": np.int32}


class _Damaged(IndexFormatError):
    """An inconsistency inside an index (the message says which; the folder is added)."""


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise _Damaged(what)


def _is_int(value, low: int = 0, high: float = math.inf) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _numbers(value, n: int, check=_is_number) -> bool:
    return isinstance(value, list) and len(value) == n and all(check(v) for v in value)


def _dict(meta: dict, key: str) -> dict:
    value = meta.get(key)
    _need(isinstance(value, dict), f"{key!r} must be an object, got {value!r:.60}")
    return cast(dict, value)


def _optional_str(value) -> bool:
    return value is None or isinstance(value, str)


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """The ``image_ids`` array of a bundle: the ids as UTF-8, NUL-separated, ``uint8``.

    Examples
    --------
    >>> blob = encode_ids(["a.jpg", "b.png"])
    >>> blob.dtype, bytes(blob)
    (dtype('uint8'), b'a.jpg\\x00b.png')
    >>> decode_ids(blob, 2)
    ['a.jpg', 'b.png']
    """
    return np.frombuffer("\0".join(ids).encode("utf-8"), dtype=np.uint8).copy()


def decode_ids(blob: np.ndarray, n: int) -> list[str]:
    """Inverse of the ``image_ids`` encoding (UTF-8, NUL-separated).

    Examples
    --------
    >>> decode_ids(np.frombuffer(b"a.jpg\\0b.png", np.uint8), 2)
    ['a.jpg', 'b.png']
    """
    if n == 0:
        return []
    try:
        ids = bytes(np.asarray(blob, np.uint8)).decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise _Damaged("the image ids are not UTF-8") from None
    if len(ids) != n:
        raise _Damaged(f"image table holds {len(ids)} ids, expected {n}")
    return ids


def _check_header(meta: dict, folder: Path) -> None:
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{folder} is not a cnnscope index (format {meta.get('format')!r})")
    version = meta.get("version")
    if not _is_int(version, 1) or int(cast(int, version)) > VERSION:
        raise IndexFormatError(
            f"{folder} has index format version {version!r}; this cnnscope reads "
            f"versions 1 to {VERSION}" + (": upgrade cnnscope" if _is_int(version, 1) else "")
        )
    _need(meta.get("complete") is True, "it is not marked complete")


def _check_model_and_source(meta: dict) -> None:
    model = _dict(meta, "model")
    _need(isinstance(model.get("name"), str), "model.name must be a string")
    _need(isinstance(model.get("fingerprint"), str), "model.fingerprint must be a string")
    spec = model.get("spec")
    _need(
        spec is None
        or (
            isinstance(spec, dict)
            and _optional_str(spec.get("model"))
            and _optional_str(spec.get("weights"))
        ),
        "model.spec must be null or {model, weights} strings",
    )
    source = _dict(meta, "source")
    kind, root = source.get("kind"), source.get("root")
    _need(
        (kind == "folder" and isinstance(root, str)) or (kind == "gallery" and root is None),
        "source must be a folder with a root or the gallery without one",
    )
    _need(isinstance(source.get("augment", False), bool), "source.augment must be true or false")


def _check_preprocessing(meta: dict) -> None:
    from ..models import Preprocessing

    pre = _dict(meta, "preprocessing")
    _need(
        _numbers(pre.get("input_size"), 2, lambda v: _is_int(v, 1, MAX_INPUT_SIDE)),
        f"preprocessing.input_size must be [H, W] in 1-{MAX_INPUT_SIDE}",
    )
    for key in ("mean", "std"):
        _need(_numbers(pre.get(key), 3), f"preprocessing.{key} must be 3 numbers")
    for key in ("scale", "crop_fraction"):
        _need(_is_number(pre.get(key, 1.0)), f"preprocessing.{key} must be a number")
    _need(
        pre.get("resize") in ("resize", "resize_crop"),
        "preprocessing.resize must be resize or resize_crop",
    )
    try:
        Preprocessing(**pre)
    except (TypeError, ValueError) as exc:
        raise _Damaged(f"bad preprocessing: {exc}") from None


def _check_layer(entry, names: set) -> None:
    _need(isinstance(entry, dict), f"a layer entry must be an object, got {entry!r:.60}")
    name, channels, shape = entry.get("name"), entry.get("channels"), entry.get("shape")
    _need(isinstance(name, str) and name != "", "a layer has no name")
    _need(name not in names, f"layer {name} is listed twice")
    names.add(name)
    _need(_is_int(channels, 1), f"layer {name}: channels must be a positive integer")
    _need(
        isinstance(shape, list)
        and len(shape) in (1, 3)
        and all(_is_int(s, 1) for s in shape)
        and shape[0] == channels,
        f"layer {name}: shape must be [channels] or [channels, H, W]",
    )
    f = entry.get("field")
    _need(
        f is None
        or (
            len(shape) == 3
            and isinstance(f, dict)
            and _numbers(f.get("size"), 2, lambda v: _is_int(v, 1))
            and _numbers(f.get("stride"), 2, lambda v: _is_int(v, 1))
            and _numbers(f.get("offset"), 2)
        ),
        f"layer {name}: field must be null or {{size, stride, offset}} pairs",
    )


def _check_images(meta: dict) -> None:
    images = _dict(meta, "images")
    total, indexed, skipped = (images.get(k) for k in ("total", "indexed", "skipped"))
    _need(
        _is_int(total, 1, IMAGE_LIMIT)
        and _is_int(indexed)
        and _is_int(skipped)
        and cast(int, indexed) + cast(int, skipped) == total,
        "images must count total = indexed + skipped",
    )
    table = meta.get("skipped")
    _need(
        isinstance(table, list)
        and len(table) == skipped
        and all(
            isinstance(s, dict)
            and isinstance(s.get("image"), str)
            and isinstance(s.get("reason"), str)
            for s in table
        ),
        "skipped must list {image, reason} for every skipped image",
    )
    _need(_is_int(meta.get("batch_size", 1), 1), "batch_size must be a positive integer")


def expected_arrays(meta: dict, folder: str | Path = "index") -> dict[str, tuple]:
    """Check the manifest; the ``(dtype, shape)`` of every array it implies.

    ``image_ids`` has shape ``None`` (a byte string of any length).

    Raises
    ------
    IndexFormatError
        If a field is missing, of the wrong type or out of range, or the version is newer.

    Examples
    --------
    >>> import json
    >>> meta = json.load(open("my-index/index.json"))  # doctest: +SKIP
    >>> expected_arrays(meta, "my-index")["L0_activation"]  # doctest: +SKIP
    (<class 'numpy.float32'>, (32, 16))
    """
    _check_header(meta, Path(folder))
    _check_model_and_source(meta)
    _check_preprocessing(meta)
    _check_images(meta)
    k, n = meta.get("top_k"), meta["images"]["total"]
    _need(_is_int(k, 1, MAX_TOP_K), f"top_k must be an integer in 1-{MAX_TOP_K}")
    layers = meta.get("layers")
    names: set[str] = set()
    _need(isinstance(layers, list) and layers != [], "layers must be a non-empty list")
    layers = cast(list, layers)
    for entry in layers:
        _check_layer(entry, names)
    out: dict[str, tuple[type, tuple[int, ...] | None]] = {
        "image_ids": (np.uint8, None),
        "image_size": (np.int64, (n,)),
        "image_mtime_ns": (np.int64, (n,)),
        "image_status": (np.int8, (n,)),
    }
    for i, entry in enumerate(layers):
        for field, dtype in _FIELDS.items():
            out[f"L{i}_{field}"] = (dtype, (int(entry["channels"]), int(cast(int, k))))
    return out


def _check_table(meta: dict, arrays: dict) -> list[str]:
    """The image table: sorted unique ids, status flags and the skipped list agree."""
    n = meta["images"]["total"]
    ids = decode_ids(arrays["image_ids"], n)
    _need(all(a < b for a, b in zip(ids, ids[1:])), "the image ids are not sorted and unique")
    status = arrays["image_status"]
    _need(bool(np.isin(status, (0, 1)).all()), "image_status must be 0 or 1")
    _need(
        int((status == 1).sum()) == meta["images"]["indexed"],
        "image_status disagrees with images.indexed",
    )
    unreadable = [ids[i] for i in np.flatnonzero(status == 0)]
    _need(
        [s["image"] for s in meta["skipped"]] == unreadable,
        "the skipped list disagrees with image_status",
    )
    return ids


def _check_layer_arrays(entry: dict, arrays: dict, i: int, meta: dict) -> None:
    """One layer's top-k: full slots first, real images, positions inside the map, order."""
    name, shape = entry["name"], entry["shape"]
    act, img = arrays[f"L{i}_activation"], arrays[f"L{i}_image"]
    ys, xs = arrays[f"L{i}_y"], arrays[f"L{i}_x"]
    full, status = img >= 0, arrays["image_status"]
    _need(
        bool(((img >= -1) & (img < len(status))).all()), f"layer {name}: image numbers out of range"
    )
    filled = min(meta["top_k"], meta["images"]["indexed"])
    _need(
        bool((full == (np.arange(meta["top_k"]) < filled)).all()),
        f"layer {name}: every unit must have {filled} examples, in its first slots",
    )
    _need(bool((status[img[full]] == 1).all()), f"layer {name}: an example of a skipped image")
    ranked = np.sort(img, axis=1)
    _need(
        not ((ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)).any(),
        f"layer {name}: an image twice in one unit",
    )
    h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    _need(
        bool((inside == full).all() and (ys[~full] == -1).all() and (xs[~full] == -1).all()),
        f"layer {name}: positions outside the {h}x{w} feature map",
    )
    _need(not np.isnan(act).any(), f"layer {name}: NaN activations")
    _need(bool((act[~full] == -np.inf).all()), f"layer {name}: empty slots with an activation")
    _need(not (act[:, 1:] > act[:, :-1]).any(), f"layer {name}: examples not strongest first")


def read_index(folder: str | Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """Read and check the index in ``folder``: ``(manifest, arrays, image ids)``.

    Raises
    ------
    IndexFormatError
        One line saying what is missing, damaged or inconsistent, or that the index
        is newer than this cnnscope.

    Examples
    --------
    >>> meta, arrays, ids = read_index("my-index")  # doctest: +SKIP
    >>> ids[arrays["L0_image"][0, 0]]  # doctest: +SKIP
    'cats/01.jpg'
    """
    folder = Path(folder)
    try:
        meta, arrays = read_bundle(folder, "index", expect=lambda m: expected_arrays(m, folder))
        ids = _check_table(meta, arrays)
        for i, entry in enumerate(meta["layers"]):
            _check_layer_arrays(entry, arrays, i, meta)
    except _Damaged as exc:
        raise IndexFormatError(f"{folder} is a damaged index: {exc}") from None
    return meta, arrays, ids
