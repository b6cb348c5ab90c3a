"""Make the pictures of docs/views.md (docs/img/views/) and print the numbers quoted there.

Run from the repository root: ``python scripts/make_views_doc.py`` (a few minutes on a
laptop CPU). Everything comes from the built-in model and gallery photos; the labelled
folder of the pruning sweep is made of flipped / cropped / recoloured gallery photos.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cnnscope.images import resolve_image
from cnnscope.models import load_model
from cnnscope.render import colorize
from cnnscope.views import (
    figure_html,
    filter_grid,
    importance_grid,
    layer_activations,
    layer_stats,
    mosaic,
    order_channels,
    plot_sweep,
    pruning_sweep,
    render_mosaic,
    save_gif,
    series_frames,
    slice_image,
    volume_html,
    weight_gradients,
    weightgrad_figure,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img" / "views"


def save(image: np.ndarray, name: str) -> None:
    img = Image.fromarray(image)
    if name.startswith("mosaic_"):  # colormapped maps: a 256-colour palette is lossless enough
        img = img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(OUT / name, optimize=True)
    print(f"wrote docs/img/views/{name} {image.shape[1]}x{image.shape[0]}")


def screenshot(html: str, name: str) -> None:
    """Render a page in headless Chromium (if installed) and save the picture."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print(f"no chromium: skipped {name}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader",
             "--enable-unsafe-swiftshader", "--window-size=1300,700", "--virtual-time-budget=20000",
             f"--screenshot={OUT / name}", page.as_uri()],
            check=False, capture_output=True, timeout=300,
        )  # fmt: skip
    print(f"wrote docs/img/views/{name}" if (OUT / name).exists() else f"no screenshot {name}")


def variants(image: Image.Image) -> list[Image.Image]:
    """Six altered copies of a photo: the toy labelled set of the pruning sweep."""
    w, h = image.size
    return [
        image,
        ImageOps.mirror(image),
        image.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
        ImageEnhance.Color(image).enhance(0.3),
        image.filter(ImageFilter.GaussianBlur(2)),
        ImageEnhance.Brightness(ImageOps.mirror(image)).enhance(1.3),
    ]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model = load_model()
    numbers: dict = {}

    # --- mosaics
    for layer in ("stem_act", "blocks.4", "head_act"):
        m = mosaic(model, "chelsea", layer)
        save(m.image, f"mosaic_{layer.replace('.', '')}.png")
    m = mosaic(model, "chelsea", "stem_act", normalize="channel")
    save(m.image, "mosaic_stemact_channel.png")
    _, acts = layer_activations(model, "chelsea", "stem_act")
    stats = layer_stats(acts)
    numbers["stem_act_dead"] = [s["channel"] for s in stats if s["max"] == 0]

    # --- orderings (stem_act, like CNN-VIS's conv1)
    km = order_channels(acts, "kmeans", k=5, row=56)
    save(render_mosaic(acts, km, "channel", layer="stem_act").image, "mosaic_stemact_kmeans.png")
    s = slice_image(acts, 56, km)
    save(
        np.repeat(np.repeat(colorize(s, "gray"), 4, axis=0), 4, axis=1), "slice_stemact_kmeans.png"
    )
    ps = order_channels(acts, "pca-slice", row=56)
    s = slice_image(acts, 56, ps)
    save(
        np.repeat(np.repeat(colorize(s, "gray"), 4, axis=0), 4, axis=1),
        "slice_stemact_pcaslice.png",
    )
    pc = order_channels(acts, "pca")
    save(render_mosaic(acts, pc, "channel", layer="stem_act").image, "mosaic_stemact_pca.png")
    p = pc.info["principal_image"]
    save(
        np.asarray(
            Image.fromarray(colorize((p - p.min()) / (p.max() - p.min()), "RdBu_r")).resize(
                (224, 224)
            )
        ),
        "principal_image_stemact.png",
    )
    numbers["kmeans"] = {"sizes": km.info["sizes"], "groups": km.groups()}
    numbers["pca_slice"] = ps.permutation.tolist()
    numbers["pca"] = {
        "permutation": pc.permutation.tolist(),
        "explained": pc.info["explained_variance"],
    }

    # --- volumes (self-contained HTML; screenshots with headless Chromium when installed)
    html = volume_html(acts, pc, title="stem_act of chelsea, stacked in PCA order")
    numbers["volume_html_bytes"] = len(html)
    screenshot(html, "volume_stemact_pca.png")
    _, b4 = layer_activations(model, "chelsea", "blocks.4.expand_act")
    screenshot(
        volume_html(b4, "kmeans", title="blocks.4.expand_act, k-means order"),
        "volume_blocks4expand.png",
    )

    # --- weight gradients: reference class (Egyptian cat, 285), right and wrong, then others
    cat = resolve_image("chelsea")[1]
    images = [
        cat,
        cat.convert("L").convert("RGB").filter(ImageFilter.GaussianBlur(6)),
        resolve_image("coffee")[1],
        resolve_image("astronaut")[1],
    ]
    names = ["chelsea", "chelsea grey + blurred", "coffee", "astronaut"]
    grads = weight_gradients(model, images, "stem", 285, names=names)
    numbers["weightgrad"] = [
        {"image": g.name, "predicted": f"{g.predicted} {model.label(g.predicted)}", "correct": g.correct,
         "logit": round(g.logit, 3), "norm": round(g.norm, 4)}
        for g in grads
    ]  # fmt: skip
    frames = series_frames(grads, model, scale="symmetric")
    save_gif(frames, OUT / "weightgrad_stem.gif")
    save(np.concatenate(frames, axis=0), "weightgrad_stem.png")
    binary = series_frames(grads[:2], model, scale="binary", joint=False)
    save(np.concatenate(binary, axis=0), "weightgrad_stem_binary.png")
    screenshot(figure_html(weightgrad_figure(grads, model)), "weightgrad_stem_3d.png")
    dw = weight_gradients(model, images[:1], "blocks.2.depthwise_conv", 285, names=names[:1])
    save(
        series_frames(dw, model, scale="symmetric", min_tile=30)[0],
        "weightgrad_blocks2_depthwise.png",
    )

    # --- first-layer filters
    save(filter_grid(model).image, "filters_stem.png")

    # --- importance and pruning sweep on a toy labelled folder
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = {}
        for name in ("chelsea", "coffee", "astronaut", "rocket", "china", "flower", "motorcycle"):
            photo = resolve_image(name)[1]
            with torch.no_grad():
                label = int(model.module(model.preprocess(photo)).argmax())
            labels[name] = label
            folder = root / str(label)
            folder.mkdir(exist_ok=True)
            for k, v in enumerate(variants(photo)):
                v.save(folder / f"{name}_{k}.png")
        numbers["pruning_labels"] = {k: f"{v} {model.label(v)}" for k, v in labels.items()}
        sweep = pruning_sweep(model, root, "stem", labels["chelsea"], progress=False)
        plot_sweep(sweep, OUT / "prune_stem_285.png")
        importance_grid(sweep.importance, OUT / "importance_stem_285.png")
        print("wrote docs/img/views/prune_stem_285.png, importance_stem_285.png")
        numbers["pruning"] = {k: v for k, v in sweep.to_dict().items() if k not in ("importance",)}
    json.dump(numbers, sys.stdout, indent=1, default=float)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
