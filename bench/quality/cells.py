"""The study's cells (one regulariser each) and the run settings every cell shares.

Every cell is the ``digits`` preset of the trainers with only the regulariser changed; the
evaluation cadence is the study's own (every ``eval_every`` iterations, 2000 EMA samples at
each point, so the curve and the final value are one estimator)."""

from __future__ import annotations

import dataclasses
from typing import Any

# Settings each cell passes to the trainer config, by the config's field names (= the flags).
CELLS: dict[str, dict[str, Any]] = {
    "valp": {"penalty": "valp", "mode": "al", "fraction": 1.0},  # AL on both batches (the paper's setting)
    "valp-half": {"penalty": "valp", "mode": "al", "fraction": 0.5},
    "gp": {"penalty": "gp"},
    "lp": {"penalty": "lp"},
    "sn": {"penalty": "none", "critic_norm": "spectral"},  # spectral normalisation of the critic
    "wc": {"penalty": "none", "clip_weights": 0.01},  # the original WGAN's weight clipping
    "none": {"penalty": "none"},
}
DESCRIPTIONS = {
    "valp": "VALP, augmented Lagrangian, both batches (fraction 1)",
    "valp-half": "VALP, augmented Lagrangian, half of each batch (fraction 0.5)",
    "gp": "gradient penalty (WGAN-GP)",
    "lp": "Lipschitz penalty (one-sided GP)",
    "sn": "spectral normalisation of the critic, no penalty",
    "wc": "weight clipping at 0.01, no penalty (the original WGAN)",
    "none": "no penalty, no constraint",
}
DEFAULT_CELLS: dict[str, tuple[str, ...]] = {"torch": tuple(CELLS), "jax": ("valp", "gp")}
PRESET = "digits"
DEFAULT_SEEDS = 5
EVAL_SAMPLES = 2000  # the preset's final evaluation size, used at every curve point
REFERENCE = "valp"  # the cell every other cell is compared with


class CellError(ValueError):
    """A cell the trainers cannot run as defined (e.g. a setting they do not know yet)."""


def default_iterations() -> int:
    from train.config import PRESETS

    return int(PRESETS[PRESET]["steps"])


def cell_config(framework: str, cell: str, seed: int, iterations: int, eval_every: int, out: str) -> Any:
    """The validated ``TrainConfig`` of one run; ``CellError`` (one line, saying why) when the
    trainer config cannot take the cell."""
    from train.config import ConfigError, TrainConfig, preset_config

    if cell not in CELLS:
        raise CellError(f"unknown cell {cell!r} (one of {', '.join(CELLS)})")
    settings = CELLS[cell]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = sorted(set(settings) - known)
    if missing:
        flags = ", ".join(f"{k}={settings[k]!r}" for k in missing)
        raise CellError(f"the trainer config does not know {flags} yet")
    try:
        return preset_config(
            PRESET, **settings, out=out, seed=seed, steps=iterations, framework=framework, device="cpu",
            progress=False, tensorboard=False, log_every=eval_every, eval_every=eval_every,
            eval_samples=EVAL_SAMPLES, final_eval_samples=EVAL_SAMPLES, sample_every=0,
            checkpoint_every=0).validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CellError(" ".join(str(e).split())) from None
