"""CLI faults: unwritable outputs, `compare --out DIR`, LRP on models it cannot explain,
and `evaluate`'s sanity score and JSON.

Every fault is one line on stderr and exit status 2, found before the work starts where it
can be, and no file is left half-written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from cnnscope.attribution import attribute
from cnnscope.attribution.evaluate import conservation, randomization_check
from cnnscope.cli import main
from cnnscope.cli.common import json_safe, print_json
from cnnscope.errors import CnnscopeError
from cnnscope.images import load_gallery_image

from .bad_images import encode, sample


@pytest.fixture(autouse=True)
def one_thread():
    """Torch on one thread: on a busy machine two threads wait for each other ~20x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def blocked(tmp_path, monkeypatch):
    """A work folder holding ``blocker``, a file where outputs want a folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "labelled" / "285").mkdir(parents=True)
    return tmp_path


UNWRITABLE = [
    (["attribute", "chelsea", "--out", "blocker/maps"], "--out"),
    (["attribute", "chelsea", "--save-npy", "blocker/map.npy"], "--save-npy"),
    (["compare", "chelsea", "--methods", "gradient", "--out", "blocker/c.png"], "--out"),
    (["compare", "chelsea", "--methods", "gradient", "--out", "c.nosuchformat"], "--out"),
    (["activations", "chelsea", "--layer", "stem", "--out", "blocker/m.png"], "--out"),
    (["activations", "chelsea", "--layer", "stem", "--slice-out", "blocker/s.png"], "--slice-out"),
    (["activations", "chelsea", "--layer", "stem", "--npy", "blocker/a.npy"], "--npy"),
    (["activations", "chelsea", "--layer", "stem", "--vox", "blocker/a.vox"], "--vox"),
    (["activations", "chelsea", "--layer", "stem", "--nrrd", "blocker/a.nrrd"], "--nrrd"),
    (["activations", "chelsea", "--layer", "stem", "--vtk", "blocker/a.vtk"], "--vtk"),
    (["activations", "chelsea", "--layer", "stem", "--html", "blocker/a.html"], "--html"),
    (
        ["weightgrad", "chelsea", "--layer", "stem", "--target", "1", "--out", "blocker/w.gif"],
        "--out",
    ),
    (["weightgrad", "chelsea", "--layer", "stem", "--target", "1", "--npy", "blocker/g"], "--npy"),
    (
        ["weightgrad", "chelsea", "--layer", "stem", "--target", "1", "--html", "blocker/w.html"],
        "--html",
    ),
    (
        ["weightgrad", "chelsea", "--layer", "stem", "--target", "1", "--vox-dir", "blocker"],
        "--vox-dir",
    ),
    (
        ["prune", "labelled", "--layer", "stem", "--target", "285", "--out", "blocker/p.png"],
        "--out",
    ),
    (
        ["prune", "labelled", "--layer", "stem", "--target", "285", "--grid", "blocker/g.png"],
        "--grid",
    ),
    (["filters", "--out", "blocker/f.png"], "--out"),
    (["filters", "--out", "."], "--out"),
    (["tree", "chelsea", "--out", "blocker/t.html"], "--out"),
    (["dream", "--steps", "1", "-o", "blocker/d.png"], "--output-file"),
    (["visualize", "stem:0", "--steps", "1", "--out", "blocker"], "--out"),
    (["invert", "chelsea", "--layer", "stem", "--steps", "1", "-o", "blocker/i.png"], "--output"),
    (["classimage", "285", "--steps", "1", "-o", "blocker/c.png"], "--output"),
]


@pytest.mark.parametrize(
    "argv, option", UNWRITABLE, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_unwritable_output_is_one_line_before_the_work(blocked, capsys, argv, option):
    before = sorted(p.relative_to(blocked) for p in blocked.rglob("*"))
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, option)
    assert sorted(p.relative_to(blocked) for p in blocked.rglob("*")) == before  # nothing made


def test_failed_write_keeps_the_old_file(tmp_path, capsys):
    """Pillow opens the file, then finds it cannot write RGB as XBM: the old file stays."""
    old = tmp_path / "mosaic.xbm"
    old.write_text("the previous result")
    argv = ["activations", "chelsea", "--layer", "stem", "--out", str(old)]
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, "--out", "mosaic.xbm")
    assert old.read_text() == "the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic.xbm"]  # no temporary left


def test_full_disk_is_one_line(tmp_path, capsys):
    """Writing to /dev/full fails with ENOSPC (a device: written directly, not replaced)."""
    argv = ["weightgrad", "chelsea", "--layer", "stem", "--target", "1"]
    argv += ["--out", str(tmp_path / "w.gif"), "--html", "/dev/full"]
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, "--html", "/dev/full")


def test_pillow_warnings_do_not_add_lines(tmp_path):
    """A TIFF cut after 16 bytes makes Pillow warn (corrupt EXIF): shown only with -v."""
    path = tmp_path / "cut.tif"
    path.write_bytes(encode(sample(), "TIFF")[:16])
    for verbose in ([], ["-v"]):
        cmd = [sys.executable, "-m", "cnnscope", *verbose, "predict", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith("a damaged or truncated TIFF file")
        if verbose:
            assert "UserWarning: Corrupt EXIF data" in done.stderr, done.stderr
        else:
            assert done.stderr.count("\n") == 1, done.stderr


def test_compare_into_an_existing_folder(tmp_path, capsys):
    """`compare --out DIR` writes DIR/compare.png, not DIR.png beside the folder."""
    folder = tmp_path / "figures"
    folder.mkdir()
    rc, out, err = run(
        ["compare", "chelsea", "--methods", "gradient", "--out", str(folder)], capsys
    )
    assert rc == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]
    assert [p.name for p in folder.iterdir()] == ["compare.png"]
    assert (folder / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(folder / "compare.png") in out


# --- LRP on models it cannot (or could not) explain -----------------------------------------


class BatchStatsNet(nn.Module):
    """A BatchNorm that normalises by each batch (no running statistics): not affine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TokenNet(nn.Module):
    """Linear layers on tokens (B x T x C), as in vision transformers' MLPs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patches = nn.Conv2d(3, 8, 16, stride=16)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.mlp(tokens).mean(1))


def batch_stats_net() -> nn.Module:
    return BatchStatsNet()


def test_lrp_on_a_batch_statistics_model_is_one_line(capsys, tmp_path):
    net = BatchStatsNet().eval()
    with pytest.raises(CnnscopeError, match="'bn'.*without running statistics") as info:
        attribute(net, torch.rand(1, 3, 32, 32), "lrp", target=0)
    assert "\n" not in str(info.value)
    argv = ["attribute", "chelsea", "--method", "lrp", "--out", str(tmp_path)]
    argv += ["--model", "tests.test_cli_faults:batch_stats_net", "--input-size", "32"]
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, "without running statistics")
    assert list(tmp_path.iterdir()) == []


def test_lrp_explains_linear_layers_on_tokens():
    """This used to crash (the bias was broadcast over the tokens, not the features)."""
    attr = attribute(TokenNet().eval(), torch.rand(2, 3, 64, 64), "lrp_epsilon", target=1)
    assert max(conservation(attr)) < 1e-3
    assert torch.isfinite(torch.as_tensor(attr.array)).all()


# --- evaluate: the sanity score of a map that randomisation makes constant -------------------


def test_grad_cam_sanity_is_defined_when_the_randomised_map_is_constant(model):
    """Randomising the top of the model makes Grad-CAM's map all negative: ReLU gives zeros.

    The Spearman correlation with a constant is 0/0; it scores 0, the expected value with
    ties broken at random (the map kept none of the original's ranking).
    """
    check = randomization_check(model, load_gallery_image("chelsea"), "grad_cam", stages=2)
    assert check["constant"] == [1, 2]
    assert check["spearman"] == [0.0, 0.0] and check["final"] == 0.0


def test_evaluate_json_is_valid_json(capsys):
    argv = ["evaluate", "chelsea", "--methods", "grad_cam", "--sanity", "1", "--steps", "2"]
    rc, out, err = run([*argv, "--json"], capsys)
    assert rc == 0, err

    def no_nan(text):
        raise AssertionError(f"{text} is not JSON")

    (row,) = json.loads(out, parse_constant=no_nan)
    assert row["sanity"] == 0.0 and "constant" in row["sanity_note"]
    rc, out, err = run(argv, capsys)
    assert rc == 0 and "grad_cam sanity: the randomised model's map was constant" in out


def test_print_json_never_prints_nan(capsys):
    """NaN (e.g. LRP's conservation when the target's score is 0) becomes null with a note."""
    print_json([{"conservation": math.nan, "curve": [1.0, math.inf], "x": 2}])
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    (row,) = json.loads(text)
    assert row["conservation"] is None and row["curve"] == [1.0, None]
    assert "not a number" in row["conservation_note"]
    explained = json_safe({"sanity": math.nan, "sanity_note": "undefined: a constant map"})
    assert explained == {"sanity": None, "sanity_note": "undefined: a constant map"}
