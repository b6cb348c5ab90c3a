"""Generate docs/methods.md and its pictures (docs/img/methods/): every attribution method,
every rendering, on three gallery images. Rerun it when a method changes::

    python scripts/make_methods_doc.py            # all methods
    python scripts/make_methods_doc.py grad_cam   # only some (the page lists all)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import time
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnscope.attribution import METHODS, attribute, method_names  # noqa: E402
from cnnscope.attribution.figures import STYLES  # noqa: E402
from cnnscope.attribution.lrp import COMPOSITES  # noqa: E402
from cnnscope.engine.rules import RULES_TABLE  # noqa: E402
from cnnscope.images import load_gallery_image  # noqa: E402
from cnnscope.models import load_model  # noqa: E402

IMAGES = ("chelsea", "coffee", "motorcycle")
IMG_DIR = ROOT / "docs" / "img" / "methods"
# Fewer inner samples than the defaults for the costly methods, so that the page is rebuilt
# in minutes on a laptop CPU (the figure titles show the options used).
DOC_OPTIONS = {
    "integrated_gradients": {"steps": 32},
    "guided_ig": {"steps": 32},
    "smoothgrad": {"samples": 24},
    "smoothgrad_sq": {"samples": 24},
    "vargrad": {"samples": 24},
}
# What a reader should know when looking at a method's pictures.
NOTES = {
    "deconvnet": "On a network without max pooling (EfficientNet-Lite has none) deconvnet does not"
    " depend on the image at all: its ReLU rule ignores the forward pass and there are no pooling"
    " switches, so the backward pass is a fixed linear map of the class weights (Mahendran & Vedaldi"
    " 2016). The checkerboard is that map; the three rows differ only by their class.",
    "guided_neg": "The negative counterpart of guided backprop: evidence against the class.",
    "xgrad_cam": "At `head_act`, followed by global average pooling and a linear layer, the"
    " gradient is constant over each map, so Grad-CAM, XGrad-CAM and HiRes-CAM are the same map"
    " there (and equal to the original CAM); they differ at other layers.",
    "hires_cam": "Identical to Grad-CAM at `head_act` (see XGrad-CAM); not at other layers.",
    "smoothgrad": "Its mean of signed gradients is still busy on this network; the squared variant"
    " and SmoothGrad around guided backprop (below) are cleaner.",
    "eigen_cam": "Class-agnostic: the same map whatever the target.",
    "guided_ig": "Its Riemann sum along the adaptive path is only roughly complete (features jump"
    " within the `max_dist` band), so its completeness error stays at a few percent.",
    "lrp": "The default composite (gamma on convolutions, epsilon on the classifier, z^B on the"
    " first layer) gives the clean, positive maps LRP is known for on VGG-like networks.",
    "lrp_zplus": "z+ on strided convolutions leaves a visible stride-2 grid.",
}
PIXEL_STYLES = ("colored", "grayscale", "positive", "negative", "heatmap", "overlay", "seismic")
MAP_STYLES = ("mask", "heatmap", "overlay")


def figure(rows, path: Path, title: str) -> None:
    """rows: list of (row label, [(column title, HxWx3 picture), ...])."""
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.75 * cols, 1.9 * len(rows)), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(panels):
                name, pic = panels[c]
                ax.imshow(pic)
                ax.set_title(name if r == 0 or c == 0 else "", fontsize=7)
        axes[r][0].set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    # a 256-colour palette keeps the pages light (about a quarter of the RGB size)
    Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def method_figure(model, images, name: str, **options) -> tuple[Path, float, object]:
    start = time.perf_counter()
    attr = attribute(model, [img for _, img in images], name, **options)
    seconds = time.perf_counter() - start
    styles = PIXEL_STYLES if attr.kind == "pixel" else MAP_STYLES
    if float(attr.tensor.min()) >= 0:  # non-negative maps: the negative part is empty
        styles = tuple(s for s in styles if s != "negative")
    rows = []
    for (label, _), one in zip(images, attr):
        panels = [(f"{label}\n{one.target}", one.pictures[0])]
        panels += [(s, one.render(s)) for s in styles]
        rows.append((label, panels))
    skip = ("quirks", "steps", "samples")
    tag = "_".join([name] + [f"{k}-{v}" for k, v in options.items() if k not in skip])
    tag += "_quirks" if options.get("quirks") else ""
    tag = re.sub(r"-+", "-", "".join(c if c.isalnum() or c in "._-" else "-" for c in tag))
    tag = tag.strip("-")
    path = IMG_DIR / f"{tag}.png"
    opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
    figure(rows, path, f"{name}({opts})  {seconds:.1f} s for {len(images)} images")
    return path, seconds, attr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="only these methods (default: all)")
    parser.add_argument(
        "--page-only", action="store_true", help="rewrite methods.md from the last run's figures"
    )
    parser.add_argument(
        "--variants", action="store_true", help="with METHODS: also redo the option variants"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    index = IMG_DIR / "index.json"

    def load_index():
        data = json.loads(index.read_text())
        sections = [
            (METHODS[n], IMG_DIR / f, t, e) for n, f, t, e in data["sections"] if n in METHODS
        ]
        variants = [
            (title, [(n, o, IMG_DIR / f, t) for n, o, f, t in done])
            for title, done in data["variants"]
        ]
        return sections, variants

    if args.page_only:
        write_page(*load_index())
        return 0
    model = load_model()
    images = [(n, load_gallery_image(n)) for n in IMAGES]
    names = args.methods or method_names()
    sections = []
    for name in names:
        spec = METHODS[name]
        path, seconds, attr = method_figure(model, images, name, **DOC_OPTIONS.get(name, {}))
        extra = []
        if "completeness" in attr.meta:
            extra.append(
                "completeness error "
                + ", ".join(f"{float(v):.1%}" for v in attr.meta["completeness"])
            )
        if "conservation" in attr.meta:
            extra.append(
                "relevance reaching the pixels "
                + ", ".join(f"{float(v):.0%}" for v in attr.meta["input_share"])
                + " of the logit (the rest is absorbed by biases; conservation error "
                + ", ".join(f"{abs(float(v) - 1):.1e}" for v in attr.meta["conservation"])
                + ")"
            )
        sections.append((spec, path, seconds, extra))
        print(f"{name}: {seconds:.1f}s -> {path.relative_to(ROOT)}", flush=True)
    variants = [
        (
            "pytorch-cnn-visualizations' quirks (`quirks=True`)",
            [
                ("grad_cam", {"quirks": True}),
                ("smoothgrad", {"quirks": True, "samples": 16}),
                ("integrated_gradients", {"quirks": True, "steps": 25}),
            ],
        ),
        (
            "Options",
            [
                ("integrated_gradients", {"baseline": "blur", "steps": 16}),
                ("smoothgrad", {"base": "guided_backprop", "samples": 16}),
                (
                    "layer_cam",
                    {"layer": "blocks.5.depthwise_act,blocks.10.depthwise_act,head_act"},
                ),
                ("grad_cam", {"layer": "blocks.10"}),
                ("lrp", {"layer": "blocks.0"}),
                ("lrp", {"composite": "depth"}),
                ("lrp", {"canonize": False}),
            ],
        ),
    ]
    variant_sections = []
    if args.methods and index.is_file():
        # update these methods' figures and entries, keep the rest of the last full run
        old_sections, variant_sections = load_index()
        fresh = {spec.name: (spec, p, t, e) for spec, p, t, e in sections}
        sections = [fresh.pop(spec.name, (spec, p, t, e)) for spec, p, t, e in old_sections]
        sections += list(fresh.values())
    if not args.methods or args.variants:
        variant_sections = []
        for title, items in variants:
            done = []
            for name, opts in items:
                opts = dict(opts)
                if "layer" in opts and "," in str(opts["layer"]):
                    opts["layer"] = opts["layer"].split(",")
                path, seconds, _ = method_figure(model, images, name, **opts)
                done.append((name, opts, path, seconds))
                print(f"{name} {opts}: {seconds:.1f}s", flush=True)
            variant_sections.append((title, done))
    if not args.methods or index.is_file():
        data = {
            "sections": [(spec.name, p.name, t, e) for spec, p, t, e in sections],
            "variants": [
                (title, [(n, o, p.name, t) for n, o, p, t in done])
                for title, done in variant_sections
            ],
        }
        index.write_text(json.dumps(data, indent=1))
        write_page(sections, variant_sections)
    return 0


def write_page(sections, variant_sections) -> None:
    lines = [
        "# Attribution methods",
        "",
        "Generated by `python scripts/make_methods_doc.py` on the built-in EfficientNet-Lite0 and three"
        " gallery photos (rerun it when a method changes). Each row is one image, explained for its"
        " top-1 class; the columns are the renderings of `Attribution.render(style)`. Times are for the"
        " three images in one batch on a shared, busy 2-core CPU. IG, Guided IG and the noise tunnels"
        " use fewer steps / samples here than their defaults (see each figure's title).",
        "",
        "```python",
        "from cnnscope import load_model",
        "from cnnscope.attribution import attribute",
        "from cnnscope.images import load_gallery_image",
        "attr = attribute(load_model(), load_gallery_image('chelsea'), 'grad_cam')",
        "attr.array            # raw 224 x 224 map (3 x 224 x 224 for pixel methods)",
        "attr.save('cam.png', style='overlay')",
        "```",
        "",
        "Command line: `cnnscope attribute chelsea --method grad_cam --style overlay`,"
        " `cnnscope compare chelsea --methods gradient,grad_cam,lrp --out fig.png`,"
        " `cnnscope evaluate chelsea --methods gradient,integrated_gradients,lrp --sanity 3`.",
        "",
        "## Renderings",
        "",
        "| style | what it shows |",
        "|---|---|",
        "| colored | the signed map min-max scaled over all channels, as RGB (pytorch-cnn-visualizations' `_color`),"
        " after clipping at the 1st and 99th percentiles |",
        "| grayscale | sum over channels of absolute values, from its minimum to its 99th percentile |",
        "| positive / negative | `max(a, 0) / max(a)` and `max(-a, 0) / -min(a)`, the max taken at the"
        " 99th percentile |",
        "| mask | the map in [0, 1] (CAMs: min-max; pixel maps: the grayscale reduction) |",
        "| heatmap | the mask through a colormap (`jet` by default, `--cmap`) |",
        "| overlay | the heatmap on the picture the model saw (`--alpha`, default 0.5) |",
        "| seismic | the channel sum on a symmetric scale: red positive, blue negative, white zero |",
        "",
        f"All styles: {', '.join(STYLES)}. `percentile=100` gives pytorch-cnn-visualizations' plain min-max pictures"
        " (one extreme gradient pixel then leaves the rest grey or black). Styles that are empty by"
        " construction (the negative part of a non-negative map) are left out of the figures.",
        "",
        "## Methods",
        "",
        "| method | family | output | default style | what it is | reference |",
        "|---|---|---|---|---|---|",
    ]
    for spec, _, _, _ in sections:
        lines.append(
            f"| [`{spec.name}`](#{spec.name}) | {spec.family} | {spec.output} | {spec.style} |"
            f" {spec.summary} | {spec.reference} |"
        )
    lines += [
        "",
        "Targets: `target=None` (top-1), a class index or name (`'tabby'`), a unit `'LAYER:CHANNEL'`"
        " (the sum of that channel's map) or a neuron `'LAYER:CHANNEL@Y,X'`. CAMs default to the last"
        " structural cut with a map larger than 1 x 1: the full final feature map, never one branch"
        " of it (`cnnscope.engine.structure`; `head_act` here).",
        "",
        f"LRP composites: {', '.join(f'`{c}`' for c in COMPOSITES)}"
        "; rules `epsilon[:E]`, `zero`, `gamma[:G]`, `alpha_beta[:A,B]`, `zplus`, `box`, `flat`, `wsquare`, `pass` (`box`, `flat`, `wsquare`: first layer only), assigned by layer type, depth, first layer and name pattern (`rules={'classifier': 'epsilon:0.1'}`). Canonizers rewrite a private copy: fused BatchNorm + activation modules (timm's `BatchNormAct2d`) are split, BatchNorms are folded into the convolution that feeds them (found on the autograd graph), a BatchNorm with nothing to fold into (DenseNet's, on a concatenation) takes the epsilon rule as an affine layer, and sigmoid-like modules whose output only multiplies (squeeze-excitation gates) are constants: in `x * g(x)` relevance flows through `x` only. LayerNorm holds its standard deviation constant (the LN-rule of Ali et al. 2022), channels-last or channels-first. epsilon and gamma keep the bias in their denominators; z+, alpha-beta, flat and w^2 leave it out, as the formulas of Montavon et al. 2019 do (zennit adds the positive bias to z+ and alpha-beta, and the squared bias to w^2). On EfficientNet-Lite0 most of the logit comes from bias terms (folded BatchNorm shifts keep many units on when their inputs are zero): LRP conserves relevance layer by layer, but only a small share reaches the pixels; `meta['input_share']` and `meta['absorbed']` say how much. `meta['conservation']` is `(sum R + absorbed) / f(x)`; when it is off by more than 5% (an operation without a rule: a functional gate `x * s.sigmoid()`, `F.layer_norm`), a warning gives the figure.",
        "",
        "Conservation on small look-alikes of real architectures (random weights, `tests/lookalike_models.py`, 2 images, target 1; min..max of `meta['conservation']`), before and after the canonizers and rules of issue 15:",
        "",
        "| look-alike | lrp_epsilon | lrp | lrp_zplus | lrp_alpha_beta | BNs folded |",
        "| --- | --- | --- | --- | --- | --- |",
        "| VGG, ResNet, torchvision DenseNet / Inception | 1.000 / 1.000 | 1.000 / 1.000 | 1.000 / 1.000 | 1.000 / 1.000 | all / all |",
        "| fused BatchNormAct2d (timm) | 1.044 / 1.000 | 1.056 / 1.000 | 1.044..1.046 / 1.000 | 1.041..1.050 / 1.000 | 0 / 2 of 2 |",
        "| DenseNet, timm (fused BN on concat) | 0.995 / 1.000 | 0.970 / 1.000 | 1.064..1.082 / 1.000 | 1.062..1.096 / 1.000 | 0 / 4 of 9 (5 have no conv before them: on concatenations, after pooling) |",
        "| Inception, timm (fused BN in branches) | 0.943..0.945 / 1.000 | 0.851..0.856 / 1.000 | -5.66..-5.61 / 1.000 | -22.2..-20.9 / 1.000 | 0 / 7 of 7 |",
        "| EfficientNet block (SiLU, SE gate) | 1.000 / 1.000 | 1.000 / 1.000 | 0.976..0.977 / 1.000 | 0.957..0.963 / 1.000 | 5 / 5 |",
        "| MobileNetV3 block (hardswish, hard-sigmoid SE) | 1.000 / 1.000 | 1.000 / 1.000 | 1.001 / 1.000 | 1.000 / 1.000 | 5 / 5 |",
        "| ConvNeXt (LayerNorm2d, channels-last LayerNorm + Linear, GELU) | 1.14..1.31 / 1.000 | 1.36..1.99 / 1.000 | 1.34..1.97 / 1.000 | 1.34..1.98 / 1.000 | - |",
        "",
        "After: every figure within 1e-4 of 1 (the tests require 1e-3). A fused-BN net and its unfused twin give maps with r = 0.84 before, r > 0.99999 after. zennit (0.5.1) could not be compared: it imports torchvision at import time, which cannot be installed here.",
        "",
        "Every entry point on each look-alike (with a TorchScript and a bare-module row), agreement with Captum per architecture, conservation per architecture and composite, and time against one forward + backward: [architectures](architectures.md) (`python bench/architectures.py`).",
        "",
        "With `quirks=True` pytorch-cnn-visualizations' SmoothGrad uses a noise std of `(4 / (max - min))**2`, which is 4"
        " on this model's inputs in [-1, 1]: its pictures below are noise, as that formula gives here.",
        "",
    ]
    for spec, path, _seconds, extra in sections:
        opts = ", ".join(f"`{k}={v!r}`" for k, v in spec.options.items()) or "none"
        lines += [
            f"### {spec.name}",
            "",
            f"{spec.summary[0].upper() + spec.summary[1:]}. {spec.reference}. Options: {opts}."
            + (f" {'; '.join(extra)}." if extra else "")
            + (f" {NOTES[spec.name]}" if spec.name in NOTES else ""),
            "",
            f"![{spec.name}](img/methods/{path.name})",
            "",
        ]
    for title, done in variant_sections:
        lines += [f"## {title}", ""]
        for name, opts, path, _ in done:
            o = ", ".join(f"{k}={v!r}" for k, v in opts.items())
            lines += [f"`{name}({o})`", "", f"![{name} {o}](img/methods/{path.name})", ""]
    lines += [*RULES_TABLE.splitlines(), ""]
    (ROOT / "docs" / "methods.md").write_text("\n".join(lines))
    print("wrote docs/methods.md")


if __name__ == "__main__":
    sys.exit(main())
