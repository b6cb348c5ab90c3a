"""A generated corpus of bad image files, for the tests of everything that opens images.

:func:`bad_images` returns ``(name, bytes)`` pairs; the name's first word says what the
file is, and so what an image reader must do with it:

``whole-FMT``     a valid small image in an accepted format: read it
``foreign-FMT``   a valid file of a format that must not be decoded (EPS, PDF, DDS, ...),
                  or one whose first bytes say so: refuse it as an unsupported format
anything else     cut short, a decompression bomb, a polyglot, a mutated header, empty...:
                  read it or refuse it, with one clear line, never a crash

Everything is made here from a fixed seed: no file is downloaded or stored.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

#: Formats an image reader accepts (MPO: the multi-picture JPEG of cameras).
ACCEPTED = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM"})
_SUFFIX = {"JPEG": "jpg", "MPO": "jpg", "JPEG2000": "jp2", "TIFF": "tif", "WEBP": "webp"}

#: PostScript that prints the first line of a local file into the picture (Ghostscript
#: without -dSAFER would run it): the reason EPS must never be rendered.
EPS_READS_FILE = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 300 20
/Courier findfont 10 scalefont setfont
10 5 moveto (/etc/hostname) (r) file 200 string readline pop show
showpage
%%EOF
"""
EPS_LOOPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n%%EOF\n"
EPS_ERROR = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnosuchoperator\n%%EOF\n"
PS_PAGE = (
    b"%!PS-Adobe-3.0\n/Helvetica findfont 12 scalefont setfont\n72 72 moveto (hi) show\nshowpage\n"
)
PDF_PAGE = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 10 10]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def sample(mode: str = "RGB", size: tuple[int, int] = (24, 16)) -> Image.Image:
    """A small picture with structure (a gradient plus fixed noise) in ``mode``."""
    w, h = size
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(h) * 7, np.arange(w) * 5) % 256
    rgb = np.stack([ramp, ramp[::-1], rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    """``img`` written by Pillow in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def written_formats() -> dict[str, bytes]:
    """The sample written in every format Pillow can write (the first mode it takes)."""
    Image.init()
    out = {}
    for fmt in sorted(Image.SAVE):
        for mode in ("RGB", "P", "L", "1"):
            try:
                out[fmt] = encode(sample(mode), fmt)
                break
            except Exception:  # noqa: S112 - this format does not take this mode (or cannot save)
                continue
    return out


def accepted_variants() -> dict[str, bytes]:
    """Valid files of the accepted formats in the modes and options that need care."""
    a16 = (np.asarray(sample("L"), dtype=np.uint16) * 257).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [sample(), sample().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return {
        "PNG-16bit": encode(Image.fromarray(a16), "PNG"),
        "PNG-RGBA": encode(sample("RGBA"), "PNG"),
        "PNG-palette-transparent": encode(sample("P"), "PNG", transparency=3),
        "TIFF-float": encode(Image.fromarray(np.asarray(sample("L"), np.float32) / 255), "TIFF"),
        "TIFF-16bit": encode(Image.fromarray(a16), "TIFF"),
        "TIFF-CMYK": encode(sample("CMYK"), "TIFF"),
        "JPEG-CMYK": encode(sample("CMYK"), "JPEG"),
        "JPEG-progressive-rotated": encode(sample(), "JPEG", progressive=True, exif=exif),
        "GIF-animated": gif.getvalue(),
        "WEBP-lossless-alpha": encode(sample("RGBA"), "WEBP", lossless=True),
        "PGM": encode(sample("L"), "PPM"),
        "BMP-1bit": encode(sample("1"), "BMP"),
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(w: int, h: int, depth: int = 8, color: int = 0, rows: int | None = 0) -> bytes:
    """A PNG whose IHDR claims ``w`` x ``h``; its data holds ``rows`` rows of zeros (None: all)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = bytes(1 + (w * channels * depth + 7) // 8)
    packer = zlib.compressobj(9)
    count = h if rows is None else min(rows, h)
    body = b"".join(packer.compress(row) for _ in range(count)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def bomb_png_16bit(w: int = 8000, h: int = 8000) -> bytes:
    """A complete, valid 16-bit grey PNG of ``w`` x ``h`` zeros: about 120 KB for 8000 x 8000."""
    return png_with_header(w, h, depth=16, color=0, rows=None)


def _dimension_edits() -> dict[str, bytes]:
    """Headers whose width or height is 0 or about 2**31 (or 2**16 where that is the field)."""
    out = {}
    for w, h in ((0, 16), (16, 0), (2**31 - 1, 1), (1, 2**31 - 1), (2**31, 2**31)):
        out[f"PNG-{w}x{h}"] = png_with_header(w, h)
    gif = bytearray(encode(sample("P"), "GIF"))
    for w, h in ((0, 12), (65535, 65535)):
        g = bytearray(gif)
        g[6:10] = struct.pack("<HH", w, h)
        out[f"GIF-{w}x{h}"] = bytes(g)
    bmp = encode(sample(), "BMP")
    for w, h in ((0, 16), (30000, 30000), (-(2**31), 16), (16, -(2**31))):
        b = bytearray(bmp)
        b[18:26] = struct.pack("<ii", w, h)
        out[f"BMP-{w}x{h}"] = bytes(b)
    jpeg = bytearray(encode(sample(), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    for w, h in ((0, 16), (65500, 65500)):
        j = bytearray(jpeg)
        j[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
        out[f"JPEG-{w}x{h}"] = bytes(j)
    for header in (b"P6\n60000 60000\n255\n", b"P5\n0 10\n255\n", b"P5\n8000 8000\n65535\n"):
        out[f"PPM-{header.split()[1].decode()}x{header.split()[2].decode()}"] = header + bytes(64)
    tiff = io.BytesIO()
    sample().save(tiff, "TIFF")
    t = bytearray(tiff.getvalue())
    ifd = struct.unpack("<I", t[4:8])[0]
    for k in range(struct.unpack("<H", t[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", t[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            fmt = "<H" if kind == 3 else "<I"
            big = bytearray(t)
            big[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 65535)
            out[f"TIFF-tag{tag}-65535"] = bytes(big)
            zero = bytearray(t)
            zero[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 0)
            out[f"TIFF-tag{tag}-0"] = bytes(zero)
    return out


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _polyglots(png: bytes, jpeg: bytes) -> dict[str, bytes]:
    html = b"<html><body><script>alert(document.domain)</script></body></html>\n"
    return {
        "PNG+ZIP": png + _zip("x.html", html),
        "PNG+HTML": png + html,
        "HTML+PNG": html + png,
        "PNG+PS": png + PS_PAGE,
        "JPEG+PS": jpeg + EPS_READS_FILE,
        "ZIP+PNG": _zip("a.txt", b"hello") + png,
        "GIF+JS": b"GIF89a/*" + b"\x00" * 8 + b"*/=1;alert(1);//" + b"\x00" * 16,
    }


def _foreign_polyglots(jpeg: bytes, tiff: bytes) -> dict[str, bytes]:
    """Accepted images behind the first bytes of a format that must not be decoded."""
    eps_head = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 24 16\n"
    # DOS EPS: a binary header pointing at PostScript and at a TIFF preview
    ps = EPS_READS_FILE
    dos = struct.pack(
        "<4sIIIIIIH", b"\xc5\xd0\xd3\xc6", 30, len(ps), 0, 0, 30 + len(ps), len(tiff), 0xFFFF
    )
    return {
        "EPS-header-on-JPEG": eps_head + jpeg,
        "PS-header-on-JPEG": b"%!PS\n" + jpeg,
        "DOS-EPS-with-TIFF-preview": dos + ps + tiff,
    }


def _flips(data: bytes, positions: range) -> list[tuple[int, bytes]]:
    out = []
    for i in positions:
        if i < len(data):
            b = bytearray(data)
            b[i] ^= 0xFF
            out.append((i, bytes(b)))
    return out


def bad_images() -> list[tuple[str, bytes]]:
    """The corpus: ``(name, bytes)`` pairs, the same on every run (see the module docstring).

    Every format Pillow writes, whole and cut at several points; accepted formats in
    their tricky modes; decompression bombs; polyglots; the first 64 bytes of each
    accepted format flipped one at a time (every third byte); headers with sizes 0 or
    about 2**31; EPS, PostScript and PDF samples; empty and 1-byte files.
    """
    items: list[tuple[str, bytes]] = []
    written = written_formats()
    for fmt, data in written.items():
        kind = "whole" if fmt in ACCEPTED else "foreign"
        suffix = _SUFFIX.get(fmt, fmt.lower())
        items.append((f"{kind}-{fmt}.{suffix}", data))
        n = len(data)
        for cut in sorted({1, 8, 16, 33, n // 4, n // 2, 3 * n // 4, n - 1}):
            if 0 < cut < n:
                items.append((f"cut-{fmt}-{cut}.{suffix}", data[:cut]))
    for name, data in accepted_variants().items():
        items.append((f"whole-{name}.img", data))
    bases = {fmt: written[fmt] for fmt in sorted(ACCEPTED - {"MPO"})}
    for fmt, data in bases.items():
        for i, flipped in _flips(data, range(0, 64, 3)):
            items.append((f"flip-{fmt}-{i}.{_SUFFIX.get(fmt, fmt.lower())}", flipped))
    for name, data in _dimension_edits().items():
        items.append((f"dims-{name}.img", data))
    items += [
        ("bomb-PNG-100000x100000.png", png_with_header(100_000, 100_000)),
        ("bomb-PNG-16bit-8000x8000.png", bomb_png_16bit()),
        ("bomb-PNG-RGBA-12000x12000-header.png", png_with_header(12000, 12000, color=6)),
    ]
    for name, data in _polyglots(written["PNG"], written["JPEG"]).items():
        items.append((f"polyglot-{name}.png", data))
    for name, data in _foreign_polyglots(written["JPEG"], written["TIFF"]).items():
        items.append((f"foreign-{name}.jpg", data))
    items += [
        ("foreign-EPS-reads-a-file.eps", EPS_READS_FILE),
        ("foreign-EPS-loops.eps", EPS_LOOPS),
        ("foreign-EPS-error.eps", EPS_ERROR),
        ("foreign-PS-page.ps", PS_PAGE),
        ("foreign-PDF-page.pdf", PDF_PAGE),
        ("empty.png", b""),
        ("byte-89.png", b"\x89"),
        ("byte-ff.jpg", b"\xff"),
        ("byte-G.gif", b"G"),
        ("byte-percent.eps", b"%"),
        ("text.jpg", b"this is not a jpeg\n"),
    ]
    return items
