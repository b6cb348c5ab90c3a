"""Attribution speed: cnnscope against Captum, and against the floors of the hardware.

Everything runs in one process, on the built-in EfficientNet-Lite0 at 224 x 224 with one
gallery image, the same input and the same torch thread count for both libraries. Runs
are interleaved (ours, Captum, ours, ...) and the median is reported, so a busy machine
slows both sides alike.

* Single-pass methods: ratio ours / Captum (target <= 1.0).
* IG with 50 steps and SmoothGrad with 50 samples: ratio ours / Captum (target <= 0.5)
  and ours / floor (target <= 1.25), the floor being 50 forward + backward passes of the
  bare model at its best batch size, measured in the same run.
* Score-CAM on the last conv layer (1280 channels): time against its floor (1280 plain
  forwards at the best batch size) and peak memory (target < 2 GB), measured in a child
  process so that the peak belongs to Score-CAM alone.

Usage::

    python bench/attribution.py            # full run, a few minutes on 2 cores
    python bench/attribution.py --quick    # fewer repetitions
    python bench/attribution.py --write    # also write docs/benchmarks/attribution.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.relu_copies

from timing import interleaved, seconds  # noqa: E402

from cnnscope.attribution import attribute  # noqa: E402
from cnnscope.images import load_gallery_image  # noqa: E402
from cnnscope.models import load_model  # noqa: E402
from tests.relu_copies import ReluClamp6, replace_relu6  # noqa: E402

TARGET = 285  # Egyptian cat, the top-1 class of the chelsea photo


def _captum_row(name: str, label: str, t: dict[str, float]) -> dict:
    """A table row: our method's and Captum's median times ``t`` and their ratio."""
    return {
        "method": name,
        "captum": label,
        "ours_s": t["ours"],
        "captum_s": t["captum"],
        "ratio": t["ours"] / t["captum"],
    }


def fb_chunks(net, x, rows: int, b: int):
    """``rows`` forward + backward passes of the bare model in batches of ``b``."""
    xb = x.expand(b, *x.shape[1:]).contiguous()

    def run():
        done = 0
        while done < rows:
            n = min(b, rows - done)
            xx = xb[:n].clone().requires_grad_(True)
            out = net(xx)
            torch.autograd.grad(out[:, TARGET].sum(), xx)
            done += n

    return run


def f_chunks(net, x, rows: int, b: int):
    """``rows`` plain forwards (no graph) in batches of ``b``."""
    xb = x.expand(b, *x.shape[1:]).contiguous()

    def run():
        done = 0
        with torch.no_grad():
            while done < rows:
                n = min(b, rows - done)
                net(xb[:n])
                done += n

    return run


def best_batch(make, sizes, repeats: int) -> int:
    """The batch size with the smallest median time (sizes timed interleaved)."""
    t = interleaved({b: make(b) for b in sizes}, repeats)
    return min(t, key=t.get)


_SCORE_CAM_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {src!r})
torch.set_num_threads({threads})
from cnnscope.attribution import attribute
from cnnscope.engine import Engine
from cnnscope.images import load_gallery_image
from cnnscope.models import load_model

def hwm_kb():  # this process's peak resident memory (VmHWM; reset through clear_refs)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

model = load_model()
img = load_gallery_image("chelsea")
attribute(model, img, "grad_cam", layer={layer!r})  # warm: model, engine, first passes
loaded = hwm_kb()
try:
    open("/proc/self/clear_refs", "w").write("5")  # start the peak from the current RSS
except OSError:
    pass
t = time.perf_counter()
attribute(model, img, "score_cam", layer={layer!r}, batch_size={batch})
seconds = time.perf_counter() - t
peak = hwm_kb()
act = Engine.for_module(model.module).forward(model.preprocess(img), grad=False, layers=[{layer!r}])
a = act.activation({layer!r})[0].flatten(1)
used = int((a.amax(1) > a.amin(1)).sum())
print(json.dumps({{"seconds": seconds, "peak_kb": peak, "before_kb": loaded, "used": used}}))
"""


