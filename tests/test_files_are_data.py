"""Files are data: an index or a synthesis config never makes cnnscope import or call code,
never inflates past what its sizes justify, and an inconsistent one is one line (exit 2),
never a traceback; a failed ``index`` start leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnnscope.cli import main
from cnnscope.errors import CnnscopeError
from cnnscope.index import IndexFormatError, build_index, open_index
from cnnscope.index.bundle import write_bundle
from cnnscope.index.folder import locked
from cnnscope.models import load_model
from cnnscope.synthesis.config import SynthesisConfig
from cnnscope.synthesis.presets import PRESETS

from .mixed_net import INPUT_SIZE
from .test_index import write_images

REPO = Path(__file__).resolve().parents[1]
MIXED = "tests.mixed_net:MixedNet"
LAYERS = ["conv1", "conv2", "fc"]  # L0 10x14 map, L1 5x7 map, L2 a vector
MODEL_ARGS = ["--model", MIXED, "--input-size", "10x14", "--workers", "0"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """6 images, top 8: every unit has 6 examples and 2 empty slots."""
    root = tmp_path_factory.mktemp("data")
    write_images(root / "images", range(6))
    model = load_model(MIXED, input_size=INPUT_SIZE)
    return build_index(model, root / "images", LAYERS, top_k=8, out=root / "ix", workers=0)


def npz_of(index: Path) -> Path:
    return index / json.loads((index / "index.json").read_text())["arrays"]["file"]


def crafted(built: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``built`` whose manifest and arrays ``edit(meta, arrays)`` changed.

    The bundle is rewritten with a matching digest, as any writer would do: only the
    consistency checks can refuse it.
    """
    index = tmp_path / "crafted"
    shutil.copytree(built, index)
    meta = json.loads((index / "index.json").read_text())
    with np.load(npz_of(index)) as z:
        arrays = {k: z[k].copy() for k in z.files}
    edit(meta, arrays)
    del meta["arrays"]
    write_bundle(index, "index", meta, arrays, arrays_prefix="topk")
    return index


