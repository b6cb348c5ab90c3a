"""Memory kept by dropped models, and the cost of the engine's weight fingerprint.

Builds ``--models`` fresh EfficientNet-Lite0 models in turn; each runs an engine forward
and backward, gradient, Grad-CAM, integrated gradients, the four LRP methods and a tree
``children`` call, then is dropped (``del`` + ``gc.collect()``). The resident set size
(RSS) is printed after each drop: with models freed it stays flat after the first.
Then the cost of :func:`cnnscope.engine.weights_fingerprint` (computed on every
cached ``Engine.forward``) is given as a share of one recorded forward.

Run: ``python bench/lifetime.py [--models 5] [--repeats 30]`` (``--models 0``: the cost only)
"""

from __future__ import annotations

import argparse
import gc
import time
import weakref

import torch

from cnnscope.attribution import attribute
from cnnscope.engine import Engine, weights_fingerprint
from cnnscope.images import load_gallery_image
from cnnscope.models import clear_cache, load_model
from cnnscope.tree import Explorer

METHODS = ("gradient", "grad_cam", "integrated_gradients", "lrp", "lrp_epsilon", "lrp_zplus")
METHODS += ("lrp_alpha_beta",)


def rss_mib() -> float:
    """Resident set size of this process, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def use_and_drop(image) -> bool:
    """Use a fresh model everywhere, drop it; whether it was freed."""
    clear_cache()  # a fresh module, not the zoo's cached one
    model = load_model()
    clear_cache()
    x = model.preprocess(image)
    fwd = Engine.for_module(model.module).forward(x)
    fwd.grad("logits", torch.ones_like(fwd.activation("logits")))
    del fwd
    for method in METHODS:
        attribute(model, x, method, **({"steps": 4} if method == "integrated_gradients" else {}))
    Explorer(model).children(x, "logits:285", k=2)
    alive = weakref.ref(model.module)
    del model
    gc.collect()
    return alive() is None


def fingerprint_share(repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` recorded forwards and of as many weight fingerprints,
    measured in turn (seconds): on a busy machine the fastest runs are the least disturbed,
    and the forward suffers more than the fingerprint, which flatters a median ratio."""
    module = load_model().module
    engine = Engine(module)
    x = torch.randn(1, 3, 224, 224)
    weights_fingerprint(module)  # the first call makes the views
    forward, fingerprint = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.forward(x, cache=False)
        forward.append(time.perf_counter() - t)
        t = time.perf_counter()
        weights_fingerprint(module)
        fingerprint.append(time.perf_counter() - t)
    return min(forward), min(fingerprint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    image = load_gallery_image("chelsea")
    start = rss_mib()
    print(f"RSS at start: {start:.0f} MiB")
    for i in range(args.models):
        freed = use_and_drop(image)
        print(
            f"after model {i + 1}: RSS {rss_mib():.0f} MiB (+{rss_mib() - start:.0f}), "
            f"freed: {freed}"
        )
    forward, fingerprint = fingerprint_share(args.repeats)
    print(
        f"fastest forward {forward * 1e3:.1f} ms, fingerprint {fingerprint * 1e3:.2f} ms "
        f"({100 * fingerprint / forward:.1f}% of a forward)"
    )


if __name__ == "__main__":
    main()
