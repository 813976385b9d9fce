"""The one table of training settings: each declared once, with its type, default, flag, help,
the presets that override it, whether a resumed run may change it, and its rule.

``TrainConfig``, the command line, ``--help`` per preset, ``--config`` type checks, the resume
rules and validation are all generated from ``SETTINGS`` (train/config.py). The penalty settings
are the core's config fields (``valr_core.ValpConfig``): their type and default come from there,
and the core validates them, so nothing here repeats the core's rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.spec import ARCHS, CRITIC_NORMS
from train.penalties import DATA_RANGE, PAPER_MODES, PENALTIES, PENALTY_FIELDS
from train.seeds import MAX_SEED
from valr_core import ValpConfig

PRESET_NAMES = ("paper", "smoke", "digits")
DATASETS = ("cifar10", "digits", "folder")
LR_DECAYS = ("linear", "constant")
PRECISIONS = ("fp32", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|gpu(:\d+)?|tpu(:\d+)?)$")


@dataclass(frozen=True)
class Setting:
    """One training setting. ``flag``: "" derives ``--name-with-dashes``, None means no flag
    (set by a preset, ``--config`` or the trainer). ``check(value)`` is the rule ``rule`` states."""

    name: str
    kind: type  # the JSON/command-line type: int, float, str, bool, dict or tuple (a number pair)
    default: Any
    help: str
    group: str
    flag: str | None = ""
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is a value (unset / derived)
    presets: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False  # a resumed run may change it: where and how long it runs, what it writes
    check: Callable[[Any], bool] | None = None
    rule: str = ""
    metavar: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def _at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _positive(v: float) -> bool:
    return v > 0


def _unit(v: float) -> bool:
    return 0.0 <= v < 1.0


def _seed(v: int) -> bool:
    return 0 <= v <= MAX_SEED


def _sample_count(v: int) -> bool:
    return v == 0 or v >= 10


def _count(name: str, default: int, help_text: str, presets: Mapping[str, Any], minimum: int = 0) -> Setting:
    rule = "must be an integer >= 1" if minimum else "must be an integer >= 0 (0 disables)"
    check = _at_least(minimum)
    if name.endswith("eval_samples"):  # IS uses 10 splits
        check, rule = _sample_count, "must be 0 or >= 10 (IS uses 10 splits)"
    return Setting(name, int, default, help_text, "logging and evaluation", presets=presets, resume=True,
                   check=check, rule=rule)


def _ints(names: str, group: str, help_texts: Mapping[str, str], defaults: Mapping[str, int],
          presets: Mapping[str, Mapping[str, Any]]) -> list[Setting]:
    return [Setting(n, int, defaults[n], help_texts[n], group, presets=presets.get(n, {}), check=_at_least(1),
                    rule="must be an integer >= 1") for n in names.split()]


SMOKE_DIGITS = {"smoke": "digits", "digits": "digits"}

# The penalty settings: the core's fields, with the flag and help the trainers show. The flag is
# the core's name, with "valp-" in front of the settings only VALP has.
_PENALTY_FLAGS: dict[str, tuple[str, str]] = {
    "lam": ("--lam", "penalty weight lambda of gp / lp and of the squared / linear modes"),
    "reduction": ("--reduction", "reduction R of the per-sample violations over the batch"),
    "mode": ("--mode", "al: mu*R(L) + rho/2*R(L^2) with mu's update; squared: lam*R(L^2); linear: lam*R(L) "
             "(unset: each penalty's paper mode, " + ", ".join(f"{k} {v}" for k, v in PAPER_MODES.items()) + ")"),
    "rho": ("--rho", "augmented-Lagrangian coefficient rho"),
    "K": ("--valp-k", "VALP: Lipschitz constant K to enforce"),
    "xi": ("--valp-xi", "VALP: power-iteration step xi"),
    "eps_min": ("--valp-eps-min", "VALP: smallest perturbation radius"),
    "eps_max": ("--valp-eps-max", "VALP: largest perturbation radius"),
    "n_power": ("--valp-n-power", "VALP: power iterations"),
    "start": ("--valp-start", "VALP: distribution of the initial direction"),
    "fraction": ("--valp-fraction", "VALP: fraction of the batch regularised (0.5 = the half-batch variant)"),
    "clip": ("--valp-clip", f"VALP: clip x + r_adv to the data range {list(DATA_RANGE)}"),
    "eps_scale": ("--valp-eps-scale", "VALP: 'auto' multiplies the radii by the batch's data scale "
                  "(docs/conventions-eps-scale.md); unset: the paper's absolute radii"),
}
_PENALTY_CHOICES: dict[str, tuple[Any, ...]] = {
    "reduction": ("mean", "sum", "max"), "mode": ("squared", "linear", "al"), "start": ("uniform", "gaussian"),
    "eps_scale": ("none", "auto"),
}
# Every preset regularises x + r_adv inside the data range; paper and digits use both batches.
_PENALTY_PRESETS: dict[str, dict[str, Any]] = {
    "clip": dict.fromkeys(PRESET_NAMES, DATA_RANGE), "fraction": {"paper": 1.0, "digits": 1.0},
}


def _core_settings() -> list[Setting]:
    core = {f.name: f for f in dataclasses.fields(ValpConfig)}
    out = []
    for name in PENALTY_FIELDS:
        if name not in core:
            continue
        default = core[name].default
        kind = tuple if name == "clip" else str if name in _PENALTY_CHOICES else type(default)
        optional = default is None or name == "mode"
        flag, help_text = _PENALTY_FLAGS[name]
        out.append(Setting(name, kind, None if name == "mode" else default, help_text, "penalty", flag,
                           choices=_PENALTY_CHOICES.get(name), optional=optional,
                           presets=_PENALTY_PRESETS.get(name, {}), metavar=name.upper()))
    return out


SETTINGS: tuple[Setting, ...] = (
    # run
    Setting("preset", str, "paper", "base settings", "run", None, choices=PRESET_NAMES, resume=True),
    Setting("framework", str, "", "the trainer's framework (set by the trainer)", "run", None, resume=True),
    Setting("out", str, "runs/valr", "output directory (logs, samples, checkpoints)", "run",
            presets={"smoke": "runs/smoke", "digits": "runs/digits"}, resume=True, check=bool, rule="must be a directory path"),
    Setting("out_exists_ok", bool, False, "write into a non-empty --out that holds no valr run (its files are "
            "never overwritten)", "run", resume=True),
    Setting("resume", str, None, "resume from the latest checkpoint in --out (or from the given checkpoint "
            "file/dir)", "run", optional=True, resume=True, check=bool, rule="must be 'auto' or a checkpoint path"),
    Setting("device", str, "auto", "auto, cpu, cuda[:N], gpu[:N], tpu[:N]", "run", resume=True,
            check=lambda v: bool(_DEVICE_RE.match(v)), rule="must be auto, cpu, cuda[:N], gpu[:N] or tpu[:N]"),
    Setting("seed", int, 0, "the run's seed; every random stream derives from it (train.seeds)", "run",
            check=_seed, rule=f"must be an integer in [0, {MAX_SEED}]"),
    Setting("data_seed", int, None, "seed of the data order/augmentation stream (unset: derived from --seed)",
            "run", optional=True, check=_seed, rule=f"must be an integer in [0, {MAX_SEED}]"),
    Setting("steps", int, 200_000, "generator iterations", "run", presets={"smoke": 40, "digits": 800},
            resume=True, check=_at_least(1), rule="must be an integer >= 1"),
    Setting("progress", bool, True, "tqdm progress bar", "run", resume=True),
    Setting("tensorboard", bool, True, "write TensorBoard event files", "run", resume=True),
    # data
    Setting("data", str, "cifar10", "dataset", "data", choices=DATASETS, presets=SMOKE_DIGITS),
    Setting("data_path", str, None, "CIFAR-10 archive/folder (or env VALR_CIFAR10) or image folder", "data",
            optional=True, resume=True),
    Setting("download", bool, True, "download CIFAR-10 when missing and reachable", "data", resume=True),
    Setting("flip", bool, True, "random horizontal flips", "data", presets={"digits": False}),  # digits aren't symmetric
    Setting("dequantize", bool, True, "uniform dequantisation noise", "data"),
    # optimisation
    *_ints("n_critic batch_size gen_batch_size", "optimisation",
           {"n_critic": "critic steps per generator step", "batch_size": "real (and fake) samples per critic step",
            "gen_batch_size": "latents per generator step"},
           {"n_critic": 5, "batch_size": 64, "gen_batch_size": 128},
           {"n_critic": {"digits": 2}, "batch_size": {"smoke": 32, "digits": 64},
            "gen_batch_size": {"smoke": 32, "digits": 64}}),
    Setting("lr_g", float, 2e-4, "generator Adam learning rate", "optimisation", presets={"digits": 5e-4},
            check=_positive, rule="must be > 0"),
    Setting("lr_d", float, 2e-4, "critic Adam learning rate", "optimisation", presets={"digits": 5e-4},
            check=_positive, rule="must be > 0"),
    Setting("beta1", float, 0.0, "Adam beta1", "optimisation", presets={"digits": 0.5}, check=_unit,
            rule="must be in [0, 1)"),
    Setting("beta2", float, 0.9, "Adam beta2", "optimisation", check=_unit, rule="must be in [0, 1)"),
    Setting("lr_decay", str, "linear", "learning-rate schedule (linear: to 0 at the last iteration)",
            "optimisation", choices=LR_DECAYS),
    Setting("ema_decay", float, 0.9999, "decay of the generator weights' EMA used for samples", "optimisation",
            presets={"smoke": 0.99, "digits": 0.99}, check=_unit, rule="must be in [0, 1)"),
    # model
    *_ints("z_dim gen_channels critic_channels", "model",
           {"z_dim": "latent size", "gen_channels": "generator width", "critic_channels": "critic width"},
           {"z_dim": 128, "gen_channels": 256, "critic_channels": 128},
           {"z_dim": {"smoke": 64, "digits": 64}, "gen_channels": {"smoke": 32, "digits": 32},
            "critic_channels": {"smoke": 32, "digits": 32}}),
    Setting("image_size", int, 32, "image side (the reference architecture's)", "model", None,
            check=lambda v: v == 32, rule="must be 32 (the reference architecture)"),
    Setting("precision", str, "fp32", "bf16: critic and generator forward passes in bfloat16 (torch autocast, "
            "Keras mixed_bfloat16, bf16 JAX activations); weights, optimiser, losses and mu stay float32",
            "model", choices=PRECISIONS),
    Setting("arch", str, "resnet", "model pair: the paper's ResNet or the small DCGAN of the digits preset",
            "model", choices=ARCHS, presets={"digits": "dcgan"}),
    Setting("critic_norm", str, "none", "spectral: every critic layer spectrally normalised (the framework's own "
            "implementation; SN-GAN is --penalty none --critic-norm spectral)", "model", choices=CRITIC_NORMS),
    # penalty
    Setting("penalty", str, "valp", "which Lipschitz penalty", "penalty", choices=PENALTIES),
    Setting("clip_weights", float, 0.0, "weight clipping (original WGAN; with --penalty none): clamp every "
            "critic parameter to [-C, C] after each critic step (SPEC: C = 0.01); 0: off", "penalty",
            check=_at_least(0), rule="must be >= 0 (0: off)", metavar="C"),
    *_core_settings(),
    # logging and evaluation (intervals in generator iterations)
    _count("log_every", 100, "generator iterations between log rows (0: off)", {"smoke": 5, "digits": 25}),
    _count("sample_every", 1000, "generator iterations between sample grids (0: off)", {"smoke": 20, "digits": 200}),
    _count("checkpoint_every", 1000, "generator iterations between checkpoints (0: only at the end)",
           {"smoke": 20, "digits": 200}),
    _count("keep_checkpoints", 3, "checkpoints kept on disk", {}, minimum=1),
    _count("eval_every", 1000, "generator iterations between IS/FID/KID evaluations (0: off)",
           {"smoke": 0, "digits": 200}),
    _count("eval_samples", 10_000, "samples per evaluation (0 or >= 10: IS uses 10 splits)",
           {"smoke": 0, "digits": 1000}),
    _count("final_eval_samples", 50_000, "samples of the final evaluation (0 or >= 10)", {"smoke": 0, "digits": 2000}),
    Setting("n_sample_grid", int, 64, "images in each sample grid", "logging and evaluation", check=_at_least(1),
            rule="must be an integer >= 1"),
    Setting("inception_weights", str, None, "InceptionV3 weights (or env VALR_INCEPTION_WEIGHTS)",
            "logging and evaluation", optional=True, resume=True),
    Setting("skip_nonfinite", int, 0, "on a NaN/Inf loss, roll back to the last checkpoint and skip the batches "
            "since, at most N times (0: stop)", "logging and evaluation", resume=True, check=_at_least(0),
            rule="must be an integer >= 0 (0 disables)"),
    Setting("extra", dict, None, "trainer-specific settings (flags a trainer adds)", "run", None),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
PRESETS: dict[str, dict[str, Any]] = {p: {s.name: s.presets[p] for s in SETTINGS if p in s.presets}
                                      for p in PRESET_NAMES}
RESUME_OVERRIDES = frozenset(s.name for s in SETTINGS if s.resume)
