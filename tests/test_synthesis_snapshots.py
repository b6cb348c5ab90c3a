"""Per-iteration snapshots (``--output-iter N``) of visualize, invert and classimage (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnscope.cli import main as cli_main
from cnnscope.synthesis import class_image, invert, visualize_units
from cnnscope.synthesis.outputs import save_result

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; model too


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _command(kind, tmp_path):
    """(argv, {final image: its snapshot stem}) of a 4-step run with a snapshot every 2 steps."""
    run = ["--steps", "4", "--output-iter", "2", "--no-progress"]
    if kind == "visualize":
        argv = ["visualize", "blocks.3:1", "blocks.3:2", "--size", "48", "--out", str(tmp_path)]
        finals = {
            tmp_path / "blocks.3_1.png": "blocks.3_1",
            tmp_path / "blocks.3_2.png": "blocks.3_2",
        }
    elif kind == "invert":
        argv = ["invert", "coffee", "--layer", "blocks.2", "-o", str(tmp_path / "inv.png")]
        finals = {tmp_path / "inv.png": "inv"}
    else:
        argv = ["classimage", "tabby", "--size", "48", "-o", str(tmp_path / "cls.png")]
        finals = {tmp_path / "cls.png": "cls"}
    return argv + run, finals


@pytest.mark.parametrize("kind", ["visualize", "invert", "classimage"])
def test_output_iter_saves_snapshots_that_move_and_end_at_the_final_image(kind, tmp_path):
    argv, finals = _command(kind, tmp_path)
    assert cli_main(argv) == 0
    for final, stem in finals.items():
        first, last = tmp_path / f"{stem}_1_2.png", tmp_path / f"{stem}_1_4.png"
        assert first.is_file() and last.is_file() and final.with_suffix(".json").is_file()
        assert not np.array_equal(_pixels(first), _pixels(last))  # the optimisation moved
        assert np.array_equal(_pixels(last), _pixels(final))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("kind", ["visualize", "invert", "classimage"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_output_iter_exits_2_with_one_line(kind, value, tmp_path, capsys):
    argv, _ = _command(kind, tmp_path)
    argv[argv.index("--output-iter") + 1] = value
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--output-iter must be >= 1, got {value}") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_library_functions_keep_snapshots_with_output_iter(model, tmp_path):
    results = [
        visualize_units(model, ["blocks.3:1"], 4, 48, return_result=True, output_iter=2)[1],
        invert(model, "coffee", "blocks.2", 4, output_iter=2),
        class_image(model, "tabby", 4, 48, output_iter=2),
    ]
    for result in results:
        assert [(size, step) for size, step, _ in result.frames] == [(0, 2), (0, 4)]
        assert np.array_equal(result.frames[-1][2][0], result.pictures[0])
    paths = save_result(results[2], model, tmp_path / "c.png", behaviors={"save"})
    assert np.array_equal(_pixels(tmp_path / "c_1_4.png"), _pixels(paths[0]))
    assert class_image(model, "tabby", 2, 48).frames == []  # off by default
