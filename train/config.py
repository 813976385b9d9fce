"""Training configuration shared by the torch, TF and JAX WGAN trainers.

``TrainConfig`` holds every knob; presets give the paper setup (paper section 4, README "Training"
setup") and a smoke setup that finishes in minutes on 2 CPU cores. ``build_parser`` is the one
command line all three trainers expose; flags left unset keep the preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from models.spec import ARCHS
from train.penalties import DATA_RANGE, PAPER_MODES, PENALTIES, PENALTY_FIELDS, VALP_FIELDS
from train.seeds import MAX_SEED, stream_seed
from valr_core import ValpConfig
from valr_core.config import Mode, Reduction, Start

_CORE = ValpConfig()  # the core's defaults (the paper mode of each penalty: PAPER_MODES)
LR_DECAYS = ("linear", "constant")
DATASETS = ("cifar10", "digits", "folder")
PRECISIONS = ("fp32", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|gpu(:\d+)?|tpu(:\d+)?)$")


class ConfigError(ValueError):
    """An invalid setting; the message names the command-line flag."""


# JSON types each declared field type accepts (Literal aliases such as Mode are strings; an int
# is a valid float; bool is never a number). Declared types are read from the annotations.
_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
    "tuple": (list, tuple), "None": (type(None),),
}


def _alternatives(declared: Any) -> list[str]:
    text = declared.__name__ if isinstance(declared, type) else str(declared)
    return [alt.strip().split("[", 1)[0] for alt in text.split("|")]


def _has_declared_type(value: Any, declared: Any) -> bool:
    for alt in _alternatives(declared):
        kinds = _JSON_KINDS.get(alt, (str,))  # Literal aliases (Mode, Reduction, Start): strings
        if isinstance(value, bool) and bool not in kinds:
            continue
        if isinstance(value, kinds):
            if alt == "tuple":
                return all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            return True
    return False


def _declared(declared: Any) -> str:
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "dict": "a JSON object", "tuple": "a list of numbers", "None": "null"}
    return " or ".join(words.get(alt, "a string") for alt in _alternatives(declared))


def json_repr(value: Any) -> str:
    import json

    return f"{json.dumps(value)} ({type(value).__name__})"


def flag(name: str) -> str:
    """The command-line flag of a TrainConfig field."""
    return "--" + name.replace("_", "-")


# Logging and evaluation counts (intervals in generator iterations): name -> (default, help).
# The TrainConfig fields and the command-line flags are both generated from this table.
COUNTS: dict[str, tuple[int, str]] = {
    "log_every": (100, "generator iterations between log rows (0: off)"),
    "sample_every": (1000, "generator iterations between sample grids (0: off)"),
    "checkpoint_every": (1000, "generator iterations between checkpoints (0: only at the end)"),
    "keep_checkpoints": (3, "checkpoints kept on disk"),
    "eval_every": (1000, "generator iterations between IS/FID/KID evaluations (0: off)"),
    "eval_samples": (10_000, "samples per evaluation"),
    "final_eval_samples": (50_000, "samples of the final evaluation"),
    "n_sample_grid": (64, "images in each sample grid"),
}

_PenaltySettings = dataclasses.make_dataclass(
    "_PenaltySettings",
    [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(ValpConfig) if f.name in PENALTY_FIELDS])
_CountSettings = dataclasses.make_dataclass(
    "_CountSettings", [(name, int, field(default=default)) for name, (default, _) in COUNTS.items()])


@dataclass
class TrainConfig(_CountSettings, _PenaltySettings):
    """Every setting of a training run. Penalty settings carry valr_core's names (one name from
    flag to math); counts come from ``COUNTS``."""

    preset: str = "paper"
    framework: str = ""

    # data
    data: str = "cifar10"
    data_path: str | None = None
    download: bool = True
    flip: bool = True
    dequantize: bool = True

    # schedule / optimiser (steps = generator iterations, each after n_critic critic steps)
    steps: int = 200_000
    n_critic: int = 5
    batch_size: int = 64
    gen_batch_size: int = 128
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    lr_decay: str = "linear"
    ema_decay: float = 0.9999

    # model
    z_dim: int = 128
    gen_channels: int = 256
    critic_channels: int = 128
    image_size: int = 32
    # fp32, or bf16: the critic's and generator's forward passes in bfloat16 (torch autocast,
    # a Keras mixed_bfloat16 policy, bfloat16 JAX activations); weights, optimiser state, the
    # losses and the penalty's multiplier stay float32 (valr_core's precision policy).
    precision: str = "fp32"
    arch: str = "resnet"  # models.spec.ARCHS: the paper's ResNet, or the small DCGAN (digits preset)

    # Lipschitz penalty: the fields come from valr_core's config (_PenaltySettings), by its names
    # and with its defaults; the ``paper`` preset sets the paper's choices explicitly.
    penalty: str = "valp"
    mode: str | None = None  # None: the penalty's paper mode (train.penalties.PAPER_MODES)
    # Weight clipping (the original WGAN): every critic parameter clamped to [-C, C] after each
    # critic step (train.loop; each trainer's clip_critic_weights); 0: off.
    clip_weights: float = 0.0

    # reproducibility / io
    seed: int = 0
    data_seed: int | None = None  # None: derived from seed
    out: str = "runs/valr"
    out_exists_ok: bool = False  # write into a non-empty --out that is not a valr run (train.resume)
    resume: str | None = None  # None: fresh run; "auto": latest in out dir if any; else a path
    device: str = "auto"

    # NaN/Inf loss: 0 stops the run; N > 0 rolls back to the last checkpoint up to N times,
    # skipping the batches drawn since (the data stream is not rewound).
    skip_nonfinite: int = 0
    inception_weights: str | None = None
    n_sample_grid: int = 64
    tensorboard: bool = True
    progress: bool = True

    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific settings

    # -- derived -----------------------------------------------------------------------------

    @property
    def effective_data_seed(self) -> int:
        # A distinct default stream, so changing model init never changes the batches.
        return self.data_seed if self.data_seed is not None else stream_seed(self.seed, "data")

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint must match to be loadable into this run's models
        (a trainer may add its own under ``extra["architecture"]``)."""
        return {
            "z_dim": self.z_dim,
            "gen_channels": self.gen_channels,
            "critic_channels": self.critic_channels,
            "image_size": self.image_size,
            "image_channels": 3,
            **({"arch": self.arch} if self.arch != "resnet" else {}),  # resnet checkpoints predate it
            **dict(self.extra.get("architecture", {})),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Settings from JSON, each checked against its declared type (bool is not an int,
        a number is not a string); ConfigError names the key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        for key, value in d.items():
            if not _has_declared_type(value, fields[key].type):
                raise ConfigError(f"{key!r} must be {_declared(fields[key].type)}, got {json_repr(value)}")
        values = dict(d)
        if isinstance(values.get("clip"), list):  # JSON has no tuples
            values["clip"] = tuple(values["clip"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # -- validation --------------------------------------------------------------------------

    def penalty_settings(self) -> dict[str, Any]:
        """The penalty fields, by the core's names (what ``train.penalties.make_penalty`` takes)."""
        settings = {name: getattr(self, name) for name in PENALTY_FIELDS}
        if settings["mode"] is None:
            settings["mode"] = PAPER_MODES.get(self.penalty, _CORE.mode)
        return settings

    def _validate_penalty(self) -> None:
        """The core's validation (one rule set), its message prefixed with the flag's name."""
        try:
            ValpConfig(**self.penalty_settings())
        except (TypeError, ValueError) as e:
            field_name = str(e).split(" ", 1)[0].split("[", 1)[0]
            where = FLAGS[field_name][0] if field_name in FLAGS else "--" + self.penalty
            raise ConfigError(f"{where}: {e}") from None

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the flag of the first invalid setting; returns self."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{flag(name)} {rule}, got {getattr(self, name)!r}")

        need(self.preset in PRESETS, "preset", f"must be one of {tuple(PRESETS)}")
        need(self.data in DATASETS, "data", f"must be one of {DATASETS}")
        if self.data == "folder" and not self.data_path:
            raise ConfigError("--data folder needs --data-path pointing to a folder of images")
        for name in ("steps", "n_critic", "batch_size", "gen_batch_size", "z_dim", "gen_channels",
                     "critic_channels", "keep_checkpoints", "n_sample_grid"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(self.image_size == 32, "image_size", "must be 32 (the reference architecture)")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        need(self.arch in ARCHS, "arch", f"must be one of {ARCHS}")
        need(self.clip_weights >= 0, "clip_weights", "must be >= 0 (0: off)")
        for name in ("log_every", "sample_every", "checkpoint_every", "eval_every", "eval_samples",
                     "final_eval_samples", "skip_nonfinite"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name,
                 "must be an integer >= 0 (0 disables)")
        for name in ("eval_samples", "final_eval_samples"):
            need(getattr(self, name) == 0 or getattr(self, name) >= 10, name, "must be 0 or >= 10 (IS uses 10 splits)")
        if self.eval_every > 0:
            need(self.eval_samples >= 10, "eval_samples", "must be >= 10 when --eval-every is set")
        need(self.lr_g > 0, "lr_g", "must be > 0")
        need(self.lr_d > 0, "lr_d", "must be > 0")
        need(0.0 <= self.beta1 < 1.0, "beta1", "must be in [0, 1)")
        need(0.0 <= self.beta2 < 1.0, "beta2", "must be in [0, 1)")
        need(self.lr_decay in LR_DECAYS, "lr_decay", f"must be one of {LR_DECAYS}")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1)")
        need(self.penalty in PENALTIES, "penalty", f"must be one of {PENALTIES}")
        self._validate_penalty()
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and 0 <= value <= MAX_SEED), name,
                 f"must be an integer in [0, {MAX_SEED}]")
        need(bool(_DEVICE_RE.match(self.device)), "device", "must be auto, cpu, cuda[:N], gpu[:N] or tpu[:N]")
        need(bool(self.out), "out", "must be a directory path")
        need(self.resume is None or bool(self.resume), "resume", "must be 'auto' or a checkpoint path")
        return self


