"""The one table of training settings: each declared once, with its type, default, flag, help,
the presets that override it, whether a resumed run may change it, and its rule. train/config.py
generates TrainConfig, the command line, ``--help`` and the resume rules from it; the penalty
settings are the core's ``ValpConfig`` fields (their type and default, and the core's checks)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.spec import ARCHS, CRITIC_NORMS
from train.data.images import DATASETS
from train.penalties import DATA_RANGE, PAPER_MODES, PENALTIES, VALP_FIELDS
from train.seeds import MAX_SEED
from valr_core import ValpConfig

PRESET_NAMES = ("paper", "smoke", "digits")
RUN_INFO_KEY = "run"  # config.json's record of the launch (versions, commit, argv, run_id): not a setting
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|gpu(:\d+)?|tpu(:\d+)?)$")
# Each rule as its error message states it, and its test of a value of the declared type.
_GE1, _GE0, _UNIT = "must be an integer >= 1", "must be an integer >= 0 (0 disables)", "must be in [0, 1)"
_SEED, _SAMPLES = f"must be an integer in [0, {MAX_SEED}]", "must be 0 or >= 10 (IS uses 10 splits)"
RULES: dict[str, Callable[[Any], bool]] = {
    _GE1: lambda v: v >= 1,
    _GE0: lambda v: v >= 0,
    _UNIT: lambda v: 0.0 <= v < 1.0,
    _SEED: lambda v: 0 <= v <= MAX_SEED,
    _SAMPLES: lambda v: v == 0 or v >= 10,
    "must be > 0": lambda v: v > 0,
    "must be >= 0 (0: off)": lambda v: v >= 0,
    "must be a directory path": bool,
    "must be 'auto' or a checkpoint path": bool,
    "must be auto, cpu, cuda[:N], gpu[:N] or tpu[:N]": lambda v: bool(_DEVICE_RE.match(v)),
    "must be 32 (the reference architecture)": lambda v: v == 32,
}


@dataclass(frozen=True)
class Setting:
    """One training setting. ``flag``: "" derives ``--name-with-dashes``, None means no flag
    (set by a preset, ``--config`` or the trainer). ``rule``: a key of RULES."""

    name: str
    kind: type  # the JSON/command-line type: int, float, str, bool, dict or tuple (a number pair)
    default: Any
    help: str
    flag: str | None = ""
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is a value (unset / derived)
    presets: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = False  # a resumed run may change it: where and how long it runs, what it writes
    rule: str = ""
    metavar: str | None = None
    group: str = ""  # its section of --help (set by _group)

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def check(self) -> Callable[[Any], bool] | None:
        return RULES.get(self.rule)


def _group(group: str, *settings: Setting) -> list[Setting]:
    return [dataclasses.replace(s, group=group) for s in settings]


def _count(name: str, default: int, help_text: str, presets: Mapping[str, Any], rule: str = _GE0) -> Setting:
    return Setting(name, int, default, help_text, presets=presets, resume=True, rule=rule)


_CORE = {f.name: f.default for f in dataclasses.fields(ValpConfig)}


def _core(name: str, help_text: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Setting:
    """A penalty setting: a field of the core's config, with its type and default. The flag is the
    core's name, with "valp-" in front of the settings only VALP has."""
    option = "--" + ("valp-" if name in VALP_FIELDS else "") + name.lower().replace("_", "-")
    kw = {"kind": str if choices else type(_CORE[name]), "default": _CORE[name], "optional": _CORE[name] is None,
          **kw}
    return Setting(name, help=help_text, flag=option, choices=choices, **kw)


