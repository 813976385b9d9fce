"""Chooses the trainers' and benchmarks' penalty by name: valr_core's ``VALP``, ``GP`` or ``LP``
built from the core's own config fields, or None for ``none``. Everything else (the real/fake
pairing, the statistic names, the AL state) is the core penalty object's: see train.contract."""

from __future__ import annotations

from typing import Any

from valr_core import GP, LP, VALP

PENALTIES = ("valp", "gp", "lp", "none")
# Each penalty's mode in its paper: VALP's augmented Lagrangian (eqs. 25-26); WGAN-GP's and
# WGAN-LP's fixed weight lam * R(L^2). ``--mode al --penalty lp --reduction max`` is the max-GP
# with augmented Lagrangian the paper cites as [23].
PAPER_MODES = {"valp": "al", "gp": "squared", "lp": "squared"}
DATA_RANGE = (-1.0, 1.0)  # the trainers' images: what VALP's optional clipping keeps x + r_adv in

# The settings of each penalty are the fields of its core config: one name from flag to math.
SHARED_FIELDS = ("lam", "reduction", "mode", "rho")  # every penalty's (GP, LP and VALP configs)
VALP_FIELDS = ("K", "xi", "eps_min", "eps_max", "n_power", "start", "clip", "fraction", "eps_scale")
PENALTY_FIELDS = SHARED_FIELDS + VALP_FIELDS

Penalty = VALP | GP | LP | None


def make_penalty(name: str, backend: str, *, check_finite: bool = False, **settings: Any) -> Penalty:
    """The core penalty ``name`` (one of PENALTIES; None for ``none``) for ``backend``.
    ``settings`` are core config fields (VALP's own are ignored by GP/LP); invalid values raise
    the core's ValueError. ``check_finite`` is off: the loop already stops on a non-finite loss,
    and the check costs a host sync per call on GPUs."""
    unknown = sorted(set(settings) - set(PENALTY_FIELDS))
    if unknown:
        raise TypeError(f"unknown penalty settings {unknown}; expected some of {PENALTY_FIELDS}")
    if name == "none":
        return None
    if name in ("gp", "lp"):
        shared = {k: v for k, v in settings.items() if k in SHARED_FIELDS}
        return (GP if name == "gp" else LP)(backend=backend, check_finite=check_finite, **shared)
    if name == "valp":
        return VALP(backend=backend, check_finite=check_finite, **settings)
    raise ValueError(f"penalty must be one of {PENALTIES}, got {name!r}")


def penalty_from_config(cfg: Any, backend: str) -> Penalty:
    """The penalty a ``train.config.TrainConfig`` selects (its settings carry the core's names)."""
    return make_penalty(cfg.penalty, backend, **cfg.penalty_settings())