def ignored_settings(cfg: TrainConfig) -> dict[str, str]:
    """The settings the chosen penalty and mode never read, each with what is used instead: a
    flag given for one of these is refused rather than silently ignored."""
    if cfg.penalty == "none":
        return dict.fromkeys(PENALTY_FIELDS, "--penalty none adds no penalty (weight clipping is --clip-weights)")
    ignored = {}
    if cfg.penalty != "valp":
        ignored = dict.fromkeys(VALP_FIELDS, f"--penalty {cfg.penalty} has no VALP settings (it uses --lam, "
                                             "--mode, --rho and --reduction)")
    mode = cfg.penalty_settings()["mode"]
    if mode == "al":
        ignored["lam"] = "with --mode al (VALP's default) the penalty is mu * R(L) + rho/2 * R(L^2): set --rho instead"
    else:
        ignored["rho"] = f"with --mode {mode} the penalty's weight is --lam; --rho is the augmented Lagrangian's (--mode al)"
    return ignored


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, Any]] = {
    # Paper section 4: CIFAR-10 ResNet WGAN, 200k iterations, VALP with the augmented Lagrangian on both
    # batches (fraction 1: the paper's headline setting; --valp-fraction 0.5 is the half batch).
    "paper": {"clip": DATA_RANGE, "fraction": 1.0},
    # Minutes on 2 CPU cores: digits (ships with scikit-learn), tiny widths, 40 x 5 critic steps.
    "smoke": {
        "clip": DATA_RANGE,
        "data": "digits",
        "steps": 40,
        "batch_size": 32,
        "gen_batch_size": 32,
        "gen_channels": 32,
        "critic_channels": 32,
        "z_dim": 64,
        "ema_decay": 0.99,
        "out": "runs/smoke",
        "log_every": 5,
        "sample_every": 20,
        "checkpoint_every": 20,
        "eval_every": 0,
        "eval_samples": 0,
        "final_eval_samples": 0,
    },
    # The main job on 2 CPU cores (about 5 minutes with torch): the bundled digits, the small
    # DCGAN (models/*_dcgan.py), VALP with the augmented Lagrangian on both batches. Quality
    # (FD-digits, KID, classes covered: train.evaluation.digits) at the end.
    "digits": {
        "clip": DATA_RANGE,
        "fraction": 1.0,
        "data": "digits",
        "arch": "dcgan",
        "flip": False,  # digits are not mirror-symmetric
        "steps": 800,
        "n_critic": 2,
        "batch_size": 64,
        "gen_batch_size": 64,
        "gen_channels": 32,
        "critic_channels": 32,
        "z_dim": 64,
        "lr_g": 5e-4,
        "lr_d": 5e-4,
        "beta1": 0.5,
        "ema_decay": 0.99,
        "out": "runs/digits",
        "log_every": 25,
        "sample_every": 200,
        "checkpoint_every": 200,
        "eval_every": 200,
        "eval_samples": 1000,
        "final_eval_samples": 2000,
    },
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {tuple(PRESETS)}, got {name!r}")
    return TrainConfig(preset=name, **{**PRESETS[name], **overrides})


def lr_at(base_lr: float, step: int, total_steps: int, decay: str = "linear") -> float:
    """Learning rate for the update made at 0-based iteration ``step`` (linear: to 0 at the end)."""
    if decay == "constant":
        return base_lr
    return base_lr * max(0.0, 1.0 - step / total_steps)


# ----------------------------------------------------------------------------- argparse


def _bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)