SETTINGS: tuple[Setting, ...] = (
    *_group(
        "run",
        Setting("preset", str, "paper", "base settings", None, choices=PRESET_NAMES, resume=True),
        Setting("framework", str, "", "the trainer's framework (set by the trainer)", None, resume=True),
        Setting("out", str, "runs/valr", "output directory (logs, samples, checkpoints)",
                presets={"smoke": "runs/smoke", "digits": "runs/digits"}, resume=True,
                rule="must be a directory path"),
        Setting("out_exists_ok", bool, False, "write into a non-empty --out that holds no valr run (its files "
                "are never overwritten)", resume=True),
        Setting("resume", str, None, "resume from the latest checkpoint in --out (or from the given "
                "checkpoint file/dir)", optional=True, resume=True, rule="must be 'auto' or a checkpoint path"),
        Setting("device", str, "auto", "auto, cpu, cuda[:N], gpu[:N], tpu[:N]", resume=True,
                rule="must be auto, cpu, cuda[:N], gpu[:N] or tpu[:N]"),
        Setting("seed", int, 0, "the run's seed; every random stream derives from it (train.seeds)", rule=_SEED),
        Setting("data_seed", int, None, "seed of the data order/augmentation stream (unset: derived from "
                "--seed)", optional=True, rule=_SEED),
        Setting("steps", int, 200_000, "generator iterations", presets={"smoke": 40, "digits": 1600}, resume=True,
                rule=_GE1),
        Setting("progress", bool, True, "tqdm progress bar", resume=True),
        Setting("tensorboard", bool, True, "write TensorBoard event files", resume=True),
    ),
    *_group(
        "data",
        Setting("data", str, "cifar10", "dataset", choices=DATASETS, presets={"smoke": "digits", "digits": "digits"}),
        Setting("data_path", str, None, "CIFAR-10 archive/folder (or env VALR_CIFAR10) or image folder",
                optional=True, resume=True),
        Setting("download", bool, True, "download CIFAR-10 when missing and reachable", resume=True),
        Setting("flip", bool, True, "random horizontal flips", presets={"digits": False}),  # digits aren't symmetric
        Setting("dequantize", bool, True, "uniform dequantisation noise"),
    ),
    *_group(
        "optimisation",
        Setting("n_critic", int, 5, "critic steps per generator step", presets={"digits": 2}, rule=_GE1),
        Setting("batch_size", int, 64, "real (and fake) samples per critic step", presets={"smoke": 32, "digits": 64},
                rule=_GE1),
        Setting("gen_batch_size", int, 128, "latents per generator step", presets={"smoke": 32, "digits": 64},
                rule=_GE1),
        Setting("lr_g", float, 2e-4, "generator Adam learning rate", presets={"digits": 5e-4}, rule="must be > 0"),
        Setting("lr_d", float, 2e-4, "critic Adam learning rate", presets={"digits": 5e-4}, rule="must be > 0"),
        Setting("beta1", float, 0.0, "Adam beta1", presets={"digits": 0.5}, rule=_UNIT),
        Setting("beta2", float, 0.9, "Adam beta2", rule=_UNIT),
        Setting("lr_decay", str, "linear", "learning-rate schedule (linear: to 0 at the last iteration)",
                choices=("linear", "constant")),
        Setting("ema_decay", float, 0.9999, "decay of the generator weights' EMA used for samples",
                presets={"smoke": 0.99, "digits": 0.99}, rule=_UNIT),
    ),
    *_group(
        "model",
        Setting("z_dim", int, 128, "latent size", presets={"smoke": 64, "digits": 64}, rule=_GE1),
        Setting("gen_channels", int, 256, "generator width", presets={"smoke": 32, "digits": 32}, rule=_GE1),
        Setting("critic_channels", int, 128, "critic width", presets={"smoke": 32, "digits": 32}, rule=_GE1),
        Setting("image_size", int, 32, "image side (the reference architecture's)", None,
                rule="must be 32 (the reference architecture)"),
        Setting("precision", str, "fp32", "bf16: critic and generator forward passes in bfloat16 (torch "
                "autocast, Keras mixed_bfloat16, bf16 JAX activations); weights, optimiser, losses and mu stay "
                "float32", choices=("fp32", "bf16")),
        Setting("arch", str, "resnet", "model pair: the paper's ResNet or the small DCGAN of the digits preset",
                choices=ARCHS, presets={"digits": "dcgan"}),
        Setting("critic_norm", str, "none", "spectral: every critic layer spectrally normalised (the framework's "
                "own implementation; SN-GAN is --penalty none --critic-norm spectral)", choices=CRITIC_NORMS),
    ),
    *_group(
        "penalty",
        Setting("penalty", str, "valp", "which Lipschitz penalty", choices=PENALTIES),
        Setting("clip_weights", float, 0.0, "weight clipping (original WGAN; with --penalty none): clamp every "
                "critic parameter to [-C, C] after each critic step (SPEC: C = 0.01); 0: off",
                rule="must be >= 0 (0: off)", metavar="C"),
        _core("lam", "penalty weight lambda of gp / lp and of the squared / linear modes"),
        _core("reduction", "reduction R of the per-sample violations over the batch", ("mean", "sum", "max")),
        _core("mode", "al: mu*R(L) + rho/2*R(L^2) with mu's update; squared: lam*R(L^2); linear: lam*R(L) (unset: "
              "each penalty's paper mode, " + ", ".join(f"{k} {v}" for k, v in PAPER_MODES.items()) + ")",
              ("squared", "linear", "al"), default=None, optional=True),
        _core("rho", "augmented-Lagrangian coefficient rho"),
        _core("K", "VALP: Lipschitz constant K to enforce"),
        _core("xi", "VALP: power-iteration step xi"),
        _core("eps_min", "VALP: smallest perturbation radius"),
        _core("eps_max", "VALP: largest perturbation radius"),
        _core("n_power", "VALP: power iterations"),
        _core("start", "VALP: distribution of the initial direction", ("uniform", "gaussian")),
        # Every preset regularises x + r_adv inside the data range. digits regularises half of each
        # batch: as good as both at equal iterations (bench/results/quality_digits.md), and cheaper.
        _core("clip", f"VALP: clip x + r_adv to the data range {list(DATA_RANGE)}", kind=tuple,
              presets=dict.fromkeys(PRESET_NAMES, DATA_RANGE)),
        _core("fraction", "VALP: fraction of the batch regularised (0.5 = the half-batch variant)",
              presets={"paper": 1.0, "digits": 0.5}),
        _core("eps_scale", "VALP: 'auto' multiplies the radii by the batch's data scale "
              "(docs/conventions-eps-scale.md); unset: the paper's absolute radii", ("none", "auto")),
    ),
    *_group(  # intervals in generator iterations
        "logging and evaluation",
        _count("log_every", 100, "generator iterations between log rows (0: off)", {"smoke": 5, "digits": 25}),
        _count("sample_every", 1000, "generator iterations between sample grids (0: off)",
               {"smoke": 20, "digits": 200}),
        _count("checkpoint_every", 1000, "generator iterations between checkpoints (0: only at the end)",
               {"smoke": 20, "digits": 200}),
        _count("keep_checkpoints", 3, "checkpoints kept on disk", {}, rule=_GE1),
        _count("eval_every", 1000, "generator iterations between IS/FID/KID evaluations (0: off)",
               {"smoke": 0, "digits": 200}),
        _count("eval_samples", 10_000, "samples per evaluation (0 or >= 10: IS uses 10 splits)",
               {"smoke": 0, "digits": 1000}, rule=_SAMPLES),
        _count("final_eval_samples", 50_000, "samples of the final evaluation (0 or >= 10)",
               {"smoke": 0, "digits": 2000}, rule=_SAMPLES),
        Setting("n_sample_grid", int, 64, "images in each sample grid", rule=_GE1),
        Setting("inception_weights", str, None, "InceptionV3 weights (or env VALR_INCEPTION_WEIGHTS)",
                optional=True, resume=True),
        _count("skip_nonfinite", 0, "on a NaN/Inf loss, roll back to the last checkpoint and skip the batches "
               "since, at most N times (0: stop)", {}),
    ),
    Setting("extra", dict, None, "trainer-specific settings (flags a trainer adds)", None, group="run"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
PRESETS: dict[str, dict[str, Any]] = {p: {s.name: s.presets[p] for s in SETTINGS if p in s.presets}
                                      for p in PRESET_NAMES}
RESUME_OVERRIDES = frozenset(s.name for s in SETTINGS if s.resume)