def assert_refused(index: Path, capsys, message: str, unit: str = "conv2:0") -> None:
    """The Python API raises IndexFormatError and the CLI exits 2, both with one line."""
    with pytest.raises(IndexFormatError) as err:
        open_index(index)
    assert "\n" not in str(err.value) and message in str(err.value), err.value
    assert main(["examples", str(index), unit]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and message in out.err and out.out == "", out.err


def _set(path: str, value):
    def edit(meta, arrays):
        *parents, key = path.split(".")
        node = meta
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is KeyError:
            del node[key]
        else:
            node[int(key) if isinstance(node, list) else key] = value

    return edit


def _array(name: str, change):
    def edit(meta, arrays):
        arrays[name] = change(arrays[name].copy())

    return edit


def _put(a, index, value):
    a[index] = value
    return a


def _blob(change):
    def edit(meta, arrays):
        arrays["image_ids"] = np.frombuffer(change(bytes(arrays["image_ids"])), np.uint8).copy()

    return edit


def _unsorted_ids(meta, arrays):
    ids = bytes(arrays["image_ids"]).split(b"\0")
    arrays["image_ids"] = np.frombuffer(b"\0".join(ids[::-1]), np.uint8).copy()


def _more_channels(meta, arrays):
    meta["layers"][1]["channels"] = 9
    meta["layers"][1]["shape"][0] = 9


def _weaker_first(meta, arrays):
    arrays["L0_activation"][0, 0] = arrays["L0_activation"][0, 1] - 1


def _duplicate_image(meta, arrays):
    arrays["L1_image"][2, 1] = arrays["L1_image"][2, 0]


def _object_array(meta, arrays):
    arrays["L0_y"] = arrays["L0_y"].astype(object)


INCONSISTENT = {
    # missing keys, wrong types, bad values in the manifest
    "no layers": (_set("layers", KeyError), "layers must be a non-empty list"),
    "no top_k": (_set("top_k", KeyError), "top_k must be an integer"),
    "top_k a string": (_set("top_k", "8"), "top_k must be an integer"),
    "layer not an object": (_set("layers.0", 3), "a layer entry must be an object"),
    "channels a string": (_set("layers.0.channels", "six"), "channels must be a positive"),
    "shape and channels disagree": (_set("layers.0.shape", [7, 10, 14]), "shape must be"),
    "layer twice": (_set("layers.1.name", "conv1"), "layer conv1 is listed twice"),
    "bad field": (_set("layers.0.field", {"size": [3]}), "field must be null"),
    "model a string": (_set("model", "x"), "'model' must be an object"),
    "no fingerprint": (_set("model.fingerprint", KeyError), "model.fingerprint must be"),
    "weights a number": (_set("model.spec.weights", 5), "model.spec must be"),
    "unknown preprocessing": (_set("preprocessing.zoom", 2), "bad preprocessing"),
    "huge input": (_set("preprocessing.input_size", [10**6, 10**6]), "input_size must be"),
    "input size a string": (_set("preprocessing.input_size", "big"), "input_size must be"),
    "no resize": (_set("preprocessing.resize", "none"), "preprocessing.resize must be"),
    "NaN scale": (_set("preprocessing.scale", float("nan")), "preprocessing.scale must be"),
    "root a number": (_set("source.root", 5), "source must be a folder"),
    "counts disagree": (_set("images.indexed", 99), "images must count"),
    "skipped a string": (_set("skipped", "none"), "skipped must list"),
    "batch size a string": (_set("batch_size", "4"), "batch_size must be"),
    "not complete": (_set("complete", False), "not marked complete"),
    "version a string": (_set("version", "1"), "version '1'"),
    "version 0": (_set("version", 0), "version 0"),
    "version true": (_set("version", True), "version True"),
    "newer version": (_set("version", 99), "upgrade cnnscope"),
    "other format": (_set("format", "zip"), "is not a cnnscope index (format 'zip')"),
    # arrays that disagree with the manifest
    "top_k disagrees": (_set("top_k", 7), "expected float32 [6, 7]"),
    "more channels": (_more_channels, "expected float32 [9, 8]"),
    "one more image": (_set("images.total", 7), "images must count"),
    "missing array": (lambda m, a: a.pop("L0_y"), "expected L0_activation"),
    "extra array": (lambda m, a: a.update(evil=np.zeros(3)), "holds the arrays"),
    "float64 scores": (_array("L0_activation", lambda a: a.astype(np.float64)), "float64 [6, 8]"),
    "transposed": (_array("L0_image", lambda a: a.T.copy()), "expected int32 [6, 8]"),
    "status too long": (_array("image_status", lambda a: np.append(a, 1)), "expected int8 [6]"),
    "pickled objects": (_object_array, "pickles are never loaded"),
    # values out of range or inconsistent
    "image too large": (_array("L0_image", lambda a: _put(a, (0, 0), 6)), "out of range"),
    "image negative": (_array("L0_image", lambda a: _put(a, (0, 0), -7)), "out of range"),
    "example in empty slot": (_array("L0_image", lambda a: _put(a, (0, 7), 3)), "first slots"),
    "empty slot first": (_array("L2_image", lambda a: _put(a, (1, 0), -1)), "first slots"),
    "NaN score": (_array("L0_activation", lambda a: _put(a, (0, 0), np.nan)), "NaN"),
    "y outside": (_array("L1_y", lambda a: _put(a, (0, 0), 5)), "outside the 5x7 feature map"),
    "x negative": (_array("L1_x", lambda a: _put(a, (3, 2), -1)), "outside the 5x7"),
    "vector position": (_array("L2_x", lambda a: _put(a, (0, 0), 1)), "outside the 1x1"),
    "score in empty slot": (_array("L0_activation", lambda a: _put(a, (0, 7), 1)), "empty slots"),
    "weaker first": (_weaker_first, "not strongest first"),
    "image twice": (_duplicate_image, "an image twice"),
    "status 5": (_array("image_status", lambda a: _put(a, 0, 5)), "0 or 1"),
    "status and counts disagree": (_array("image_status", lambda a: _put(a, 0, 0)), "disagrees"),
    "ids lost a separator": (_blob(lambda b: b.replace(b"\0", b"", 1)), "holds 5 ids"),
    "ids not UTF-8": (_blob(lambda b: b"\xff" + b[1:]), "not UTF-8"),
    "ids unsorted": (_unsorted_ids, "not sorted"),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_index_is_one_line(case, built, tmp_path, capsys):
    edit, message = INCONSISTENT[case]
    assert_refused(crafted(built, tmp_path, edit), capsys, message)


def _write(name: str, data: bytes | str):
    def damage(index: Path):
        path = npz_of(index) if name == "npz" else index / name
        path.unlink()
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)

    return damage


def _truncated_npz(index: Path):
    npz = npz_of(index)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])


