"""cnn-vis's prior weights scaled to the model (issue 14, seed parity).

cnn-vis's numbers were set for Caffe networks that read 0..255 pixels; EfficientNet-Lite0
reads ``x / 128``, so its pixel gradient is 128x smaller and a ported command line was a
grey checkerboard. By default the p-norm, aux p-norm and TV gradients are divided by the
model's input std; ``--quirks`` (and ``--raw-priors``) keep the raw numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnscope.cli import main as cli_main
from cnnscope.synthesis import SynthesisConfig, synthesize
from cnnscope.synthesis.loop import _Run, prior_gain
from cnnscope.synthesis.params import ImageSpace
from cnnscope.synthesis.regularizers import gaussian_blur

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; model too

# cnn-vis examples/ex1.sh's own numbers (seed-features.md §3.10), on a 112x112 image.
EX1 = [
    "--learning_rate", "10", "--decay_rate", "0.25",
    "--alpha", "6", "--p_reg", "1e-10", "--beta", "2.5", "--tv_reg", "0.5",
    "--initial_size", "112x112", "--num_steps", "40",
]  # fmt: skip


def _dream(tmp_path, name, *argv):
    """Run ``cnnscope dream`` with cnn-vis's flags; the picture (float) and its record."""
    out = tmp_path / f"{name}.png"
    args = ["dream", *EX1, *argv, "--iter_behavior", "", "--no-progress", "-o", str(out)]
    assert cli_main(args) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    return np.asarray(Image.open(out), dtype=np.float64), record


def _structure(picture: np.ndarray) -> float:
    """Pixel std after a sigma-2 blur: the picture's content without the 2-px checkerboard
    that RMSProp's oscillation against a dominant TV term leaves on a grey image."""
    t = torch.from_numpy(picture).permute(2, 0, 1)[None].float()
    return float(gaussian_blur(t, 2.0).std())


def _grey_value(model, objective: str) -> float:
    """The objective on the flat mean-colour image (noise of std 0, before any step)."""
    cfg = SynthesisConfig(objective=objective, initial_size="112x112", num_steps=1, init_scale=0)
    return synthesize(model, cfg, progress=False).values[0][0]


def test_ported_cnn_vis_ex1_draws_a_picture_and_quirks_stay_grey(model, tmp_path):
    layer = ["--image_type", "amplify_layer", "--target_layer", "blocks.9.expand_act"]
    scaled, rec = _dream(tmp_path, "scaled", *layer)
    raw, rec_raw = _dream(tmp_path, "raw", *layer, "--quirks")
    assert rec["config"]["raw_priors"] is False and rec_raw["config"]["quirks"] is True
    grey = _grey_value(model, rec["objective"])
    # Measured: structure 4.7 vs 1.5; amplification 4.5e4 vs 1.6e4, grey 1.1e4.
    assert _structure(scaled) > 3.5 > 2.0 > _structure(raw), (_structure(scaled), _structure(raw))
    assert scaled.std() > 7.5
    assert (
        rec["final_objective"] > 3 * grey
        and rec["final_objective"] > 2 * rec_raw["final_objective"]
    )


def test_ported_neuron_rises_above_its_grey_value_only_with_scaled_priors(model, tmp_path):
    unit = ["--image_type", "amplify_neuron", "--target_layer", "blocks.9", "--target_neuron", "5"]
    _, rec = _dream(tmp_path, "scaled", *unit)
    _, rec_raw = _dream(tmp_path, "raw", *unit, "--quirks")
    grey = _grey_value(model, rec["objective"])
    # Measured: 339 scaled, 51 raw, 111 on grey (TV still outweighs one neuron's gradient
    # with ex1's layer-amplification numbers, as it did in cnn-vis: the picture is faint).
    assert rec["final_objective"] > 2.5 * grey > 0
    assert rec_raw["final_objective"] < grey


