"""Every option of a synthesis run, in one JSON-serialisable dataclass.

Defaults are cnn-vis's code defaults (see docs/synthesis.md for the option mapping);
:func:`cnnscope.synthesis.visualize_units`, :func:`~cnnscope.synthesis.class_image`,
:func:`~cnnscope.synthesis.invert` and the presets start from other values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CnnscopeError
from .optim import OPTIMIZERS
from .params import PARAMS
from .regularizers import TV_OPERATORS
from .schedule import RESIZE_TYPES, parse_size

__all__ = ["GROUPS", "ITER_BEHAVIORS", "SynthesisConfig", "option", "parse_behaviors"]

#: Tokens of ``iter_behavior`` (joined with ``+``).
ITER_BEHAVIORS = ("print", "save", "show", "plot_pix", "gif")
#: Largest config file :meth:`SynthesisConfig.load` reads (a record is a few kB).
MAX_CONFIG_BYTES = 1 << 20


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What a JSON value must be for each field type (a file may hold anything).
_TYPES = {
    "bool": lambda v: isinstance(v, bool),
    "int": _integer,
    "float": _number,
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "list[float]": lambda v: isinstance(v, list) and all(_number(x) for x in v),
    "tuple[float, float]": lambda v: isinstance(v, list) and all(_number(x) for x in v),
}


#: The groups of options, in the order ``cnnscope dream --help`` shows them.
GROUPS = (
    "objective", "initialization", "resize", "optimization", "amplification", "p-norm",
    "total variation", "other priors", "transforms", "output",
)  # fmt: skip


def option(default, group: str, help: str, *flags: str, low=None, above=None, choices=None):
    """A :class:`SynthesisConfig` field with what the CLI and :meth:`~SynthesisConfig.validate`
    need: its ``group`` and ``help`` in ``cnnscope dream --help``, its ``flags`` (default
    ``--name-with-dashes``, or ``--no-name`` for an option that is on by default; each also
    in cnn-vis's ``--name_with_underscores`` spelling), and its bounds: ``low`` (>=),
    ``above`` (>) and ``choices``.

    Examples
    --------
    >>> f = {f.name: f for f in dataclasses.fields(SynthesisConfig)}["learning_rate"]
    >>> f.metadata["flags"], f.metadata["above"]
    (('--learning-rate', '--lr'), 0)
    """
    meta = dict(group=group, help=help, flags=flags, low=low, above=above, choices=choices)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_POS = dict(above=0)
_NONNEG = dict(low=0)


@dataclass
class SynthesisConfig:
    """Options of one synthesis run. See docs/synthesis.md for each option's meaning.

    Each field is declared with :func:`option`: ``cnnscope dream``'s flags, help and the
    checks of :meth:`validate` are read from it, so a new option is one field here.

    Examples
    --------
    >>> cfg = SynthesisConfig(objective="blocks.9:5", num_steps=10)
    >>> SynthesisConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    # objective
    objective: str = option(
        "amplify(blocks.9)", "objective",
        "objective expression (overrides --image-type), e.g. 'blocks.9:5 - 0.5*deepdream(blocks.10)'",
    )  # fmt: skip
    batch: int = option(1, "objective", "images rendered together (default 1)", low=1)
    # parameterization and initialisation
    param: str = option(
        "pixel", "initialization", "parameterization: pixel (default) or fft", choices=PARAMS
    )
    decorrelate: bool = option(
        True, "initialization", "fft: plain RGB instead of decorrelated colour"
    )
    fft_decay: float = option(1.0, "initialization", "spectrum scaling exponent of fft (default 1)")
    initial_image: str | None = option(
        None, "initialization",
        "image file or gallery name to start from (default: blurred Gaussian noise)",
    )  # fmt: skip
    init_scale: float = option(
        1.0, "initialization", "std of the initial noise, pixel units (default 1)",
        "--initialization-scale", "--init-scale", **_NONNEG,
    )  # fmt: skip
    init_blur: float = option(
        0.0, "initialization", "std (pixels) of the Gaussian blur of the initial noise (default 0)",
        "--initialization-blur", "--init-blur", **_NONNEG,
    )  # fmt: skip
    # sizes and tiling
    initial_size: str | None = option(None, "resize", "xF or HxW (default: the base size)")
    final_size: str | None = option(None, "resize", "xF or HxW (default: the initial size)")
    num_sizes: int = option(1, "resize", "number of sizes (default 1)", low=1)
    resize_type: str = option(
        "geometric", "resize", "geometric (default) or linear", choices=RESIZE_TYPES
    )
    keep_detail: bool = option(
        False, "resize",
        "at each new size start from the photo at that size plus the upscaled changes (DeepDream octaves)",
    )  # fmt: skip
    tile: bool = option(True, "resize", "feed the whole image at once instead of tiles")
    tile_size: str | None = option(None, "resize", "HxW of the windows (default: the model input)")
    batch_size: int = option(1, "resize", "tiles per forward pass (default 1)", low=1)
    use_pixel_learning_rates: bool = option(
        False, "resize", "divide each pixel's step by the number of tiles covering it"
    )
    # optimizer
    optimizer: str = option(
        "rmsprop", "optimization", "rmsprop (default, as cnn-vis), adam or sgd", choices=OPTIMIZERS
    )
    learning_rate: float = option(
        1.0, "optimization", "learning rate (default 1)", "--learning-rate", "--lr", **_POS
    )
    decay_rate: float = option(0.95, "optimization", "RMSProp decay rate (default 0.95)")
    betas: tuple[float, float] = option((0.9, 0.999), "optimization", "Adam betas, e.g. 0.9,0.999")
    momentum: float = option(0.0, "optimization", "SGD momentum (default 0)", **_NONNEG)
    learning_rate_decay_iter: int = option(
        100, "optimization", "decay the learning rate every this many steps (default 100)", low=1
    )
    learning_rate_decay_fraction: float = option(
        1.0, "optimization", "multiply the learning rate by this at each decay (default 1)",
        "--learning-rate-decay-fraction", "--learning-rate-decay-factor", **_POS,
    )  # fmt: skip
    num_steps: int = option(
        1000, "optimization", "steps per size (default 1000)", "--num-steps", "--steps", low=0
    )
    # regularizers
    alpha: float = option(6.0, "p-norm", "p-norm exponent (default 6)", **_POS)
    p_scale: float = option(1.0, "p-norm", "p-norm scale (default 1)", **_POS)
    p_reg: float = option(1e-4, "p-norm", "p-norm weight (default 1e-4)", **_NONNEG)
    alpha_aux: float = option(6.0, "p-norm", "auxiliary p-norm exponent (default 6)", **_POS)
    p_scale_aux: float = option(1.0, "p-norm", "auxiliary p-norm scale (default 1)", **_POS)
    p_reg_aux: float = option(0.0, "p-norm", "auxiliary p-norm weight (default 0: off)", **_NONNEG)
    beta: float = option(2.0, "total variation", "TV exponent (default 2)", **_POS)
    tv_reg: float = option(0.5, "total variation", "TV weight (default 0.5)", **_NONNEG)
    tv_reg_scale: float = option(1.0, "total variation", "TV scale (default 1)", **_POS)
    tv_reg_step: float = option(
        0.0,
        "total variation",
        "add this to the TV weight every --tv-reg-step-iter steps (default 0)",
    )
    tv_reg_step_iter: int = option(50, "total variation", "(default 50)", low=1)
    tv_grad_operator: str = option(
        "naive", "total variation", "naive (default), sobel or sobel_squish", choices=TV_OPERATORS
    )
    l1_decay: float = option(0.0, "other priors", "L1 decay weight (default 0)", **_NONNEG)
    l2_decay: float = option(0.0, "other priors", "L2 decay (weight decay) (default 0)", **_NONNEG)
    blur_every: int = option(
        0, "other priors", "Gaussian-blur the image every N steps (0: off)", low=0
    )
    blur_sigma: float = option(
        1.0, "other priors", "std of that blur in pixels (default 1)", **_NONNEG
    )
    clip_grad_norm: float = option(
        0.0, "other priors", "clip the image gradient's L2 norm to this (0: off)", **_NONNEG
    )
    grad_blur: float = option(
        0.0, "other priors",
        "Gaussian-blur the objective's image gradient with this std in pixels (0: off)", **_NONNEG,
    )  # fmt: skip
    clamp_pixels: bool = option(False, "other priors", "clip pixels to 0..255 after each step")
    # p_reg, p_reg_aux, tv_reg (and tv_reg_step) as written, not divided by the model's
    # input std (see docs/synthesis.md, "Units of the prior weights"); quirks implies it
    raw_priors: bool = option(
        False, "other priors",
        "take --p-reg, --p-reg-aux, --tv-reg as they are instead of dividing them by the "
        "model's input std (cnn-vis's numbers were set for Caffe models that read 0..255 pixels)",
    )  # fmt: skip
    # transforms
    pad: int = option(
        0, "transforms", "pad pixels on each side before each forward (default 0)", low=0
    )
    pad_mode: str = option(
        "constant", "transforms", "constant (mean colour), reflect or replicate",
        choices=("constant", "reflect", "replicate"),
    )  # fmt: skip
    jitter: int = option(0, "transforms", "random crop of up to N pixels (default 0)", low=0)
    scales: list[float] = option([], "transforms", "random scale factors, e.g. 0.95,1,1.05")
    angles: list[float] = option([], "transforms", "random rotations in degrees, e.g. -5,0,5")
    jitter2: int = option(0, "transforms", "a second jitter after scale/rotate (default 0)", low=0)
    # outputs and reproducibility
    output_iter: int = option(50, "output", "act every N steps (default 50)", low=0)
    rescale_image: bool = option(False, "output", "min-max stretch the output instead of clipping")
    quirks: bool = option(
        False, "output",
        "reproduce cnn-vis's quirks: raw prior weights, x1.2 contrast at each conversion, uint8 "
        "resizes, per-tile priors, channel blur",
    )  # fmt: skip
    seed: int = option(0, "output", "random seed (default 0)", low=0)

    # ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A plain dict (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> SynthesisConfig:
        """Build from a dict, rejecting unknown keys with one line."""
        if not isinstance(data, dict):
            raise CnnscopeError("a synthesis config must be a JSON object")
        cls._check_names(data)
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> tuple[SynthesisConfig, dict]:
        """Read a config saved beside an image; returns the config and the whole record.

        The file is data: every option must have its field's type, and the record's
        ``threads``, ``index`` and ``model`` must be what
        :func:`~cnnscope.synthesis.outputs.run_record` writes.

        Examples
        --------
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "run.json")
        >>> _ = open(p, "w").write('{"config": {"num_steps": 3}, "threads": 2}')
        >>> cfg, record = SynthesisConfig.load(p)
        >>> cfg.num_steps, record["threads"]
        (3, 2)
        """
        p = Path(path)
        if not p.is_file():
            raise CnnscopeError(f"config file not found: {p}")
        try:
            if p.stat().st_size > MAX_CONFIG_BYTES:
                raise CnnscopeError(f"config {p} is over {MAX_CONFIG_BYTES} bytes: not a record")
            record = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise CnnscopeError(f"cannot read config {p}: {type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise CnnscopeError(f"config {p} is not a JSON object")
        data = record.get("config", record)
        if isinstance(data, dict):
            cls._check_names(data)
            # A record made before the priors were scaled to the model used raw weights.
            data = {"raw_priors": True, **data}
            for f in dataclasses.fields(cls):
                if f.name in data and not _TYPES[str(f.type)](data[f.name]):
                    raise CnnscopeError(
                        f"config {p}: {f.name} must be {f.type}, got {data[f.name]!r:.60}"
                    )
        cfg = cls.from_dict(data)
        threads, index, model = record.get("threads"), record.get("index", 0), record.get("model")
        if not (threads is None or _integer(threads) and 1 <= threads <= 1024):
            raise CnnscopeError(f"config {p}: threads must be an integer in 1-1024")
        if not (_integer(index) and 0 <= index < cfg.batch):
            raise CnnscopeError(f"config {p}: index must be an integer in 0-{cfg.batch - 1}")
        if not (
            model is None or isinstance(model, dict) and isinstance(model.get("name", ""), str)
        ):
            raise CnnscopeError(f"config {p}: model must be an object with a name")
        return cfg, record

    @property
    def priors_scaled(self) -> bool:
        """Whether p_reg, p_reg_aux and tv_reg are divided by the model's input std.

        Examples
        --------
        >>> SynthesisConfig().priors_scaled, SynthesisConfig(quirks=True).priors_scaled
        (True, False)
        """
        return not (self.raw_priors or self.quirks)

    def replace(self, **changes) -> SynthesisConfig:
        """A copy with some options changed (unknown names are an error)."""
        self._check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def _check_names(cls, options: Iterable[str]) -> None:
        """Reject option names that are not fields, all in one line."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CnnscopeError(f"unknown synthesis option(s): {', '.join(unknown)}")

    # ------------------------------------------------------------------------------
    def validate(self) -> SynthesisConfig:
        """Check every option; raise :class:`CnnscopeError` with one line on the first problem."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise CnnscopeError(msg)

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.objective, str) and self.objective.strip() != "", "objective is empty")
        for f in dataclasses.fields(self):
            meta, v = f.metadata, getattr(self, f.name)
            if meta["choices"] is not None:
                choose = ", ".join(meta["choices"])
                need(v in meta["choices"], f"unknown {f.name} {v!r}: choose {choose}")
            elif f.type == "int":
                low = meta["low"]
                need(_integer(v) and v >= low, f"{f.name} must be an integer >= {low}, got {v!r}")
            elif f.type == "float":
                need(number(v), f"{f.name} must be a finite number, got {v!r}")
                if meta["low"] is not None:
                    need(v >= meta["low"], f"{f.name} must be >= {meta['low']}, got {v}")
                if meta["above"] is not None:
                    need(v > meta["above"], f"{f.name} must be > {meta['above']}, got {v}")
        need(0 <= self.decay_rate < 1, f"decay_rate must be in [0, 1), got {self.decay_rate}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        need(all(float(s) > 0 for s in self.scales), f"scales must be positive, got {self.scales}")
        need(all(math.isfinite(float(a)) for a in self.angles), f"bad angles {self.angles}")
        for name in ("initial_size", "final_size", "tile_size"):
            v = getattr(self, name)
            if v is not None:
                parse_size(v, (224, 224))
        if self.tile_size is not None:
            need("x" in self.tile_size[1:], "tile_size must be HxW, e.g. 224x224")
        if self.quirks:
            need(self.param == "pixel", "quirks (cnn-vis's original behaviour) need param pixel")
        if self.keep_detail:
            need(self.initial_image is not None, "keep_detail needs an initial image")
        return self


def parse_behaviors(text: str) -> set[str]:
    """Split ``save+print`` into tokens, rejecting unknown ones with one line.

    Examples
    --------
    >>> sorted(parse_behaviors("save+print"))
    ['print', 'save']
    """
    tokens = {t.strip() for t in str(text).split("+") if t.strip()}
    bad = sorted(tokens - set(ITER_BEHAVIORS))
    if bad:
        raise CnnscopeError(
            f"unknown iter_behavior {'+'.join(bad)!r}: combine {', '.join(ITER_BEHAVIORS)} with +"
        )
    return tokens
