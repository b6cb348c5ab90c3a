"""Render every picture of docs/synthesis.md and write the page.

Renders the quick version of every preset, unit visualizations for a spread of layers
(one batch), a class image, inversions at two depths and a DeepDream of a gallery photo,
into docs/img/synthesis/ (each PNG with its JSON record beside it), then writes
docs/synthesis.md. Run from the repository root:

    python scripts/make_synthesis_doc.py [--only presets,units,class,invert,dream] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cnnscope.models import load_model
from cnnscope.render import grid
from cnnscope.synthesis import (
    PRESETS,
    SynthesisConfig,
    class_image,
    deepdream,
    invert,
    save_result,
    synthesize,
    visualize_units,
)
from cnnscope.synthesis import cli as synthesis_cli
from cnnscope.synthesis.objectives import KINDS
from cnnscope.synthesis.outputs import write_png

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img" / "synthesis"
DOC = ROOT / "docs" / "synthesis.md"

#: A spread of layers from the stem to the head, two channels each.
UNITS = [
    "stem_act:5", "blocks.1:3", "blocks.1:20", "blocks.3:8",
    "blocks.3:30", "blocks.5:60", "blocks.8:20", "blocks.8:90",
    "blocks.11:40", "blocks.11:150", "blocks.14:100", "head_act:100",
]  # fmt: skip
UNIT_STEPS, UNIT_SIZE = 144, 128
CLASS, CLASS_STEPS = "flamingo", 200
INVERT_IMAGE, INVERT_LAYERS, INVERT_STEPS = "coffee", ["blocks.4", "blocks.10"], 200
DREAM_IMAGE, DREAM_LAYER, DREAM_STEPS = "chelsea", "blocks.10", 10

#: The :class:`SynthesisConfig` fields that have a row of their own in the cnn-vis options
#: table; every other field is listed in its last row ("new"), read from the schema.
TABLE_FIELDS = {
    "objective", "initial_image", "init_scale", "init_blur", "initial_size", "final_size",
    "num_sizes", "resize_type", "batch_size", "use_pixel_learning_rates", "learning_rate",
    "decay_rate", "learning_rate_decay_iter", "learning_rate_decay_fraction", "num_steps",
    "alpha", "p_scale", "p_reg", "alpha_aux", "p_scale_aux", "p_reg_aux", "beta", "tv_reg",
    "tv_reg_scale", "tv_reg_step", "tv_reg_step_iter", "tv_grad_operator", "raw_priors",
    "output_iter", "rescale_image",
}  # fmt: skip
#: ``cnnscope dream``'s options that are not config fields and not in cnn-vis.
NEW_CLI_OPTIONS = ("--preset", "--quick", "--config", "--gif")


def _rel(p: Path) -> str:
    return p.relative_to(DOC.parent).as_posix()


def render_presets(model, log: dict) -> None:
    for name, preset in PRESETS.items():
        t = time.perf_counter()
        cfg = preset.config(quick=True, output_iter=0)
        result = synthesize(model, cfg, progress=True)
        save_result(result, model, IMG / f"preset_{name}.png")
        log["presets"][name] = dict(
            seconds=round(time.perf_counter() - t, 1),
            size="x".join(map(str, result.sizes[-1])),
            sizes=len(result.sizes),
            steps=cfg.num_steps,
        )
        print(f"preset {name}: {log['presets'][name]}", flush=True)


def render_units(model, log: dict) -> None:
    t = time.perf_counter()
    pictures, result = visualize_units(
        model, UNITS, steps=UNIT_STEPS, size=UNIT_SIZE, seed=0, progress=True, return_result=True
    )
    save_result(result, model, IMG / "unit.png", names=UNITS)
    write_png(grid(pictures, cols=4), IMG / "units_grid.png")
    log["units"] = dict(seconds=round(time.perf_counter() - t, 1), count=len(UNITS))
    print(f"units: {log['units']}", flush=True)


def render_class(model, log: dict) -> None:
    t = time.perf_counter()
    result = class_image(model, CLASS, steps=CLASS_STEPS, progress=True)
    save_result(result, model, IMG / "class_flamingo.png")
    probs = _top(model, result.image)
    log["class"] = dict(seconds=round(time.perf_counter() - t, 1), top=probs)
    print(f"class: {log['class']}", flush=True)


def _top(model, image) -> list:
    from cnnscope.synthesis.params import ImageSpace

    x = ImageSpace.for_model(model).to_input(image.to(next(model.module.parameters()).device))
    with torch.no_grad():
        p = torch.softmax(model.module(x), -1)[0]
    v, i = p.topk(3)
    return [(model.label(int(k)), round(float(s), 3)) for s, k in zip(v, i)]


def render_invert(model, log: dict) -> None:
    from PIL import Image

    t = time.perf_counter()
    h, w = model.preprocess_config.input_size
    from cnnscope.images import load_gallery_image

    original = np.asarray(
        load_gallery_image(INVERT_IMAGE).resize((w, h), Image.Resampling.BILINEAR)
    )
    write_png(original, IMG / f"invert_{INVERT_IMAGE}_original.png")
    for layer in INVERT_LAYERS:
        result = invert(model, INVERT_IMAGE, layer, steps=INVERT_STEPS, progress=True)
        save_result(result, model, IMG / f"invert_{INVERT_IMAGE}_{layer}.png")
    log["invert"] = dict(seconds=round(time.perf_counter() - t, 1))
    print(f"invert: {log['invert']}", flush=True)


def render_dream(model, log: dict) -> None:
    t = time.perf_counter()
    result = deepdream(model, DREAM_IMAGE, DREAM_LAYER, octaves=4, steps=DREAM_STEPS, progress=True)
    save_result(result, model, IMG / f"dream_{DREAM_IMAGE}.png")
    log["dream"] = dict(seconds=round(time.perf_counter() - t, 1), sizes=result.sizes)
    print(f"dream: {log['dream']}", flush=True)


STEPS = {
    "presets": render_presets,
    "units": render_units,
    "class": render_class,
    "invert": render_invert,
    "dream": render_dream,
}


def saved_log() -> dict:
    """The timings of the last render (docs/img/synthesis/timings.json), which the page shows."""
    log_path = IMG / "timings.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log.setdefault("presets", {})
    return log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(STEPS), help="comma-separated parts to render")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-render", action="store_true", help="only rewrite the page")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    IMG.mkdir(parents=True, exist_ok=True)
    log_path = IMG / "timings.json"
    log = saved_log()
    if not args.no_render:
        model = load_model()
        model.module.to(args.device)
        start = time.perf_counter()
        for part in args.only.split(","):
            if part not in STEPS:
                ap.error(f"unknown part {part!r}: choose from {', '.join(STEPS)}")
            STEPS[part](model, log)
        log["last_run_seconds"] = round(time.perf_counter() - start, 1)
        log["threads"] = torch.get_num_threads()
        log_path.write_text(json.dumps(log, indent=2) + "\n")
    DOC.write_text(page(log), "utf-8")
    print(f"wrote {DOC}")
    return 0


def _img(name: str, width: int | None = None) -> str:
    path = IMG / name
    if not path.exists():
        return f"*(missing: {name}; run the script)*"
    style = f' width="{width}"' if width else ""
    return f'<img src="{_rel(path)}"{style}>'


def _preset_rows(log: dict) -> str:
    rows = ["| preset | cnn-vis example (GoogLeNet) | this preset | picture |", "|---|---|---|---|"]
    for name, p in PRESETS.items():
        t = log.get("presets", {}).get(name, {})
        cfg = p.config(quick=True)
        where = f"`{cfg.objective}`"
        if cfg.initial_image:
            where += f" on `{cfg.initial_image}`"
        timing = (
            f"<br>quick: {t.get('sizes', '?')} sizes up to {t.get('size', '?')}, {t.get('steps', '?')} steps/size, {t.get('seconds', '?')} s"
            if t
            else ""
        )
        rows.append(
            f"| `{name}` | ex{p.example}: {p.original} | {p.title}: {where}{timing} | {_img(f'preset_{name}.png', 360)} |"
        )
    return "\n".join(rows)


def _unit_table() -> str:
    cells = []
    for u in UNITS:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in u)
        cells.append(f"{_img(f'unit_{safe}.png', 128)}<br>`{u}`")
    rows = ["| | | | |", "|---|---|---|---|"]
    for i in range(0, len(cells), 4):
        rows.append("| " + " | ".join(cells[i : i + 4]) + " |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """reST-ish docstring text as one Markdown table cell."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split()))
    return text.replace("``", "`").replace("|", "\\|")