def score_cam_child(threads: int, batch: int, layer: str) -> dict:
    code = _SCORE_CAM_CHILD.format(src=str(ROOT / "src"), threads=threads, batch=batch, layer=layer)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-score-cam", action="store_true", help="skip Score-CAM (slowest)")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks/attribution.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import captum
    import captum.attr as ca

    reps = 3 if args.quick else 15
    heavy = 1 if args.quick else 5
    model = load_model()
    net = model.module
    x = model.preprocess(load_gallery_image("chelsea"))
    clamp_copy = replace_relu6(net, ReluClamp6)
    relu_copy = replace_relu6(net, nn.ReLU)
    rows = []

    def captum_call(cls, m, **kw):
        return lambda: cls(m).attribute(x.clone().requires_grad_(True), target=TARGET, **kw)

    def ours_call(method, m=model):
        return lambda: attribute(m, x, method, target=TARGET)

    single = [
        ("gradient", ours_call("gradient"), captum_call(ca.Saliency, net, abs=False), "Saliency"),
        (
            "gradient_x_input",
            ours_call("gradient_x_input"),
            captum_call(ca.InputXGradient, net),
            "InputXGradient",
        ),
        (
            "guided_backprop",
            ours_call("guided_backprop"),
            captum_call(ca.GuidedBackprop, clamp_copy),
            "GuidedBackprop (ReLU+clamp copy)",
        ),
        (
            "deconvnet (ReLU copy)",
            ours_call("deconvnet", relu_copy),
            captum_call(ca.Deconvolution, relu_copy),
            "Deconvolution (ReLU copy)",
        ),
        (
            "grad_cam",
            ours_call("grad_cam"),
            lambda: ca.LayerGradCam(net, net.head_act).attribute(x, target=TARGET),
            "LayerGradCam",
        ),
    ]
    print(
        f"torch {torch.__version__}, captum {captum.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    for name, ours, theirs, label in single:
        t = interleaved({"ours": ours, "captum": theirs}, reps)
        rows.append(_captum_row(name, label, t))
        print(
            f"{name:<24} ours {t['ours']:.3f}s  captum {t['captum']:.3f}s  ratio {rows[-1]['ratio']:.2f}",
            flush=True,
        )

    sizes = (8, 16, 25, 50)
    best_b = best_batch(lambda b: fb_chunks(net, x, 50, b), sizes, 1)
    floor_fn = fb_chunks(net, x, 50, best_b)
    print(f"floor: 50 forward+backward, best batch {best_b}", flush=True)
    sigma = 0.15 * float(x.max() - x.min())
    loops = [
        (
            "integrated_gradients (50 steps)",
            lambda: attribute(model, x, "integrated_gradients", target=TARGET, steps=50),
            lambda: ca.IntegratedGradients(net).attribute(
                x, baselines=0.0, target=TARGET, n_steps=50
            ),
            "IntegratedGradients (defaults)",
        ),
        (
            "smoothgrad (50 samples)",
            lambda: attribute(model, x, "smoothgrad", target=TARGET, samples=50),
            lambda: ca.NoiseTunnel(ca.Saliency(net)).attribute(
                x.clone().requires_grad_(True),
                target=TARGET,
                nt_type="smoothgrad",
                nt_samples=50,
                stdevs=sigma,
                abs=False,
            ),
            "NoiseTunnel(Saliency) (defaults)",
        ),
    ]
    for name, ours, theirs, label in loops:
        # two interleaved sets: Captum's single huge batch frees gigabytes that the next run
        # must fault in again, so the floor is timed against ours alone
        t = interleaved({"ours": ours, "captum": theirs}, heavy)
        f = interleaved({"ours": ours, "floor": floor_fn}, heavy)
        rows.append(
            {
                **_captum_row(name, label, t),
                "floor_s": f["floor"],
                "floor_ratio": f["ours"] / f["floor"],
                "best_batch": best_b,
            }
        )
        print(
            f"{name:<24} ours {t['ours']:.2f}s  captum {t['captum']:.2f}s  ratio {rows[-1]['ratio']:.2f}"
            f"  | ours {f['ours']:.2f}s  floor {f['floor']:.2f}s  ours/floor {rows[-1]['floor_ratio']:.2f}",
            flush=True,
        )
    t_best = interleaved(
        {
            "best": lambda: attribute(
                model, x, "integrated_gradients", target=TARGET, steps=50, batch_size=best_b
            ),
            "floor": floor_fn,
        },
        heavy,
    )
    print(
        f"integrated_gradients at the floor's batch size: {t_best['best']:.2f}s "
        f"(floor {t_best['floor']:.2f}s)",
        flush=True,
    )

    score = None
    if not args.no_score_cam:
        layer, channels = ("blocks.15", 320) if args.quick else ("head_act", 1280)
        fbest = best_batch(lambda b: f_chunks(net, x, 64, b), (16, 32, 64), 1)
        floor_run = f_chunks(net, x, channels, fbest)
        before = seconds(floor_run)
        child = score_cam_child(args.threads, fbest, layer)
        after = seconds(floor_run)
        floor_s = (before + after) / 2
        score = {
            "layer": layer,
            "channels": channels,
            "seconds": child["seconds"],
            "floor_s": floor_s,
            "best_batch": fbest,
            "peak_mb": child["peak_kb"] / 1024,
            "used": child["used"],
            "delta_mb": (child["peak_kb"] - child["before_kb"]) / 1024,
        }
        print(
            f"score_cam ({channels} channels of {layer}, {child['used']} not constant): "
            f"{child['seconds']:.1f}s, floor {floor_s:.1f}s ({channels} forwards at batch {fbest}, "
            f"timed before and after), peak RSS during it {score['peak_mb']:.0f} MB "
            f"(+{score['delta_mb']:.0f} MB over the loaded model)",
            flush=True,
        )

    if args.write:
        write_markdown(rows, score, args, t_best["best"])
    return 0


def write_markdown(rows, score, args, auto_s) -> None:
    import captum

    lines = [
        "# Attribution benchmark",
        "",
        "`python bench/attribution.py"
        + (" --quick" if args.quick else "")
        + "`: built-in EfficientNet-Lite0,"
        " 224 x 224, the `chelsea` gallery photo, target 285, cnnscope and Captum in one process with the"
        f" same input and {args.threads} torch threads (torch {torch.__version__}, captum"
        f" {captum.__version__}, {platform.machine()}). Runs interleaved, medians. The machine is shared:"
        " compare ratios, not absolute times.",
        "",
        "| method | Captum counterpart | ours (s) | Captum (s) | ours / Captum | ours / floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        fl = f"{r['floor_ratio']:.2f}" if "floor_ratio" in r else ""
        lines.append(
            f"| {r['method']} | {r['captum']} | {r['ours_s']:.3f} | {r['captum_s']:.3f} | {r['ratio']:.2f} | {fl} |"
        )
    loop = [r for r in rows if "floor_s" in r]
    if loop:
        lines += [
            "",
            f"Floor: 50 forward + backward passes of the bare model at its best batch size"
            f" ({loop[0]['best_batch']}), timed interleaved with each method. cnnscope runs with its"
            f" automatic batch size; at the floor's batch size IG (50 steps) took {auto_s:.2f} s.",
        ]
    if score:
        lines += [
            "",
            f"Score-CAM on `{score['layer']}` ({score['channels']} channels, {score['used']} of them"
            f" not constant): {score['seconds']:.1f} s against a floor of {score['floor_s']:.1f} s"
            f" ({score['channels']} plain forwards at batch {score['best_batch']}); constant maps need no"
            f" forward. Peak resident memory during Score-CAM {score['peak_mb']:.0f} MB, of which"
            f" {score['delta_mb']:.0f} MB above the warmed-up process (model loaded, one CAM run).",
        ]
    out = ROOT / "docs" / "benchmarks" / "attribution.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