def build_parser(framework: str = "", description: str | None = None) -> argparse.ArgumentParser:
    """The command line shared by all trainers. Unset flags (None) keep the preset's value."""
    p = argparse.ArgumentParser(
        formatter_class=_PresetDefaultsFormatter,
        prog=f"python -m train.{framework}_wgan" if framework else None,
        description=description or f"WGAN with VALP / GP / LP on CIFAR-10 ({framework or 'any framework'})",
    )
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=tuple(PRESETS), default="paper", help="base settings (default: paper)")
    g.add_argument("--out", default=None, help="output directory (logs, samples, checkpoints)")
    g.add_argument("--out-exists-ok", dest="out_exists_ok", action="store_true", default=None,
                   help="write into a non-empty --out that holds no valr run (its files are never overwritten)")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from the latest checkpoint in --out (or from the given checkpoint file/dir)")
    g.add_argument("--device", default=None, help="auto, cpu, cuda[:N], gpu[:N], tpu[:N]")
    g.add_argument("--seed", type=int, default=None, help="the run's seed; every random stream derives from it (train.seeds)")
    g.add_argument("--data-seed", type=int, default=None, help="seed of the data order/augmentation stream")
    g.add_argument("--steps", type=int, default=None, help="generator iterations")
    g.add_argument("--config", dest="config_file", default=None, metavar="RUN_DIR/config.json",
                   help="rerun a saved run: its config.json is the base (instead of --preset); flags given override it")
    g.add_argument("--debug", action="store_true", default=None,
                   help="on an error, print the full traceback (default: one line)")
    g.add_argument("--print-config", dest="print_config", action="store_true", default=None,
                   help="print the resolved settings (preset, --config, --resume and flags applied) as JSON and exit")
    _bool_flag(g, "progress", "tqdm progress bar")
    _bool_flag(g, "tensorboard", "write TensorBoard event files")

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, default=None, help="dataset")
    g.add_argument("--data-path", default=None, help="CIFAR-10 archive/folder (or env VALR_CIFAR10) or image folder")
    _bool_flag(g, "download", "download CIFAR-10 when missing and reachable")
    _bool_flag(g, "flip", "random horizontal flips")
    _bool_flag(g, "dequantize", "uniform dequantisation noise")

    g = p.add_argument_group("optimisation")
    g.add_argument("--n-critic", type=int, default=None, help="critic steps per generator step")
    g.add_argument("--batch-size", type=int, default=None, help="real (and fake) samples per critic step")
    g.add_argument("--gen-batch-size", type=int, default=None, help="latents per generator step")
    g.add_argument("--lr", type=float, default=None, help="sets both --lr-g and --lr-d")
    g.add_argument("--lr-g", type=float, default=None, help="generator Adam learning rate")
    g.add_argument("--lr-d", type=float, default=None, help="critic Adam learning rate")
    g.add_argument("--beta1", type=float, default=None, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=None, help="Adam beta2")
    g.add_argument("--lr-decay", choices=LR_DECAYS, default=None, help="learning-rate schedule")
    g.add_argument("--ema-decay", type=float, default=None, help="decay of the generator weights' EMA used for samples")

    g = p.add_argument_group("model")
    g.add_argument("--z-dim", type=int, default=None, help="latent size")
    g.add_argument("--gen-channels", type=int, default=None, help="generator width")
    g.add_argument("--critic-channels", type=int, default=None, help="critic width")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="bf16: critic and generator forward passes in bfloat16 (torch autocast, Keras "
                        "mixed_bfloat16, bf16 JAX activations); weights, optimiser, losses and mu stay float32")
    g.add_argument("--arch", choices=ARCHS, default=None,
                   help="model pair: the paper's ResNet or the small DCGAN of the digits preset")

    g = p.add_argument_group("penalty (valr_core's settings; defaults: the paper preset's)")
    g.add_argument("--penalty", choices=PENALTIES, default=None, help="which Lipschitz penalty")
    g.add_argument("--clip-weights", dest="clip_weights", type=float, default=None, metavar="C",
                   help="weight clipping (original WGAN; with --penalty none): clamp every critic parameter "
                        "to [-C, C] after each critic step (SPEC: C = 0.01); 0: off")
    for name, (option, kind, text) in FLAGS.items():
        if kind == "bool":
            g.add_argument(option, dest=name, action=_ClipAction, nargs=0, default=None,
                           help=f"{text}; --no-{option[2:]} turns it off")
            g.add_argument("--no-" + option[2:], dest=name, action=_ClipAction, nargs=0, help=argparse.SUPPRESS)
        elif isinstance(kind, tuple):
            g.add_argument(option, dest=name, choices=kind, default=None, help=text)
        else:
            g.add_argument(option, dest=name, type=kind, default=None, metavar=name.upper(), help=text)

    g = p.add_argument_group("logging and evaluation")
    for name, (_, text) in COUNTS.items():
        g.add_argument(flag(name), dest=name, type=int, default=None, help=text)
    g.add_argument("--inception-weights", default=None, help="InceptionV3 weights (or env VALR_INCEPTION_WEIGHTS)")
    g.add_argument("--skip-nonfinite", dest="skip_nonfinite", type=int, default=None,
                   help="on a NaN/Inf loss, roll back to the last checkpoint and skip the batches since, at most N times "
                        "(default 0: stop)")
    return p