def _hand_priors(x, target, cfg: SynthesisConfig, sigma) -> np.ndarray:
    """p_reg dP + p_reg_aux dPaux + tv_reg dTV (naive stencil), written out with loops,
    each divided by ``sigma[c]``; plus l2_decay x (not scaled)."""
    x, t = x.numpy().astype(np.float64), target.numpy().astype(np.float64)
    out = np.zeros_like(x)
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            u = (x[b, ch] - t[b, ch]) / cfg.p_scale
            dp = cfg.alpha / cfg.p_scale * np.sign(u) * np.abs(u) ** (cfg.alpha - 1)
            v = x[b, ch] / cfg.p_scale_aux
            da = cfg.alpha_aux / cfg.p_scale_aux * np.sign(v) * np.abs(v) ** (cfg.alpha_aux - 1)
            z = x[b, ch] / cfg.tv_reg_scale
            dt = np.zeros((h, w))
            for i in range(h - 1):
                for j in range(w - 1):
                    gx, gy = z[i, j] - z[i, j + 1], z[i, j] - z[i + 1, j]
                    g2 = max(gx * gx + gy * gy, 1e-3)
                    k = cfg.beta * g2 ** (cfg.beta / 2 - 1)
                    dt[i, j] += k * (gx + gy)
                    dt[i, j + 1] -= k * gx
                    dt[i + 1, j] -= k * gy
            dt /= cfg.tv_reg_scale
            priors = cfg.p_reg * dp + cfg.p_reg_aux * da + cfg.tv_reg * dt
            out[b, ch] = priors / sigma[ch] + cfg.l2_decay * x[b, ch]
    return out


@pytest.mark.parametrize("mode", ["scaled", "quirks", "raw_priors"])
def test_prior_gradients_are_the_hand_written_formula(model, mode):
    cfg = SynthesisConfig(
        alpha=3.0, p_scale=20.0, p_reg=0.3, alpha_aux=4.0, p_scale_aux=50.0, p_reg_aux=2.0,
        beta=2.5, tv_reg=0.7, tv_reg_scale=2.0, l2_decay=0.01,
        quirks=mode == "quirks", raw_priors=mode == "raw_priors",
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64) * 30
    target = torch.randn(1, 3, 6, 7, generator=g, dtype=torch.float64).expand(2, -1, -1, -1) * 30
    run = _Run(model, cfg, None)
    stats: dict = {}
    got = run.reg_grad(x, target, cfg.tv_reg, stats).numpy()
    sigma = np.array(ImageSpace.for_model(model).std) if mode == "scaled" else np.ones(3)
    assert mode != "scaled" or np.allclose(sigma, 128.0)
    np.testing.assert_allclose(got, _hand_priors(x, target, cfg, sigma), rtol=1e-10, atol=1e-12)
    hand_tv = _hand_priors(x, target, cfg.replace(p_reg=0, p_reg_aux=0, l2_decay=0), sigma)
    assert stats["tv_grad"] == pytest.approx(np.abs(hand_tv).mean(), rel=1e-10)


def test_prior_gain_is_one_over_each_channels_std():
    space = ImageSpace((120.0, 115.0, 100.0), (60.0, 64.0, 70.0))
    gain = prior_gain(space, torch.zeros(1, 3, 1, 1))
    assert gain.flatten().tolist() == pytest.approx([1 / 60, 1 / 64, 1 / 70])


def test_scaled_run_is_the_raw_run_with_weights_times_the_std(model):
    """Dividing by 128 (a power of two) is exact: the same pixels, bit for bit."""
    base = dict(
        objective="amplify(blocks.3)", initial_size="48x48", num_steps=3, beta=2.5,
        learning_rate=4.0, p_reg_aux=1e-6, alpha_aux=4.0, tv_reg_step=0.5, tv_reg_step_iter=1,
    )  # fmt: skip
    scaled = SynthesisConfig(**base, p_reg=0.25, tv_reg=0.5)
    raw = SynthesisConfig(**base, p_reg=0.25 / 128, tv_reg=0.5 / 128, raw_priors=True)
    raw = raw.replace(p_reg_aux=1e-6 / 128, tv_reg_step=0.5 / 128)
    a, b = synthesize(model, scaled, progress=False), synthesize(model, raw, progress=False)
    assert torch.equal(a.image, b.image)


def test_records_without_the_option_keep_raw_priors_and_the_cli_flag(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"config": {"tv_reg": 0.5}, "threads": 1}))
    assert SynthesisConfig.load(old)[0].raw_priors is True  # made before the scaling
    out = tmp_path / "r.png"
    argv = ["dream", "--initial_size", "32x32", "--num_steps", "0", "--no-progress", "-o", str(out)]
    assert cli_main([*argv, "--raw_priors", "--iter-behavior", ""]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["config"]["raw_priors"] is True
    assert SynthesisConfig.load(out.with_suffix(".json"))[0].raw_priors is True
    assert cli_main([*argv, "--iter-behavior", ""]) == 0
    assert SynthesisConfig.load(out.with_suffix(".json"))[0].raw_priors is False
