"""Tests for cnnscope.images: safe decoding, mode conversion and the gallery."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnscope.errors import ImageError
from cnnscope.images import (
    gallery_images,
    iter_image_files,
    load_gallery_image,
    load_image,
    resolve_image,
)


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