def _objective_rows() -> str:
    """One row per objective class (in :data:`KINDS`' order): examples, call words, docstring."""
    classes = [c for c in dict.fromkeys(KINDS.values()) if c.__module__.startswith("cnnscope.")]
    rows = ["| text forms | call words | class | meaning |", "|---|---|---|---|"]
    for cls in classes:
        doc = inspect.getdoc(cls) or ""
        text = re.split(r"\n\s*(?:Examples|Parameters|Attributes|Notes)\n-+", doc)[0]
        rows.append(
            f"| {', '.join(f'`{_cell(t)}`' for t in cls.examples)} "
            f"| {', '.join(f'`{k}`' for k in cls.kinds)} | `{cls.__name__}` | {_cell(text)} |"
        )
    return "\n".join(rows)


def _new_options() -> str:
    """The flags of the config fields that cnn-vis did not have, then the new CLI options."""
    fields = {f.name: f for f in dataclasses.fields(SynthesisConfig)}
    if missing := TABLE_FIELDS - fields.keys():
        raise SystemExit(f"TABLE_FIELDS names fields SynthesisConfig lacks: {sorted(missing)}")
    flags = [
        synthesis_cli.config_flags(f)[0] for f in fields.values() if f.name not in TABLE_FIELDS
    ]
    return ", ".join(f"`{f}`" for f in [*flags, *NEW_CLI_OPTIONS])


