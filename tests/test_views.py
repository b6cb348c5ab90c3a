"""Layer views without a model: orderings, mosaics, volume files, plotly figures, scaling."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cnnscope.errors import CnnscopeError
from cnnscope.render import colorize
from cnnscope.views import (
    Ordering,
    gradient_volume,
    order_channels,
    read_nrrd,
    read_vox,
    render_mosaic,
    scale_volumes,
    slice_image,
    to_uint8_volume,
    volume_figure,
    volume_html,
    write_npy,
    write_nrrd,
    write_vox,
    write_vtk,
)

# ----------------------------------------------------------------------------- orderings


def _kmeans_case():
    """7 channels whose row 1 falls into three obvious groups; rows 0 and 2 are noise."""
    rng = np.random.default_rng(0)
    acts = rng.uniform(0, 10, size=(7, 3, 4))
    dark, mid, bright = [0, 0, 0, 0], [5, 5, 5, 5], [10, 10, 10, 0]
    rows = {0: mid, 1: dark, 2: bright, 3: mid, 4: dark, 5: bright, 6: mid}
    for c, row in rows.items():
        acts[c, 1] = row
    return acts


def test_kmeans_clusters_and_separators_by_hand():
    acts = _kmeans_case()
    o = order_channels(acts, "kmeans", k=3, row=1)
    # clusters from the darkest centroid (mean 0) to the brightest (mean 7.5),
    # channels in their original order inside a cluster
    assert o.permutation.tolist() == [1, 4, 0, 3, 6, 2, 5]
    assert o.separators == [2, 5]
    assert o.groups() == [[1, 4], [0, 3, 6], [2, 5]]
    assert o.labels.tolist() == [1, 0, 2, 1, 0, 2, 1]
    assert o.info["sizes"] == [2, 3, 2]
    # the middle row (1 of 3) is the default slice
    assert order_channels(acts, "kmeans", k=3).permutation.tolist() == o.permutation.tolist()


def test_slice_image_inserts_separator_rows_without_dropping_channels():
    acts = _kmeans_case()
    o = order_channels(acts, "kmeans", k=3, row=1)
    img = slice_image(acts, 1, o)
    assert img.shape == (7 + 2, 4)  # one white row per boundary, nothing replaced
    expected = [
        [0, 0, 0, 0],  # 1
        [0, 0, 0, 0],  # 4
        [1, 1, 1, 1],  # separator
        [0.5] * 4,  # 0
        [0.5] * 4,  # 3
        [0.5] * 4,  # 6
        [1, 1, 1, 1],  # separator
        [1, 1, 1, 0],  # 2
        [1, 1, 1, 0],  # 5
    ]
    np.testing.assert_allclose(img, expected)


def test_kmeans_k_larger_than_distinct_rows_and_bad_k():
    acts = np.zeros((5, 1, 3))
    acts[2, 0] = 1.0
    o = order_channels(acts, "kmeans", k=4, row=0)
    assert o.permutation.tolist() == [0, 1, 3, 4, 2] and o.separators == [4]
    with pytest.raises(CnnscopeError, match="at least 1"):
        order_channels(acts, "kmeans", k=0)
    with pytest.raises(CnnscopeError, match="row 5 is outside"):
        order_channels(acts, "kmeans", k=2, row=5)


def test_pca_slice_standardises_columns_by_hand():
    # Slice columns: t, t, 100 s and a constant. s is orthogonal to t, so after
    # standardisation the first axis is (1, 1, 0)/sqrt(2) (variance 2 of 3) and orders by t;
    # without standardisation the 100 s column would win and order by s instead.
    t = {0: 0.5, 1: -1.5, 2: 1.5, 3: -0.5}
    s = {0: -1.0, 1: 1.0, 2: 1.0, 3: -1.0}
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(4, 2, 4))
    for c in range(4):
        acts[c, 0] = [t[c], t[c], 100 * s[c], 7.0]
    o = order_channels(acts, "pca-slice", row=0)
    assert o.permutation.tolist() == [1, 3, 0, 2]
    expected_scores = np.array([t[c] for c in range(4)]) * np.sqrt(2) / np.sqrt(1.25)
    np.testing.assert_allclose(o.scores, expected_scores, atol=1e-9)
    assert o.info["explained_variance"] == pytest.approx(2 / 3)


def test_pca_maps_principal_image_by_hand():
    # maps = M + a_i A + b_i B with A, B orthogonal and zero-mean about each other's;
    # the centred first axis is A (not the big constant M); scores sort by a.
    a = np.array([3.0, -2.0, 0.0, 5.0, -4.0])
    b = np.array([0.1, -0.1, 0.1, -0.1, 0.0])
    yy, xx = np.mgrid[0:4, 0:4]
    big_a = np.where((yy + xx) % 2 == 0, 1.0, -1.0)  # checkerboard
    big_b = np.where(yy < 2, 1.0, -1.0)  # top / bottom, orthogonal to the checkerboard
    big_m = np.full((4, 4), 100.0)
    acts = big_m + a[:, None, None] * big_a + b[:, None, None] * big_b
    acts += 0.5 * a[:, None, None]  # map means grow with a: fixes the sign
    o = order_channels(acts, "pca")
    assert o.permutation.tolist() == [4, 1, 2, 0, 3]
    p = o.info["principal_image"]
    unit_a = (big_a + 0.5) / np.linalg.norm(big_a + 0.5)
    assert abs(np.sum(p * unit_a)) / np.linalg.norm(p) > 0.999
    # scores are taken on the uncentred maps
    np.testing.assert_allclose(o.scores, acts.reshape(5, -1) @ p.ravel())


def test_pca_maps_matches_the_gram_trick():
    rng = np.random.default_rng(2)
    acts = rng.gamma(2.0, size=(12, 6, 7))
    x = acts.reshape(12, -1)
    xc = x - x.mean(axis=0)
    vals, vecs = np.linalg.eigh(xc @ xc.T)  # the CNN-VIS compact PCA
    v = (xc.T @ vecs).T[::-1][0]
    v /= np.linalg.norm(v)
    p = order_channels(acts, "pca").info["principal_image"].ravel()
    assert abs(np.dot(p, v)) == pytest.approx(1.0, abs=1e-9)
    scores = x @ v
    perm = order_channels(acts, "pca").permutation
    assert perm.tolist() in (np.argsort(scores).tolist(), np.argsort(-scores).tolist())


def test_ordering_errors():
    acts = np.zeros((3, 2, 2))
    with pytest.raises(CnnscopeError, match="unknown ordering"):
        order_channels(acts, "tsne")
    with pytest.raises(CnnscopeError, match="permutation"):
        Ordering(np.array([0, 0, 1]))
    with pytest.raises(CnnscopeError, match="C x H x W"):
        order_channels(np.zeros((3, 4)), "pca")
    with pytest.raises(CnnscopeError, match="separators"):
        Ordering(np.array([0, 1]), [2])


# ----------------------------------------------------------------------------- mosaic


def test_mosaic_tiles_map_back_to_channels():
    n, h, w = 10, 3, 5
    acts = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((n, h, w), np.float32)
    order = Ordering(np.array([3, 9, 0, 1, 2, 8, 7, 6, 5, 4]), [2])
    m = render_mosaic(acts, order, "joint", cmap="gray")
    assert [t.channel for t in m.tiles] == order.permutation.tolist()
    height, width = m.image.shape[:2]
    boxes = []
    for t in m.tiles:
        assert 0 <= t.x and t.x + t.w <= width and 0 <= t.y and t.y + t.h <= height
        block = m.image[t.y : t.y + t.h, t.x : t.x + t.w]
        # each tile is filled with the colour of its own channel's value
        expected = colorize(np.array([[t.channel / (n - 1)]]), "gray")[0, 0]
        assert (block == expected).all(), t
        assert m.channel_at(t.x + t.w // 2, t.y + t.h // 2) == t.channel
        boxes.append((t.x, t.y, t.x + t.w, t.y + t.h))
    for i, (a0, b0, a1, b1) in enumerate(boxes):  # no two tiles overlap
        for c0, d0, c1, d1 in boxes[i + 1 :]:
            assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0
    assert m.channel_at(0, 0) is None  # padding
    d = m.to_dict()
    assert [t["channel"] for t in d["tiles"]] == order.permutation.tolist()


def test_mosaic_per_channel_normalisation_stretches_each_map():
    acts = np.stack([np.linspace(0, s, 16).reshape(4, 4) for s in (1.0, 10.0, 100.0)])
    joint = render_mosaic(acts, None, "joint", cmap="gray", labels=False, min_tile=4)
    per = render_mosaic(acts, None, "channel", cmap="gray", labels=False, min_tile=4)
    for t in per.tiles:
        block = per.image[t.y : t.y + t.h, t.x : t.x + t.w, 0]
        assert block.min() == 0 and block.max() == 255
    first = joint.tiles[0]
    assert joint.image[first.y : first.y + first.h, first.x : first.x + first.w, 0].max() < 5


def test_mosaic_draws_channel_numbers():
    acts = np.zeros((12, 6, 6))
    with_labels = render_mosaic(acts, cmap="gray")
    without = render_mosaic(acts, cmap="gray", labels=False)
    strip = with_labels.image[: with_labels.tiles[0].y, : with_labels.tiles[0].x + 20]
    assert (strip < 100).any()  # dark text in the label strip
    assert without.tiles[0].y < with_labels.tiles[0].y


# ----------------------------------------------------------------------------- files


def _volume():
    rng = np.random.default_rng(3)
    return rng.normal(size=(4, 3, 5)).astype(np.float32)


def test_vox_and_hd_round_trip(tmp_path):
    acts = _volume()
    perm = [2, 0, 3, 1]
    vox, hd = write_vox(tmp_path / "L1_conv.vox", acts, perm)
    assert hd.read_text() == "Size 5x3x4 unsigned byte\nSpacing 1.0x1.0x1.0\n"
    raw = vox.read_bytes()
    assert len(raw) == 4 * 3 * 5
    lo, hi = acts.min(), acts.max()
    expected = np.rint((acts[perm].astype(np.float64) - lo) / (hi - lo) * 255).astype(np.uint8)
    # x fastest, then y, then channel: voxel (z=1, y=2, x=3) is at byte 1*15 + 2*5 + 3
    assert raw[1 * 15 + 2 * 5 + 3] == expected[1, 2, 3]
    np.testing.assert_array_equal(read_vox(vox), expected)
    np.testing.assert_array_equal(to_uint8_volume(acts, perm), expected)
    assert {expected.min(), expected.max()} == {0, 255}


def test_vox_rejects_bad_files(tmp_path):
    vox, hd = write_vox(tmp_path / "a.vox", _volume())
    vox.write_bytes(vox.read_bytes()[:-1])
    with pytest.raises(CnnscopeError, match="bytes"):
        read_vox(vox)
    hd.unlink()
    with pytest.raises(CnnscopeError, match="header"):
        read_vox(vox)


def test_nrrd_header_and_data_round_trip(tmp_path):
    acts = _volume()
    path = write_nrrd(tmp_path / "v.nrrd", acts, [3, 2, 1, 0], comments=["layer x"])
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    lines = head.decode("ascii").splitlines()
    assert lines[0] == "NRRD0004"
    fields = dict(line.split(": ", 1) for line in lines[1:] if not line.startswith("#"))
    assert fields["type"] == "float" and fields["dimension"] == "3"
    assert fields["sizes"] == "5 3 4" and fields["endian"] == "little"
    assert fields["encoding"] == "raw"
    assert "# layer x" in lines
    np.testing.assert_array_equal(np.frombuffer(body, "<f4").reshape(4, 3, 5), acts[[3, 2, 1, 0]])
    back, header = read_nrrd(path)
    np.testing.assert_array_equal(back, acts[[3, 2, 1, 0]])
    assert header["sizes"] == "5 3 4"
    u8, _ = read_nrrd(write_nrrd(tmp_path / "u.nrrd", acts, dtype=np.uint8))
    np.testing.assert_array_equal(u8, to_uint8_volume(acts))


def test_read_nrrd_of_a_hand_written_big_endian_file(tmp_path):
    data = np.arange(6, dtype=">i2").reshape(2, 3)
    text = b"NRRD0004\n# hand made\ntype: short\ndimension: 2\nsizes: 3 2\nendian: big\nencoding: raw\n\n"
    (tmp_path / "h.nrrd").write_bytes(text + data.tobytes())
    back, header = read_nrrd(tmp_path / "h.nrrd")
    np.testing.assert_array_equal(back, [[0, 1, 2], [3, 4, 5]])
    assert header["type"] == "short"


def test_nrrd_opens_in_pynrrd(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    acts = _volume()
    data, header = nrrd.read(str(write_nrrd(tmp_path / "v.nrrd", acts)))
    assert data.shape == (5, 3, 4)  # pynrrd gives the fastest axis first
    np.testing.assert_array_equal(data.transpose(2, 1, 0), acts)


def test_vtk_and_npy(tmp_path):
    acts = _volume()
    raw = write_vtk(tmp_path / "v.vtk", acts, [1, 0, 2, 3], name="blocks.4").read_bytes()
    marker = b"LOOKUP_TABLE default\n"
    head, body = raw.split(marker)
    lines = head.decode("ascii").splitlines()
    assert lines[2:5] == ["BINARY", "DATASET STRUCTURED_POINTS", "DIMENSIONS 5 3 4"]
    assert "POINT_DATA 60" in lines and "SCALARS blocks_4 float 1" in lines
    np.testing.assert_array_equal(
        np.frombuffer(body[: 60 * 4], ">f4").reshape(4, 3, 5), acts[[1, 0, 2, 3]]
    )
    npy = write_npy(tmp_path / "v.npy", acts, [1, 0, 2, 3])
    np.testing.assert_array_equal(np.load(npy), acts[[1, 0, 2, 3]])


# ----------------------------------------------------------------------------- plotly


def test_volume_figure_slider_follows_the_ordering():
    acts = _volume()
    order = [2, 0, 3, 1]
    fig = volume_figure(acts, order)
    assert len(fig.frames) == 4
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["2", "0", "3", "1"]
    for k, frame in enumerate(fig.frames):
        heat = frame.data[1]
        np.testing.assert_array_equal(np.asarray(heat.z), acts[order[k]])
        assert np.all(np.asarray(frame.data[0].z) == k)  # the plane sits at z = k
    vol = fig.data[0]
    assert len(vol.value) == acts.size


def test_volume_html_is_self_contained():
    html = volume_html(_volume(), "pca", title="t")
    assert not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js is inlined, no CDN
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs()[:2000] in html
    assert "<title>t</title>" in html


# ----------------------------------------------------------------------------- scaling


def test_gradient_volume_reductions():
    g = np.arange(24.0).reshape(2, 3, 2, 2) - 10
    np.testing.assert_allclose(gradient_volume(g, "sum"), g.sum(axis=1))
    np.testing.assert_allclose(gradient_volume(g, "l2")[1, 0, 1], np.linalg.norm(g[1, :, 0, 1]))
    np.testing.assert_allclose(gradient_volume(g, "abs")[0, 1, 0], np.abs(g[0, :, 1, 0]).sum())
    assert gradient_volume(g, "none").shape == (2, 6, 2)
    with pytest.raises(CnnscopeError):
        gradient_volume(g, "max")


def test_scale_volumes_joint_binary_and_symmetric():
    v1 = np.array([[[-2.0, 0.0], [1.0, 2.0]]])
    v2 = np.array([[[0.5, 0.5], [0.5, 0.5]]])
    minmax = scale_volumes([v1, v2], "minmax")
    assert minmax[0].ravel().tolist() == [0, 128, 191, 255]  # rint(255 * (v + 2) / 4)
    assert minmax[1].ravel().tolist() == [159] * 4
    alone = scale_volumes([v1, v2], "minmax", joint=False)
    assert alone[1].ravel().tolist() == [0] * 4  # a constant volume alone is all zero
    binary = scale_volumes([v1, v2], "binary")  # CNN-VIS: rint of the 0..1 scaling
    assert binary[0].ravel().tolist() == [0, 0, 1, 1] and binary[1].ravel().tolist() == [1] * 4
    sym = scale_volumes([v1, v2], "symmetric")
    assert sym[0].ravel().tolist() == [0, 128, 191, 255]  # 127.5 + 127.5 v / 2
    assert sym[1].ravel().tolist() == [159] * 4


@pytest.mark.parametrize(
    "header, body",
    [
        (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 \xff\n\n", b"\0" * 32),  # not ASCII
        (b"NRRD0004\ntype: float\ndimension: three\nsizes: 2 2 2\n\n", b"\0" * 32),
        (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\n\n", b"\0" * 31),  # 7.75 floats
        (b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 0 2\n\n", b""),
    ],
)
def test_read_nrrd_refuses_damaged_files_in_one_line(tmp_path, header, body):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(header + body)
    with pytest.raises(CnnscopeError) as info:
        read_nrrd(path)
    assert "\n" not in str(info.value)


def test_read_vox_refuses_a_binary_header(tmp_path):
    vox, hd = write_vox(tmp_path / "a.vox", np.ones((1, 2, 3)))
    Path(hd).write_bytes(b"\xff\xfe Size 3x2x1 unsigned byte")
    assert read_vox(vox).shape == (1, 2, 3)  # the header's text is found among the bytes
    Path(hd).write_bytes(b"\xff\xfe\x00" * 10)
    with pytest.raises(CnnscopeError, match="not a .hd header"):
        read_vox(vox)