# Penalty flags: core field -> (flag, type or choices, help). The flag is the core's name, with
# "valp-" in front of the settings only VALP has.
FLAGS: dict[str, tuple[str, Any, str]] = {
    "lam": ("--lam", float, "penalty weight lambda of gp / lp and of the squared / linear modes"),
    "reduction": ("--reduction", get_args(Reduction), "reduction R of the per-sample violations over the batch"),
    "mode": ("--mode", get_args(Mode), "al: mu*R(L) + rho/2*R(L^2) with mu's update; squared: lam*R(L^2); "
             "linear: lam*R(L) (default: each penalty's paper mode, " + ", ".join(f"{k} {v}" for k, v in PAPER_MODES.items()) + ")"),
    "rho": ("--rho", float, "augmented-Lagrangian coefficient rho"),
    "K": ("--valp-k", float, "VALP: Lipschitz constant K to enforce"),
    "xi": ("--valp-xi", float, "VALP: power-iteration step xi"),
    "eps_min": ("--valp-eps-min", float, "VALP: smallest perturbation radius"),
    "eps_max": ("--valp-eps-max", float, "VALP: largest perturbation radius"),
    "n_power": ("--valp-n-power", int, "VALP: power iterations"),
    "start": ("--valp-start", get_args(Start), "VALP: distribution of the initial direction"),
    "fraction": ("--valp-fraction", float, "VALP: fraction of the batch regularised (0.5 = the half-batch variant)"),
    "clip": ("--valp-clip", "bool", f"VALP: clip x + r_adv to the data range {list(DATA_RANGE)}"),
}


