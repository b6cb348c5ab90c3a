"""The pictures the explorer serves, as library functions (cnnscope.render.pictures).

Each is checked against an independent computation: the index's own crop for field
patches, plain numpy for the activation tint and the support box, PIL for zooms.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnscope.index.patches import crop
from cnnscope.render import colorize, png_bytes, resize_map
from cnnscope.render.pictures import (
    activation_tint,
    crop_to_support,
    field_patch,
    png_array,
    zoom_picture,
    zoom_png,
)

rng = np.random.default_rng(0)


def test_png_array_reads_back_what_png_bytes_wrote():
    a = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(png_array(png_bytes(a)), a)


def test_zoom_png_is_zoom_picture_of_the_decoded_png():
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    box = (4, 8, 20, 24)
    want = np.asarray(Image.fromarray(a[4:20, 8:24]).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(png_array(zoom_png(png_bytes(a), box)), want)
    assert np.array_equal(zoom_picture(a, box), want)
    png = png_bytes(a)
    assert zoom_png(png, None) is png


@pytest.mark.parametrize("spot", [(30, 40, 3, 2), (0, 0, 4, 4), (60, 60, 4, 4)])
def test_crop_to_support_frames_the_spot_and_keeps_the_size(spot):
    y, x, h, w = spot
    a = np.full((64, 64, 3), 128, np.uint8)
    a[y : y + h, x : x + w] = 255
    out = png_array(crop_to_support(png_bytes(a)))
    assert out.shape == a.shape
    bright = (out > 200).any(axis=2)
    assert bright.sum() > h * w * 4  # zoomed in: the spot covers more pixels
    # the box is at least 16 pixels (min_size): the spot grows by at most (64 / 16)^2
    assert bright.sum() <= h * w * 16 * 1.5


def test_crop_to_support_leaves_flat_and_busy_pictures_alone():
    flat = png_bytes(np.full((32, 32, 3), 128, np.uint8))
    assert crop_to_support(flat) == flat
    busy = png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert crop_to_support(busy) == busy


@pytest.mark.parametrize(
    "box", [(2, 3, 5, 9), (-3, -2, 4, 4), (10, 10, 40, 40), (0, 0, 0, 0), (50, 50, 60, 60)]
)
def test_field_patch_is_the_index_crop_clipped_and_scaled(box):
    view = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    h, w = view.shape[:2]
    top, left, bottom, right = box
    clipped = (max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1))
    if clipped[0] > clipped[2] or clipped[1] > clipped[3]:
        clipped = (0, 0, h - 1, w - 1)
    want = crop(view, clipped)  # the index's own cut, with the clipped box
    got = field_patch(view, box, 64)
    ph, pw = want.shape[:2]
    if 64 / max(ph, pw) >= 2:  # whole-pixel scale-up: every pixel a sharp square
        f = int(64 / max(ph, pw))
        assert np.array_equal(got, want.repeat(f, axis=0).repeat(f, axis=1))
    else:
        assert max(got.shape[:2]) == 64 and got.shape[2] == 3


def test_activation_tint_is_the_magma_blend_of_the_scaled_map():
    view = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    amap = rng.normal(size=(4, 4)).astype(np.float32)
    heat = resize_map(np.clip(amap / amap.max(), 0, 1), (16, 16))
    want = (0.35 * view + 0.65 * colorize(heat, "magma")).round().clip(0, 255).astype(np.uint8)
    assert np.array_equal(activation_tint(view, amap), want)
    dark = activation_tint(view, -np.ones((4, 4)))  # nothing fires: the map's low end
    zero = (0.35 * view + 0.65 * colorize(np.zeros((16, 16)), "magma")).round().astype(np.uint8)
    assert np.array_equal(dark, zero)


def test_matplotlib_config_goes_inside_the_given_folder(tmp_path):
    code = (
        "import os, sys; from cnnscope.render.pictures import matplotlib_writes_inside;"
        f"matplotlib_writes_inside({str(tmp_path)!r}); print(os.environ['MPLCONFIGDIR'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLCONFIGDIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path / "matplotlib"), out.stderr
    env["MPLCONFIGDIR"] = "/chosen"  # a folder the user chose is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "/chosen", out.stderr


def test_png_bytes_round_trip_through_io():
    a = np.zeros((2, 2, 3), np.uint8)
    assert Image.open(io.BytesIO(png_bytes(a))).size == (2, 2)
