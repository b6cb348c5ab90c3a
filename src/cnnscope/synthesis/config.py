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

__all__ = ["ITER_BEHAVIORS", "SynthesisConfig"]

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


@dataclass
class SynthesisConfig:
    """Options of one synthesis run. See docs/synthesis.md for each option's meaning.

    Examples
    --------
    >>> cfg = SynthesisConfig(objective="blocks.9:5", num_steps=10)
    >>> SynthesisConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    # objective
    objective: str = "amplify(blocks.9)"
    batch: int = 1
    # parameterization and initialisation
    param: str = "pixel"
    decorrelate: bool = True
    fft_decay: float = 1.0
    initial_image: str | None = None
    init_scale: float = 1.0
    init_blur: float = 0.0
    # sizes and tiling
    initial_size: str | None = None
    final_size: str | None = None
    num_sizes: int = 1
    resize_type: str = "geometric"
    keep_detail: bool = False
    tile: bool = True
    tile_size: str | None = None
    batch_size: int = 1
    use_pixel_learning_rates: bool = False
    # optimizer
    optimizer: str = "rmsprop"
    learning_rate: float = 1.0
    decay_rate: float = 0.95
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    learning_rate_decay_iter: int = 100
    learning_rate_decay_fraction: float = 1.0
    num_steps: int = 1000
    # regularizers
    alpha: float = 6.0
    p_scale: float = 1.0
    p_reg: float = 1e-4
    alpha_aux: float = 6.0
    p_scale_aux: float = 1.0
    p_reg_aux: float = 0.0
    beta: float = 2.0
    tv_reg: float = 0.5
    tv_reg_scale: float = 1.0
    tv_reg_step: float = 0.0
    tv_reg_step_iter: int = 50
    tv_grad_operator: str = "naive"
    l1_decay: float = 0.0
    l2_decay: float = 0.0
    blur_every: int = 0
    blur_sigma: float = 1.0
    clip_grad_norm: float = 0.0
    grad_blur: float = 0.0
    clamp_pixels: bool = False
    # p_reg, p_reg_aux, tv_reg (and tv_reg_step) as written, not divided by the model's
    # input std (see docs/synthesis.md, "Units of the prior weights"); quirks implies it
    raw_priors: bool = False
    # transforms
    pad: int = 0
    pad_mode: str = "constant"
    jitter: int = 0
    scales: list[float] = field(default_factory=list)
    angles: list[float] = field(default_factory=list)
    jitter2: int = 0
    # outputs and reproducibility
    output_iter: int = 50
    rescale_image: bool = False
    quirks: bool = False
    seed: int = 0

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
                if f.name in data and not _TYPES[f.type](data[f.name]):
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

        def finite(name: str) -> float:
            v = getattr(self, name)
            need(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                f"{name} must be a finite number, got {v!r}",
            )
            return float(v)

        def integer(name: str, low: int) -> int:
            v = getattr(self, name)
            need(
                isinstance(v, int) and not isinstance(v, bool) and v >= low,
                f"{name} must be an integer >= {low}, got {v!r}",
            )
            return v

        need(isinstance(self.objective, str) and self.objective.strip() != "", "objective is empty")
        integer("batch", 1)
        need(self.param in PARAMS, f"unknown param {self.param!r}: choose {' or '.join(PARAMS)}")
        need(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}: choose {', '.join(OPTIMIZERS)}",
        )
        need(
            self.tv_grad_operator in TV_OPERATORS,
            f"unknown tv_grad_operator {self.tv_grad_operator!r}: choose {', '.join(TV_OPERATORS)}",
        )
        need(
            self.resize_type in RESIZE_TYPES,
            f"unknown resize_type {self.resize_type!r}: choose geometric or linear",
        )
        need(
            self.pad_mode in ("constant", "reflect", "replicate"),
            f"unknown pad_mode {self.pad_mode!r}",
        )
        for name in ("num_sizes", "batch_size", "learning_rate_decay_iter", "tv_reg_step_iter"):
            integer(name, 1)
        for name in ("num_steps", "output_iter", "blur_every", "pad", "jitter", "jitter2", "seed"):
            integer(name, 0)
        for name in (
            "fft_decay", "init_scale", "init_blur", "learning_rate", "decay_rate", "momentum",
            "learning_rate_decay_fraction", "alpha", "p_scale", "p_reg", "alpha_aux", "p_scale_aux",
            "p_reg_aux", "beta", "tv_reg", "tv_reg_scale", "tv_reg_step", "l1_decay", "l2_decay",
            "blur_sigma", "clip_grad_norm", "grad_blur",
        ):  # fmt: skip
            finite(name)
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(0 <= self.decay_rate < 1, f"decay_rate must be in [0, 1), got {self.decay_rate}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        need(self.momentum >= 0, f"momentum must be >= 0, got {self.momentum}")
        need(self.learning_rate_decay_fraction > 0, "learning_rate_decay_fraction must be > 0")
        for name in ("alpha", "alpha_aux", "beta", "p_scale", "p_scale_aux", "tv_reg_scale"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("p_reg", "p_reg_aux", "tv_reg", "l1_decay", "l2_decay", "clip_grad_norm",
                     "init_scale", "init_blur", "blur_sigma", "grad_blur"):  # fmt: skip
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
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
