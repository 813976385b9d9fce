"""Training configuration shared by the torch, TF and JAX WGAN trainers.

``TrainConfig`` holds every knob; presets give the paper setup (SPEC "The reference training
setup") and a smoke setup that finishes in minutes on 2 CPU cores. ``build_parser`` is the one
command line all three trainers expose; flags left unset keep the preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PENALTIES = ("valp", "gp", "lp", "none")
PENALTY_MODES = ("al", "plain")
REDUCTIONS = ("mean", "sum", "max")
DIRECTIONS = ("uniform", "gaussian")
LR_DECAYS = ("linear", "constant")
DATASETS = ("cifar10", "digits", "folder")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|gpu(:\d+)?|tpu(:\d+)?)$")


class ConfigError(ValueError):
    """An invalid setting; the message names the command-line flag."""


def flag(name: str) -> str:
    """The command-line flag of a TrainConfig field."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
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

    # Lipschitz penalty
    penalty: str = "valp"
    penalty_mode: str = "al"  # VALP only: augmented Lagrangian (paper) or plain lambda * reduce(L^2)
    penalty_weight: float = 10.0  # lambda for gp / lp / plain VALP
    penalty_reduce: str = "mean"
    rho: float = 0.01  # AL penalty coefficient (paper: rho = lambda = 0.01)
    valp_fraction: float = 0.5
    valp_k: float = 1.0
    valp_xi: float = 10.0
    valp_eps_min: float = 0.1
    valp_eps_max: float = 10.0
    valp_power_iters: int = 1
    valp_direction: str = "uniform"
    valp_clip: bool = True

    # reproducibility / io
    seed: int = 0
    data_seed: int | None = None  # None: derived from seed
    out: str = "runs/valr"
    resume: str | None = None  # None: fresh run; "auto": latest in out dir if any; else a path
    device: str = "auto"

    # intervals (in generator iterations; 0 disables)
    log_every: int = 100
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # NaN/Inf loss: 0 stops the run; N > 0 rolls back to the last checkpoint up to N times,
    # skipping the batches drawn since (the data stream is not rewound).
    skip_nonfinite: int = 0
    eval_every: int = 1000
    eval_samples: int = 10_000
    final_eval_samples: int = 50_000
    inception_weights: str | None = None
    n_sample_grid: int = 64
    tensorboard: bool = True
    progress: bool = True

    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific settings

    # -- derived -----------------------------------------------------------------------------

    @property
    def effective_data_seed(self) -> int:
        # A distinct default stream, so changing model init never changes the batches.
        return self.data_seed if self.data_seed is not None else self.seed + 1_000_003

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint must match to be loadable into this run's models
        (a trainer may add its own under ``extra["architecture"]``)."""
        return {
            "z_dim": self.z_dim,
            "gen_channels": self.gen_channels,
            "critic_channels": self.critic_channels,
            "image_size": self.image_size,
            "image_channels": 3,
            **dict(self.extra.get("architecture", {})),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # -- validation --------------------------------------------------------------------------

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
                     "critic_channels", "keep_checkpoints", "valp_power_iters", "n_sample_grid"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(self.image_size == 32, "image_size", "must be 32 (the reference architecture)")
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
        need(self.penalty_mode in PENALTY_MODES, "penalty_mode", f"must be one of {PENALTY_MODES}")
        need(self.penalty_reduce in REDUCTIONS, "penalty_reduce", f"must be one of {REDUCTIONS}")
        need(self.penalty_weight >= 0, "penalty_weight", "must be >= 0")
        need(self.rho > 0, "rho", "must be > 0")
        need(0.0 < self.valp_fraction <= 1.0, "valp_fraction", "must be in (0, 1]")
        need(self.valp_k >= 0, "valp_k", "must be >= 0")
        need(self.valp_xi > 0, "valp_xi", "must be > 0")
        need(self.valp_eps_min > 0, "valp_eps_min", "must be > 0")
        need(self.valp_eps_max >= self.valp_eps_min, "valp_eps_max", f"must be >= --valp-eps-min ({self.valp_eps_min})")
        need(self.valp_direction in DIRECTIONS, "valp_direction", f"must be one of {DIRECTIONS}")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "must be an integer >= 0")
        need(self.data_seed is None or self.data_seed >= 0, "data_seed", "must be an integer >= 0")
        need(bool(_DEVICE_RE.match(self.device)), "device", "must be auto, cpu, cuda[:N], gpu[:N] or tpu[:N]")
        need(bool(self.out), "out", "must be a directory path")
        need(self.resume is None or bool(self.resume), "resume", "must be 'auto' or a checkpoint path")
        return self


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, Any]] = {
    # SPEC: CIFAR-10 ResNet WGAN, 200k iterations, VALP with the augmented Lagrangian.
    "paper": {},
    # Minutes on 2 CPU cores: digits (ships with scikit-learn), tiny widths, 40 x 5 critic steps.
    "smoke": {
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
        prog=f"python -m train.{framework}_wgan" if framework else None,
        description=description or f"WGAN with VALP / GP / LP on CIFAR-10 ({framework or 'any framework'})",
    )
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=tuple(PRESETS), default="paper", help="base settings (default: paper)")
    g.add_argument("--out", default=None, help="output directory (logs, samples, checkpoints)")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from the latest checkpoint in --out (or from the given checkpoint file/dir)")
    g.add_argument("--device", default=None, help="auto, cpu, cuda[:N], gpu[:N], tpu[:N]")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--data-seed", type=int, default=None, help="seed of the data order/augmentation stream")
    g.add_argument("--steps", type=int, default=None, help="generator iterations")
    _bool_flag(g, "progress", "tqdm progress bar")
    _bool_flag(g, "tensorboard", "write TensorBoard event files")

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, default=None)
    g.add_argument("--data-path", default=None, help="CIFAR-10 archive/folder (or env VALR_CIFAR10) or image folder")
    _bool_flag(g, "download", "download CIFAR-10 when missing and reachable")
    _bool_flag(g, "flip", "random horizontal flips")
    _bool_flag(g, "dequantize", "uniform dequantisation noise")

    g = p.add_argument_group("optimisation")
    g.add_argument("--n-critic", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--gen-batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None, help="sets both --lr-g and --lr-d")
    g.add_argument("--lr-g", type=float, default=None)
    g.add_argument("--lr-d", type=float, default=None)
    g.add_argument("--beta1", type=float, default=None)
    g.add_argument("--beta2", type=float, default=None)
    g.add_argument("--lr-decay", choices=LR_DECAYS, default=None)
    g.add_argument("--ema-decay", type=float, default=None)

    g = p.add_argument_group("model")
    g.add_argument("--z-dim", type=int, default=None)
    g.add_argument("--gen-channels", type=int, default=None)
    g.add_argument("--critic-channels", type=int, default=None)

    g = p.add_argument_group("penalty")
    g.add_argument("--penalty", choices=PENALTIES, default=None)
    g.add_argument("--penalty-mode", choices=PENALTY_MODES, default=None, help="VALP: al (paper) or plain")
    g.add_argument("--penalty-weight", type=float, default=None, help="lambda for gp / lp / plain VALP")
    g.add_argument("--penalty-reduce", choices=REDUCTIONS, default=None)
    g.add_argument("--rho", type=float, default=None, help="augmented Lagrangian coefficient")
    g.add_argument("--valp-fraction", type=float, default=None, help="fraction of the batch VALP is applied to")
    g.add_argument("--valp-k", type=float, default=None, help="Lipschitz constant K")
    g.add_argument("--valp-xi", type=float, default=None)
    g.add_argument("--valp-eps-min", type=float, default=None)
    g.add_argument("--valp-eps-max", type=float, default=None)
    g.add_argument("--valp-power-iters", type=int, default=None)
    g.add_argument("--valp-direction", choices=DIRECTIONS, default=None)
    _bool_flag(g, "valp_clip", "clip x + r_adv to [-1, 1]")

    g = p.add_argument_group("logging and evaluation")
    for name in ("log_every", "sample_every", "checkpoint_every", "eval_every", "keep_checkpoints",
                 "eval_samples", "final_eval_samples", "n_sample_grid"):
        g.add_argument(flag(name), dest=name, type=int, default=None)
    g.add_argument("--inception-weights", default=None, help="InceptionV3 weights (or env VALR_INCEPTION_WEIGHTS)")
    g.add_argument("--skip-nonfinite", dest="skip_nonfinite", type=int, default=None,
                   help="on a NaN/Inf loss, roll back to the last checkpoint and skip the batches since, at most N times "
                        "(default 0: stop)")
    return p


def config_from_args(args: argparse.Namespace, framework: str = "") -> TrainConfig:
    """Preset + explicitly given flags -> validated TrainConfig (ConfigError names the flag)."""
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("preset", "lr")}
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("lr_g", args.lr)
        overrides.setdefault("lr_d", args.lr)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    # Flags a trainer adds to the shared parser land in cfg.extra.
    extra = {k: overrides.pop(k) for k in list(overrides) if k not in known}
    cfg = preset_config(args.preset, **overrides)
    cfg.extra.update(extra)
    if framework:
        cfg.framework = framework
    return cfg.validate()


def parse_config(argv: Sequence[str] | None = None, framework: str = "",
                 parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    """Parse ``argv``; invalid values exit via ``parser.error`` with the flag named."""
    parser = parser or build_parser(framework)
    args = parser.parse_args(argv)
    try:
        return config_from_args(args, framework)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def penalty_kwargs(cfg: Any) -> dict[str, Any]:
    """Keywords of every framework's ``make_penalty`` (train/<fw>_penalties.py) from a config."""
    return {
        "lam": cfg.penalty_weight, "reduction": cfg.penalty_reduce, "mode": cfg.penalty_mode, "rho": cfg.rho,
        "fraction": cfg.valp_fraction, "K": cfg.valp_k, "xi": cfg.valp_xi, "eps_min": cfg.valp_eps_min,
        "eps_max": cfg.valp_eps_max, "n_power": cfg.valp_power_iters, "start": cfg.valp_direction,
        "clip": (-1.0, 1.0) if cfg.valp_clip else None,
    }
