"""Tests for cnnscope.images: safe decoding, mode conversion and the gallery."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnscope.errors import ImageError
from cnnscope.images import (
    decoding_bytes,
    gallery_images,
    iter_image_files,
    load_gallery_image,
    load_image,
    resolve_image,
)

from .bad_images import EPS_READS_FILE, bad_images, bomb_png_16bit, png_with_header


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_grayscale_and_cmyk():
    gray = load_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and min(cmyk.getpixel((4, 4))) > 245


def test_palette_with_transparency_goes_on_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = load_image(encode(img, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    img.putpixel((1, 1), (0, 0, 255, 255))
    img.putpixel((2, 2), (0, 0, 0, 128))
    out = load_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 255)
    assert out.getpixel((2, 2)) == (127, 127, 127)
    la = load_image(encode(Image.new("LA", (4, 4), (0, 0)), "PNG"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped():
    a = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = load_image(encode(Image.fromarray(a), "PNG"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (100,) * 3, (255,) * 3]


def test_32_bit_int_and_float():
    ints = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert ints.mode == "I"
    out = load_image(encode(ints, "TIFF"))
    assert out.getpixel((1, 0)) == (255, 255, 255)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    out = load_image(encode(floats, "TIFF"))
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_bytes_and_file_objects():
    data = encode(Image.new("RGB", (5, 6), (1, 2, 3)), "PNG")
    assert load_image(data).getpixel((0, 0)) == (1, 2, 3)
    assert load_image(io.BytesIO(data)).size == (5, 6)


def test_too_many_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=5_000)


def test_decompression_bomb_header(tmp_path):
    """A PNG whose header claims 100000 x 100000 pixels is refused before decoding."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="too large"):
        load_image(path)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=10**11)  # Pillow's own guard still applies