class _PresetDefaultsFormatter(argparse.HelpFormatter):
    """Shows each setting's value under the chosen preset in --help (``--preset smoke --help``:
    the smoke values), like argparse's ArgumentDefaultsHelpFormatter does for plain defaults."""

    def __init__(self, prog: str, preset: str = "paper", **kwargs: Any) -> None:
        super().__init__(prog, **kwargs)
        self._preset = preset

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        if action.dest in names and "default:" not in text and text != argparse.SUPPRESS:
            value = PRESETS[self._preset].get(action.dest, getattr(TrainConfig, action.dest))
            text = f"{text} ({self._preset}: {value})".strip()
        return text


def _show_preset_in_help(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Read ``--preset`` ahead of parsing, so that ``--help`` (wherever it stands) shows its values."""
    ahead = argparse.ArgumentParser(add_help=False)
    ahead.add_argument("--preset", default="paper")
    preset = ahead.parse_known_args(argv)[0].preset
    if preset in PRESETS and isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, _PresetDefaultsFormatter):
        parser.formatter_class = functools.partial(_PresetDefaultsFormatter, preset=preset)  # type: ignore[assignment]


class _ClipAction(argparse.Action):
    """--valp-clip / --no-valp-clip: the core's clip range is the data range, or None."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        # False, not None: None means "flag not given" to config_from_args.
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


def config_from_args(args: argparse.Namespace, framework: str = "") -> TrainConfig:
    """Preset + explicitly given flags -> validated TrainConfig (ConfigError names the flag)."""
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("preset", "lr", "debug", "config_file", "print_config")}
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("lr_g", args.lr)
        overrides.setdefault("lr_d", args.lr)
    if "clip" in overrides:
        overrides["clip"] = DATA_RANGE if overrides["clip"] else None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    # Flags a trainer adds to the shared parser land in cfg.extra.
    extra = {k: overrides.pop(k) for k in list(overrides) if k not in known}
    config_file = getattr(args, "config_file", None)
    if config_file:
        saved = saved_settings(config_file)
        cfg = TrainConfig.from_dict({**saved, "resume": None, **overrides})
    else:
        cfg = preset_config(args.preset, **overrides)
    cfg.extra.update(extra)
    if framework:
        cfg.framework = framework
    cfg.validate()
    for name in overrides:
        reason = ignored_settings(cfg).get(name)
        if reason:
            option = FLAGS[name][0] if name in FLAGS else flag(name)
            raise ConfigError(f"{option} has no effect here: {reason}")
    return cfg


def parse_config(argv: Sequence[str] | None = None, framework: str = "",
                 parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    """Parse ``argv``; invalid values exit via ``parser.error`` with the flag named."""
    parser = parser or build_parser(framework)
    _show_preset_in_help(parser, argv)
    args = parser.parse_args(argv)
    try:
        return config_from_args(args, framework)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


# ----------------------------------------------------------------------------- saved runs

RUN_INFO_KEY = "run"  # config.json's record of the launch (train.resume owns every resume rule)


def saved_settings(path: str | Any) -> dict[str, Any]:
    """The settings of a saved run's config.json (its launch record dropped); ConfigError names
    ``--config`` when the file is missing or not a config."""
    import json
    from pathlib import Path

    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {p}: cannot read a saved config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: not a saved config (expected a JSON object)")
    data.pop(RUN_INFO_KEY, None)
    try:
        TrainConfig.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"--config {p}: {e}") from None
    return data