def _check_options_table(text: str) -> None:
    """Every option that the cnn-vis table gives as ``cnnscope dream``'s is one of its flags."""
    sub = argparse.ArgumentParser().add_subparsers()
    synthesis_cli.register(sub)
    known = set(sub.choices["dream"]._option_string_actions)
    section = text.split("## cnn-vis options in `cnnscope dream`")[1].split("### ")[0]
    unknown = []
    for row in section.splitlines():
        cells = row.split(" | ")
        if not row.startswith("| ") or len(cells) < 3 or set(cells[1]) <= set("-|"):
            continue
        ours = cells[1] + (cells[0] if cells[1].startswith(("same", "all")) else "")
        unknown += [f for f in re.findall(r"--[a-z0-9_-]*[a-z0-9]", ours) if f not in known]
    if unknown:
        raise SystemExit(f"the cnn-vis table names options dream lacks: {unknown}")


def page(log: dict) -> str:
    """The Markdown of docs/synthesis.md."""
    text = _page(log)
    _check_options_table(text)
    return text


def _page(log: dict) -> str:
    timing = log.get("last_run_seconds")
    cls = log.get("class", {}).get("top")
    cls_text = ", ".join(f"{n} {p:.1%}" for n, p in cls) if cls else "?"
    return f"""# Feature synthesis

Images that show what a unit, a layer or a class wants to see, made by gradient ascent on
the image through the engine: activation maximization (units, channels, class logits,
directions, with diversity), layer amplification and DeepDream with octaves and tiling
(all of cnn-vis), class images with blur/decay/clipping and inversion of representations
(pytorch-cnn-visualizations), with Lucid's Fourier parameterization, decorrelated colour and
random transforms. It works on any PyTorch CNN that `cnnscope` loads.

*This page is generated by `python scripts/make_synthesis_doc.py`; every picture has a JSON
record beside it in `docs/img/synthesis/` that reproduces it exactly
(`cnnscope dream --config FILE.json -o copy.png` on the same device; it takes the thread count
from the record).*

## Commands

```bash
cnnscope visualize blocks.5:3 blocks.8:20 head_act:900 --steps 128 --size 128 --out vis/   # one batch
cnnscope dream --preset ex12                     # a cnn-vis gallery recipe (full size: slow on CPU)
cnnscope dream --preset ex2 --quick -o dream.png # the smaller version shown below
cnnscope dream --objective "deepdream(blocks.10)" --initial-image chelsea --initial-size x0.364431 \\
    --final-size x1 --num-sizes 4 --num-steps 10 --keep-detail --lr 1.5 --decay-rate 0.9 --p-reg 0 \\
    --tv-reg 0 --jitter 16 --grad-blur 1 --use-pixel-learning-rates --batch-size 8 -o cat.png
    # = deepdream(model, "chelsea", "blocks.10"): the same picture, bit for bit
cnnscope dream --objective "blocks.9:5 - 0.5*deepdream(blocks.10)" --param fft --optimizer adam \\
    --lr 0.05 --p-reg 0 --tv-reg 0 --num-steps 256 --no-tile -o mix.png
cnnscope invert coffee --layer blocks.4 -o inv.png
cnnscope classimage flamingo -o flamingo.png
```

Every run writes the picture, `NAME.json` beside it (all options, seed, objective, model,
device, torch version, timing), and with `--iter-behavior save+gif` the frames every
`--output-iter` steps (`NAME_SIZE_STEP.png`, as cnn-vis names them) and `NAME.gif`. `print`
prints the statistics cnn-vis printed (p-norm and TV losses, mean magnitudes of every
gradient term, step size relative to the image, objective, image mean and std); tqdm shows
progress.

`visualize`, `invert` and `classimage` take the same `--output-iter N` (N >= 1; off by
default): a snapshot every N steps, named as dream's `save` names them (`inv_1_50.png`,
`inv_1_100.png`, ... for `-o inv.png`; `LAYER_C_1_STEP.png` per unit for `visualize`).
The last snapshot of a run is its final image. Every file is written whole or not at all.

```bash
cnnscope invert coffee --layer blocks.4 --steps 200 --output-iter 50 -o inv.png
```

## Python API

```python
from cnnscope.models import load_model
from cnnscope.synthesis import (visualize_units, unit_visualization, class_image, invert,
                                deepdream, synthesize, SynthesisConfig, preset_config,
                                parse_objective, Channel, DeepDream)

model = load_model()
images = visualize_units(model, ["blocks.5:3", "blocks.8:20@7,7"], steps=128, size=128, seed=0)
path = unit_visualization(model, "blocks.8:20", cache_dir)        # cached PNG, for background jobs
result = class_image(model, "flamingo")                           # SynthesisResult
result = invert(model, "coffee", "blocks.4")
result = deepdream(model, "chelsea", "blocks.8", octaves=4, steps=10)
result = synthesize(model, SynthesisConfig(objective="amplify(blocks.9)", num_steps=100))
objective = Channel("blocks.9", 5) - 0.5 * DeepDream("blocks.10")  # objectives compose
result = synthesize(model, SynthesisConfig(num_steps=64), objective=objective)
```

`visualize_units` returns one `H x W x 3` uint8 array per unit, rendered as one batch.
`visualize_units(..., return_result=True, output_iter=N)`, `class_image(..., output_iter=N)` and
`invert(..., output_iter=N)` keep a snapshot every N steps in `result.frames`;
`save_result(result, model, "out.png", behaviors={{"save"}})` (in `cnnscope.synthesis.outputs`)
writes them as `out_SIZE_STEP.png`, as `dream` does.
`unit_visualization(model, unit, cache_dir, steps=48, size=128, seed=0, progress=None)`
returns the path of a cached PNG (the file name hashes the model, the unit and the
settings; written atomically; `progress(done, total)` is called after each step). A unit
with a position (a tree node, `LAYER:C@Y,X`) is drawn as its channel's neuron at the centre of
the synthesis grid: a convolution's neurons share weights, so every position wants the same
picture, and one cached file serves them all.
A unit of an activation layer (ReLU, ReLU6) is optimised at the activation's input, as Lucid
does with its "pre_relu" layers (`driven_unit`): a unit that is off for the starting noise has a
zero gradient after the activation, and its picture would stay grey.

## Objectives

Each objective maps the recorded activations to one value per image; the loop maximizes
their sum. Its gradient at the activations (the *seed*) goes to the engine, which
backpropagates it to the input (`Forward.grad_many`, rule `gradient`); autograd then
carries it through the input normalisation, the transforms and the parameterization.

The objectives, one row per class of `cnnscope.synthesis.objectives` (read from the
classes: their `examples`, `kinds` and docstrings):

{_objective_rows()}

and the algebra that combines them (`cnnscope.synthesis.expression`):

| text form | meaning |
|---|---|
| `a + b`, `a - b`, `2*a`, `a/2`, `-a`, `a * b`, `( )` | sums, differences, scaling, product of values |
| `a \\| b \\| c` | a batch: image *i* maximizes term *i* (what `visualize` does) |

### Adding an objective

An objective is one class in `src/cnnscope/synthesis/objectives.py`, a subclass of
`Objective` (or of `LayerObjective` when it reads one layer, `self.layer`). Set `kinds`
(its call words: `kinds = ("peak",)` reads `peak(...)`; defining the class registers them),
`examples` (canonical text forms), `__call__` (`{{layer: N x ...}}` to `N` values) and, unless
it takes nothing but a layer, `from_args` (the text inside the parentheses; the helpers
`layer_args`, `unit_args`, `keyword_args` read the usual forms), `bind` (canonical layer names,
checked channels) and `spec` (the text form). A numpy-style docstring with an example
describes it; its first paragraphs become its row in the table above when this page is
regenerated. `test_every_objective_kind_reads_back_its_own_text` (`tests/test_synthesis.py`)
checks that every example reads back to itself (`str(parse_objective(text)) == text`, of the
class), and `test_synthesis_doc_is_up_to_date` that this page lists the class.

## Parameterizations, transforms, optimizers, priors

The image lives in *working units*: pixel values on the 0..255 scale minus the model's mean
colour (0 is the mean colour, as in cnn-vis); the model input is that divided by the
model's std. All priors and learning rates are in these units (the weights of cnn-vis's
p-norm, aux p-norm and TV are in cnn-vis's units: see "Units of the prior weights").

- **pixel**: the image itself. **fft** (Lucid): a real 2-D spectrum per channel, each
  frequency scaled by `1/max(f, 1/max(H,W))^decay`, channels mixed by the square root of
  the RGB covariance of the gallery photos (decorrelated colour), then a sigmoid to 0..255.
- **transforms** before each forward pass, with gradients through them: pad (mean colour
  or reflect), jitter (random crop of up to N px), scale (random factor from a list), rotate
  (random angle from a list), a second jitter; with constant padding the chain is one affine
  resampling (one `grid_sample`), about 6x cheaper than the steps in turn.
- **optimizers**, each with one state per tile: `rmsprop` exactly as cnn-vis
  (`cache = d cache + (1-d) g^2; x -= lr g / sqrt(cache + 1e-8)`), `adam` and `sgd` (as torch's).
- **priors** (gradients written out and tested against autograd and finite differences):
  p-norm `p_reg sum |(x - x0)/p_scale|^alpha` (pulls toward the initial photo when there is
  one), auxiliary p-norm `p_reg_aux sum |x/p_scale_aux|^alpha_aux` (always toward the mean
  colour: stops saturation), total variation `tv_reg sum max(Gx^2 + Gy^2, 1e-3)^(beta/2)` on
  `x / tv_reg_scale` with operator `naive`, `sobel` or `sobel_squish`, and its schedule (`+tv_reg_step`
  every `tv_reg_step_iter` steps), L1 and L2 decay, a Gaussian blur every N steps,
  clipping of the image gradient's norm, a Gaussian blur of the objective's gradient
  (`grad_blur`, new: against the fine grid that EfficientNet's stride-2 convolutions imprint),
  clamping to valid pixels, learning-rate decay (`x learning_rate_decay_fraction` every
  `learning_rate_decay_iter` steps).
- **initialisation**: Gaussian noise of std `init_scale` blurred by `init_blur`, or a photo
  (`initial_image`, a file or a gallery name). The fft parameterization starts from its own
  small random spectrum (std `0.01 init_scale`) or fits the photo.

## Multiscale and tiling

Sizes go from `initial_size` to `final_size` in `num_sizes` steps, `geometric` (log-spaced)
or `linear`; a size is `xF` (times the base: the model input for noise, the photo for a
photo) or `HxW`. At each new size the image is resized (bicubic), and the TV weight, the
learning rate, the optimizer states and the tiling are reset. With `keep_detail` (what
`deepdream()` uses, as Google's DeepDream octaves do) a new size starts from the photo at that
size plus the upscaled changes, so the photo stays sharp.

Tiling covers the image with windows of the model's input size (or `tile_size`): along each
axis the fewest evenly spread windows that leave no gap and never overlap their second
neighbour, so every pixel is in 1, 2 or 4 windows. Windows are updated in checkerboard
order: the *even* set (row and column of the same parity) first, then the *odd* set, whose
gradients are taken on the image after the even update; `batch_size` windows go through the
model per pass. `use_pixel_learning_rates` divides each pixel's step by its coverage. The
priors are computed on the whole image (cnn-vis computed them per tile; `--quirks` restores
that). Images far larger than the input (1920x1080) work; `--no-tile` feeds the whole image
instead, which a fully convolutional model also accepts (faster, see the benchmark).

## cnn-vis options in `cnnscope dream`

Every option keeps its meaning. Each long option is accepted with dashes or with cnn-vis's
underscores (`--tv-reg` = `--tv_reg`); `--config FILE.json` reruns a saved record.

| cnn-vis | `cnnscope dream` | notes |
|---|---|---|
| `--deploy_txt`, `--caffe_model` | `--model`, `--weights` | any model `cnnscope` loads |
| `--mean_image` | `--mean`, `--std` | per-channel; cnn-vis used the scalar mean of the mean image |
| `--gpu N` | `--gpu N` or `--device cuda:N` | negative = CPU |
| `--batch_size` | `--batch-size` | tiles per forward pass |
| `--image_type amplify_layer/amplify_neuron` | same, or `--objective EXPR` | amplify_neuron = `channel(L:N, reduce=sum)` |
| `--target_layer`, `--target_neuron` | same | layer names of the model (`cnnscope layers`); default `blocks.9.expand_act` (for `inception_4d/3x3_reduce`) |
| `--initial_image` | same | a file or a gallery name |
| `--initialization_scale`, `--initialization_blur` | same (or `--init-scale`, `--init-blur`) | the blur is spatial only (cnn-vis also blurred across channels: `--quirks`) |
| `--initial_size`, `--final_size`, `--num_sizes`, `--resize_type` | same | `xF` or `HxW`; sizes smaller than the model input are allowed |
| `--learning_rate`, `--decay_rate` | same (`--lr`) | RMSProp as cnn-vis |
| `--learning_rate_decay_iter`, `--learning_rate_decay_fraction` (README: `_factor`) | same, both spellings | |
| `--num_steps` | same (`--steps`) | per size |
| `--use_pixel_learning_rates` | same | |
| `--amplify_l1_weight`, `--amplify_l2_weight`, `--amplify_grad_clip` (README: `--l1_weight`, `--l2_weight`, `--grad_clip`) | all six spellings | the amplify objective's `l1`, `l2`, `clip` |
| `--alpha`, `--p_scale`, `--p_reg` | same | `p_reg` in cnn-vis's units (below) |
| `--alpha_aux`, `--p_scale_aux`, `--p_reg_aux` | same | `p_reg_aux` in cnn-vis's units |
| `--beta`, `--tv_reg`, `--tv_reg_scale`, `--tv_reg_step`, `--tv_reg_step_iter`, `--tv_grad_operator` | same | `tv_reg`, `tv_reg_step` in cnn-vis's units |
| | `--raw-priors` | the three weights as written, not divided by the model's std (new) |
| `--output_file` | same (`-o`) | a JSON record is written beside it |
| `--output_iter`, `--iter_behavior` (`show`, `save`, `print`, `plot_pix`) | same, plus `gif` | `plot_pix` writes `NAME_pixels.png` (pixels (100,100), (200,200), (100,200), (200,100)) |
| `--show_width`, `--show_height` | same | |
| `--rescale_image` | same | |
| | {_new_options()} | new |

### Units of the prior weights

cnn-vis's weights (`--p_reg`, `--p_reg_aux`, `--tv_reg`, `--tv_reg_step`) were set for Caffe
networks that read the image in pixel units (0..255 minus the mean, not divided by a std).
EfficientNet-Lite0 reads `x / 128`, so its gradient with respect to the pixels is 128 times
smaller than its gradient at its own input, and cnn-vis's numbers taken as they are make the
priors outweigh the network. On ex1's command line (`--learning_rate 10 --decay_rate 0.25
--alpha 6 --p_reg 1e-10 --beta 2.5 --tv_reg 0.5`, one 112x112 image, 40 steps) the TV
gradient starts at 20x the network's (mean 9.3 vs 0.46) and ends at 360x (160 vs 0.44):
RMSProp's steps of 10 become a 2-pixel checkerboard on a grey image.

The rule: each of these priors' gradients is divided by the model's input std of its
channel on the 0..255 scale (`std * 255`: 128 for EfficientNet-Lite0, 1 for a Caffe model
fed 0..255 pixels). The descent direction is

    -dObjective/dx + (p_reg dP + p_reg_aux dPaux + tv_reg dTV) / std + l1_decay sign(x) + l2_decay x

With `u = x / std` the model's input, `dObjective/dx = dObjective/du / std`, so this is
cnn-vis's direction with the network's gradient at its own input in place of GoogLeNet's at
its pixels, times one positive factor per channel, which RMSProp and Adam cancel (they
normalise each element). A ported command line therefore strikes the trade-off it struck in
cnn-vis, to the extent that the two networks are about as sensitive to their own inputs.
The L1/L2 decay (pytorch-cnn-visualizations', set on this model), the blur and the clipping are not scaled.

| ex1's numbers, 112x112, 40 steps | pixel std | std after a sigma-2 blur | amplification |
|---|---|---|---|
| scaled (default) | 8.8 | 4.7 | 4.5e4 |
| `--raw-priors` | 5.2 | 1.3 | 1.8e4 |
| `--quirks` | 6.3 | 1.5 | 1.8e4 |
| the flat grey image | 0 | 0 | 1.1e4 |

Scaled, the picture shows the layer's swirls and eyes in muted colours; raw, it is a flat
grey with a faint checkerboard. What the rule does not change is the size of the objective's
own gradient: a single neuron's sum (`--image_type amplify_neuron`) has a far smaller
gradient than a whole layer's amplification, as it had in cnn-vis, so ex1's layer numbers
still outweigh it: with them the neuron `blocks.9:5` rises from 111 on grey to 339 (51 raw),
but its picture stays faint; give it a smaller `--tv_reg`.

`--raw-priors` (`raw_priors=True`) takes the numbers as written (weights tuned on this
model's own gradients, as `invert`'s defaults are); `--quirks` implies it. A record written
before this rule has no `raw_priors` and is read as raw, so it still reproduces its picture;
the presets' weights are in cnn-vis's units and give the same pictures bit for bit (the
division by 128 is exact). Tests: `tests/test_synthesis_prior_units.py`.

cnn-vis's quirks (seed-features.md §3.11) are fixed by default; `--quirks` restores the ones
that change pictures: the raw prior weights, the x1.2 contrast at every conversion to uint8,
uint8 quantisation at each resize, noise blurred across channels, and priors computed per
tile. Not reproduced:
Python 2 / Caffe, the lexicographic size assertion (any size works), stale batch slots, the
skipped ReLU of the target (the seed is injected at the named layer's output), `print` being
always on.

pytorch-cnn-visualizations' synthesis scripts (seed-features.md §2.11-2.14) map as: layer/filter
visualization = `visualize` (a channel's mean; `--param pixel --lr ...` for plain pixels);
inverted representations = `invert` (alpha-norm + TV, normalised distance; its TV over
channels and rows bug is fixed: TV runs over H and W); deep dream = `dream --objective
"channel(L:F)"` or `deepdream(L)` from a photo; class images = `classimage` (blur every N
steps, L2 decay, norm clipping of the gradient of the *image's* parameters rather than of
the model's, which made pytorch-cnn-visualizations' clipping a no-op).

## Gallery

Rendered on the CPU with {log.get("threads", "?")} torch thread(s) (`--threads`; the machine was shared); the whole script took {timing if timing else "?"} s.

### Presets (cnn-vis's example gallery, adapted to EfficientNet-Lite0)

The quick versions (smaller sizes, fewer steps: `cnnscope dream --preset NAME --quick`).
The full presets keep cnn-vis's schedules (e.g. 270x480 to 1080x1920 in 5 sizes, 100 steps
each). Layers are mapped by depth and resolution (see `cnnscope.synthesis.presets`);
prior weights are in cnn-vis's units (see "Units of the prior weights") and re-tuned for
EfficientNet-Lite0: the TV and photo p-norm weights lie within 0.08x-2.6x of the examples'
own numbers (as raw weights they were 50x-1700x smaller); the presets add a 16 px jitter and
`grad_blur`.

{_preset_rows(log)}

### Unit visualizations, stem to head (one batch of {len(UNITS)}, {UNIT_STEPS} steps, {UNIT_SIZE} px)

`cnnscope visualize {" ".join(UNITS)} --steps {UNIT_STEPS} --size {UNIT_SIZE}`

{_unit_table()}

### Class image: {CLASS}

`cnnscope classimage {CLASS} --steps {CLASS_STEPS}`: pytorch-cnn-visualizations' regularized recipe (a Gaussian blur
every 10 steps, L2 decay, clipping of the gradient's norm) on the Fourier parameterization with
decorrelated colour and random transforms, Adam. (With SGD on plain pixels, as pytorch-cnn-visualizations did on
AlexNet, EfficientNet-Lite0 gives grey images with a few pink fragments.) The model scores it:
{cls_text}.

{_img("class_flamingo.png", 224)}

### Inversion of the representation of a photo

`cnnscope invert {INVERT_IMAGE} --layer L --steps {INVERT_STEPS}` from noise, alpha-norm (6) and TV (beta 2) priors.
The representation barely constrains global contrast, so the result is shown min-max
stretched (`rescale_image`); deeper layers keep the layout and lose colour and detail.

| original | {" | ".join(f"`{layer}`" for layer in INVERT_LAYERS)} |
|---|{"---|" * len(INVERT_LAYERS)}
| {_img(f"invert_{INVERT_IMAGE}_original.png", 224)} | {" | ".join(_img(f"invert_{INVERT_IMAGE}_{layer}.png", 224) for layer in INVERT_LAYERS)} |

### DeepDream of a gallery photo

`deepdream(model, "{DREAM_IMAGE}", "{DREAM_LAYER}", octaves=4, steps={DREAM_STEPS})`: 4 octaves
(x1.4) that keep the photo's detail (`keep_detail`), 224x224 tiles in checkerboard order,
RMSProp, 16 px jitter, a blur of the gradient.

{_img(f"dream_{DREAM_IMAGE}.png", 451)}
"""


if __name__ == "__main__":
    sys.exit(main())