def test_missing_not_image_and_truncated(tmp_path):
    with pytest.raises(ImageError, match="not found.*nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageError, match="notes.png"):
        load_image(text)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    jpeg = encode(noisy, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="cut.jpg") as info:
        load_image(cut)
    assert "\n" not in str(info.value)


def test_gallery_images_load():
    images = gallery_images()
    assert {"chelsea", "coffee", "china", "flower"} <= {g.name for g in images}
    for g in images:
        img = g.load()
        assert img.mode == "RGB" and min(img.size) >= 200, g.name
        assert np.asarray(img).std() > 10, g.name


def test_gallery_unknown_name():
    with pytest.raises(ImageError, match="chelsea"):
        load_gallery_image("chelsee")


def test_resolve_image(tmp_path):
    path = tmp_path / "pic.png"
    Image.new("RGB", (3, 3)).save(path)
    name, img = resolve_image(str(path))
    assert name == "pic.png" and img.size == (3, 3)
    assert resolve_image("Coffee")[0] == "coffee"
    with pytest.raises(ImageError, match="not found"):
        resolve_image(str(tmp_path / "other.jpg"))
    with pytest.raises(ImageError, match="gallery"):
        resolve_image("nothing")


def test_iter_image_files(tmp_path):
    for rel in ["b.JPG", "a/c.png", "a/z.txt", ".hidden/d.png", "e.webp", "a/._f.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == ["a/c.png", "b.JPG", "e.webp"]
    with pytest.raises(ImageError):
        list(iter_image_files(tmp_path / "missing"))


# --- formats: only in-process decoders, refused from the first bytes -------------------------


def test_only_accepted_formats_are_decoded():
    """EPS, PostScript, DDS, ICO... are refused by format, before any decoder runs."""
    for data, fmt in [
        (EPS_READS_FILE, "EPS"),
        (encode(Image.new("RGB", (8, 8)), "EPS"), "EPS"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n" + encode(Image.new("RGB", (8, 8)), "JPEG"), "EPS"),
        (encode(Image.new("RGB", (8, 8)), "DDS"), "DDS"),
        (encode(Image.new("RGB", (8, 8)), "ICO"), "ICO"),
    ]:
        with pytest.raises(ImageError, match=f"looks like {fmt} data.*accepted: JPEG, PNG") as info:
            load_image(data)
        assert "\n" not in str(info.value)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "MPO"):
        assert load_image(encode(Image.new("RGB", (8, 6), (9, 8, 7)), fmt)).size == (8, 6)


def test_eps_never_runs_ghostscript(tmp_path):
    """`cnnscope predict evil.eps` refuses the file; a `gs` on the PATH is never started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "gs-ran"
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    gs.chmod(0o755)
    evil = tmp_path / "evil.eps"
    evil.write_bytes(EPS_READS_FILE)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "cnnscope", "predict", str(evil)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not ran.exists(), f"Ghostscript was started: {ran.read_text()}"
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "looks like EPS data" in done.stderr


# --- memory: the decoded size is checked from the header ---------------------------------------


def test_16_bit_bomb_is_refused_before_decoding():
    """A 120 KB 16-bit PNG of 8000 x 8000 would take ~600 MB to decode and convert."""
    bomb = bomb_png_16bit(8000, 8000)
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match=r"too large to decode: 8000x8000 I;16 pixels need about"):
        load_image(bomb)
    # the same header with no pixel data: refused by size, so never decoded (else: truncated)
    with pytest.raises(ImageError, match="too large to decode"):
        load_image(png_with_header(8000, 8000, depth=16))
    # the server's 40 M pixel limit implies a 320 MB budget: 8000 x 5000 x 16 bits is over it
    with pytest.raises(ImageError, match="too large to decode"):
        load_image(png_with_header(8000, 5000, depth=16), max_pixels=40_000_000)
    # the largest 8-bit RGB photo accepted is within the default budget (header only here)
    with pytest.raises(ImageError, match="truncated"):
        load_image(png_with_header(8000, 8000, color=2))
    with pytest.raises(ImageError, match="need about 18 MB of memory .limit 1 MB"):
        load_image(encode(Image.new("RGBA", (1000, 300)), "PNG"), max_bytes=1 << 20)


_PEAK_PROBE = """
import os, resource, sys
from cnnscope.images import load_image
for path in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:  # a fresh child per image: its peak memory is its own
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        load_image(path)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_decoding_bytes_bounds_the_real_peak(tmp_path):
    """The estimate is an upper bound of the memory a decode really takes (measured)."""
    images = {
        "I;16": Image.fromarray(np.zeros((2500, 4000), np.uint16)),
        "RGBA": Image.new("RGBA", (4000, 2500)),
        "P": Image.new("P", (4000, 2500)),
        "RGB": Image.new("RGB", (4000, 2500)),
    }
    paths, estimates = [], []
    for mode, img in images.items():
        paths.append(tmp_path / f"{len(paths)}.png")
        img.save(paths[-1], transparency=0) if mode == "P" else img.save(paths[-1])
        with Image.open(paths[-1]) as opened:
            estimates.append(decoding_bytes(opened))
    out = subprocess.check_output(
        [sys.executable, "-c", _PEAK_PROBE, *map(str, paths)], timeout=300
    )
    used = [int(line) for line in out.split()]
    assert len(used) == len(images)
    for mode, u, e in zip(images, used, estimates):
        assert 0.3 * e < u <= e, (mode, u, e)


# --- the corpus: every bad file through the CLI and the HTTP API ------------------------------

CORPUS = bad_images()


def _kind(name: str) -> str:
    return name.split("-", 1)[0].split(".", 1)[0]


def test_corpus_is_varied():
    kinds = {_kind(n) for n, _ in CORPUS}
    assert {"whole", "foreign", "cut", "flip", "dims", "bomb", "polyglot", "empty"} <= kinds
    assert len({data for _, data in CORPUS}) > 400


@pytest.fixture
def one_thread():
    """Torch on one thread: on a busy machine two threads wait for each other ~20x longer."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_corpus_through_the_cli(tmp_path, capsys, one_thread):
    """`cnnscope predict FILE` on every file: exit 0 or 2, one line, never a traceback."""
    from cnnscope.cli import main

    for i, (name, data) in enumerate(CORPUS):
        path = tmp_path / f"{i:03d}-{name}"
        path.write_bytes(data)
        rc = main(["predict", str(path), "--input-size", "32", "--top", "1"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
        assert rc in (0, 2), name
        assert "Traceback" not in err, (name, err)
        if rc == 2:
            assert len(lines) == 1 and lines[0].startswith("cnnscope predict: error:"), (name, err)
        kind = _kind(name)
        assert rc == {"whole": 0, "foreign": 2}.get(kind, rc), (name, err)
        if kind == "foreign":
            assert "accepted: JPEG" in err, (name, err)


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    from fastapi.testclient import TestClient

    from cnnscope.models import load_model
    from cnnscope.server.app import create_app

    app = create_app(load_model(), data_dir=tmp_path_factory.mktemp("bad-images-data"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_corpus_through_the_upload_api(explorer):
    """`POST /api/images` of every file: 201/200 or 4xx, 415 for refused formats, never 5xx."""
    for name, data in CORPUS:
        r = explorer.post(
            "/api/images", content=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code < 500, (name, r.status_code, r.text)
        kind = _kind(name)
        if kind == "whole":
            assert r.status_code in (200, 201), (name, r.text)
        elif kind == "foreign":
            assert r.status_code == 415 and "accepted: JPEG" in r.json()["detail"], (name, r.text)
        if r.status_code in (200, 201):
            thumb = explorer.get(f"/api/images/{r.json()['id']}/thumbnail.jpg")
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8", name
        else:
            detail = r.json()["detail"]
            assert 400 <= r.status_code < 500 and detail and "\n" not in detail, (name, r.text)