def _directory(name: str):
    def damage(index: Path):
        path = npz_of(index) if name == "npz" else index / name
        path.unlink()
        path.mkdir()

    return damage


def _arrays_file(name: str):
    def damage(index: Path):
        meta = json.loads((index / "index.json").read_text())
        meta["arrays"]["file"] = name
        (index / "index.json").write_text(json.dumps(meta))

    return damage


def _corrupt_deflate(index: Path):
    npz = npz_of(index)
    members = stored_members(npz)
    name, data, _, crc, size = members[0]
    members[0] = (name, b"\x00garbage, not deflate" * 20, zipfile.ZIP_DEFLATED, crc, size)
    write_zip(npz, members)


DAMAGED = {
    "truncated arrays": (_truncated_npz, "is damaged"),
    "empty arrays": (_write("npz", b""), "is damaged"),
    "arrays a directory": (_directory("npz"), "is damaged"),
    "arrays missing": (lambda ix: npz_of(ix).unlink(), "is missing"),
    "arrays outside the folder": (_arrays_file("../topk-0.npz"), "bad arrays file"),
    "arrays named by a number": (_arrays_file(5), "bad arrays file"),
    "corrupt deflate stream": (_corrupt_deflate, "is damaged"),
    "empty manifest": (_write("index.json", ""), "is unreadable"),
    "truncated manifest": (_write("index.json", '{"format": "cnnscope-ind'), "is unreadable"),
    "deeply nested manifest": (_write("index.json", "[" * 100_000), "is unreadable"),
    "manifest a list": (_write("index.json", "[1, 2]"), "is not a cnnscope manifest"),
    "manifest a directory": (_directory("index.json"), "is not a cnnscope index"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_index_is_one_line(case, built, tmp_path, capsys):
    damage, message = DAMAGED[case]
    index = tmp_path / "damaged"
    shutil.copytree(built, index)
    damage(index)
    assert_refused(index, capsys, message)


@pytest.mark.parametrize(
    "unit, message",
    [("conv9:0", "is not in the index; did you mean conv2"), ("fc:5", "out of range 0-4")],
)
def test_unknown_layer_or_unit_is_one_line(unit, message, built, capsys):
    assert main(["examples", str(built), unit]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# -- an index names a model; it never makes the reader import or call one -------------------


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m cnnscope ARGV`` in a fresh process (a crash there cannot kill pytest)."""
    return subprocess.run(
        [sys.executable, "-m", "cnnscope", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=300,
    )


def naming(spec: str, weights: str | None = None):
    return _set("model.spec", {"model": spec, "weights": weights})


def test_an_index_naming_os_abort_is_refused_not_called(built, tmp_path):
    index = crafted(built, tmp_path, naming("os:abort"))
    done = run_cli("examples", str(index), "conv2:0", "--grid", str(tmp_path / "g.png"))
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert "was built with model os:abort; pass --model os:abort" in done.stderr


def test_an_index_never_imports_the_module_it_names(built, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "evil_factory.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def make():\n    return None\n"
    )
    weights = str(tmp_path / "w.pt")
    index = crafted(built, tmp_path, naming("evil_factory:make", weights))
    grid = ["--grid", str(tmp_path / "g.png")]
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = run_cli("examples", str(index), "conv2:0", *grid, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"pass --model evil_factory:make --weights {weights}" in done.stderr
    assert not marker.exists()
    # the same module, typed by the user, is theirs to run: the environment did reach it
    done = run_cli(
        "examples", str(index), "conv2:0", *grid, "--model", "evil_factory:make", env=env
    )
    assert done.returncode == 2 and "returned NoneType" in done.stderr, done.stderr
    assert marker.exists()


def test_the_python_api_does_not_import_it_either(built, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_api.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def make():\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    index = open_index(crafted(built, tmp_path, naming("evil_api:make")))
    try:
        with pytest.raises(CnnscopeError, match="pass --model evil_api:make"):
            index.load_model()
        with pytest.raises(CnnscopeError, match="pass --model evil_api:make"):
            index.grid("conv2:0")
        assert not marker.exists() and "evil_api" not in sys.modules
    finally:
        sys.modules.pop("evil_api", None)


def test_a_built_in_name_is_still_loaded(built, tmp_path):
    index = open_index(crafted(built, tmp_path, naming("lite0")))
    with pytest.raises(CnnscopeError, match="built with another model"):
        index.load_model()  # EfficientNet-Lite0 was loaded, and is not this index's model


# -- sizes are checked before anything is inflated ---------------------------------------------


def stored_members(npz: Path) -> list[tuple]:
    """``(name, data, method, crc, size)`` of every member of an ``.npz``, uncompressed."""
    with zipfile.ZipFile(npz) as zf:
        return [
            (i.filename, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))
            for i in zf.infolist()
            for data in [zf.read(i)]
        ]


def write_zip(path: Path, members: list[tuple]) -> None:
    """A plain zip of already encoded members (no zip64)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        n = name.encode()
        fixed = (method, 0, 0x21, crc, len(data), size, len(n), 0)
        central += struct.pack("<IHHH", 0x02014B50, 20, 20, 0) + struct.pack("<HHHIIIHH", *fixed)
        central += struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + n
        out += struct.pack("<IHH", 0x04034B50, 20, 0) + struct.pack("<HHHIIIHH", *fixed) + n
        out += data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, *[len(members)] * 2, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def deflated_zeros(header: bytes, zeros: int) -> tuple[bytes, int]:
    """Raw deflate of ``header`` + ``zeros`` zero bytes, and its CRC, without compressing
    them all: after a full flush the compressor restarts, so each MiB compresses alike."""
    mib = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(mib) + co.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(zeros >> 20):
        crc = zlib.crc32(mib, crc)
    return head + block * (zeros >> 20) + co.flush(), crc


def npy_header(shape: tuple) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


def _bomb(claim_it: bool):
    """L0_activation becomes 2 GiB of zeros in 2 MiB; optionally the manifest claims it."""

    def damage(index: Path):
        channels = (1 << 31) // (8 * 4)
        if claim_it:
            meta = json.loads((index / "index.json").read_text())
            meta["layers"][0]["channels"] = channels
            meta["layers"][0]["shape"][0] = channels
            (index / "index.json").write_text(json.dumps(meta))
        header = npy_header((channels, 8))
        data, crc = deflated_zeros(header, 1 << 31)
        npz = npz_of(index)
        members = [m for m in stored_members(npz) if m[0] != "L0_activation.npy"]
        write_zip(npz, [*members, ("L0_activation.npy", data, 8, crc, len(header) + (1 << 31))])

    return damage


def _lying_header(index: Path):
    """A small member whose header declares 2 GiB."""
    npz = npz_of(index)
    members = stored_members(npz)
    for j, (name, data, method, *_) in enumerate(members):
        if name == "L0_activation.npy":
            lie = npy_header(((1 << 31) // 32, 8)) + data[128:]
            members[j] = (name, lie, method, zlib.crc32(lie), len(lie))
    write_zip(npz, members)


# The child limits its address space to 1 GiB above what it has after the imports.
BOUNDED_RUN = """
import resource, sys
from cnnscope.cli import build_parser, main
build_parser()  # every command module imported
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
sys.exit(main(["examples", sys.argv[1], "conv2:0"]))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "damage, message",
    [
        (_bomb(claim_it=False), "would inflate to"),
        (_bomb(claim_it=True), "would inflate to"),
        (_lying_header, "expected float32 [6, 8]"),
    ],
    ids=["bomb", "bomb the manifest claims", "lying header"],
)
def test_a_zip_bomb_is_refused_in_bounded_memory(damage, message, built, tmp_path):
    index = tmp_path / "bomb"
    shutil.copytree(built, index)
    damage(index)
    assert npz_of(index).stat().st_size < 4 << 20
    done = subprocess.run(
        [sys.executable, "-c", BOUNDED_RUN, str(index)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


# -- a failed start leaves nothing behind -----------------------------------------------------


def test_a_failed_start_leaves_no_folder_and_no_lock(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new-index"
    assert main(["index", str(tmp_path / "empty"), "--out", str(out), *MODEL_ARGS]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_update_leaves_the_index_as_it_was(built, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(built, index)
    before = sorted(p.name for p in index.iterdir())
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--out", str(index), *MODEL_ARGS]) == 2
    assert "no images found" in capsys.readouterr().err
    assert sorted(p.name for p in index.iterdir()) == before  # no .lock, no .building
    assert main(["examples", str(index), "conv2:0"]) == 0


def test_the_lock_stays_exclusive_when_its_file_is_removed(tmp_path):
    """A waiter that locked the file its holder removed must lock the new file instead."""
    inside, leave = threading.Event(), threading.Event()

    def waiter():
        with locked(tmp_path, wait=True):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=waiter)
    with locked(tmp_path, wait=False):
        thread.start()
        time.sleep(0.5)  # let the waiter open the file and block on it
    try:
        assert inside.wait(30)
        with pytest.raises(CnnscopeError, match="another process is building"):
            with locked(tmp_path, wait=False):
                pass
    finally:
        leave.set()
        thread.join(30)
    assert not (tmp_path / ".lock").exists()


# -- synthesis configs (--config reruns) -------------------------------------------------------


def _record(config: dict | None = None, **fields) -> dict:
    """A record that would run fast if it were accepted."""
    return {"config": {"num_steps": 1, "final_size": "32x32", **(config or {})}, **fields}


BAD_CONFIGS = {
    "betas a number": (_record({"betas": 5}), "betas must be tuple[float, float]"),
    "betas strings": (_record({"betas": ["a", "b"]}), "betas must be"),
    "scales a string": (_record({"scales": "abc"}), "scales must be list[float]"),
    "flag a string": (_record({"decorrelate": "no"}), "decorrelate must be bool"),
    "threads a string": (_record(threads="abc"), "threads must be an integer"),
    "threads negative": (_record(threads=-3), "threads must be an integer"),
    "index past the batch": (_record(index=99), "index must be an integer in 0-0"),
    "model a string": (_record(model="x"), "model must be an object"),
    "a list": ([1, 2], "is not a JSON object"),
    "deeply nested": ("[" * 100_000, "RecursionError"),
    "too large": (" " * (2 << 20) + json.dumps(_record()), "bytes: not a record"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_synthesis_config_is_one_line(case, tmp_path, capsys):
    content, message = BAD_CONFIGS[case]
    path = tmp_path / "run.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    argv = ["dream", "--config", str(path), "--output-file", str(tmp_path / "o.png")]
    assert main([*argv, "--no-progress", "--iter-behavior", "print"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_reloads_from_its_record(name, tmp_path):
    cfg = PRESETS[name].config()
    path = tmp_path / "run.json"
    record = {"config": cfg.to_dict(), "threads": 2, "index": 0, "model": {"name": "x"}}
    path.write_text(json.dumps(record))
    assert SynthesisConfig.load(path) == (cfg, record)
