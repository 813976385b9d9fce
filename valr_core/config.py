"""Penalty hyperparameters, validated once at construction.

``PenaltyConfig`` holds what every penalty shares (how per-sample violations become a loss);
``ValpConfig`` (VALP) and ``GradientPenaltyConfig`` (GP, LP) extend it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .distances import INPUT_DISTANCES, OUTPUT_DISTANCES, Distance, lookup

Reduction = Literal["mean", "sum", "max"]
Mode = Literal["squared", "linear", "al"]
Start = Literal["uniform", "gaussian"]
EpsScale = Literal["none", "auto"]
EPS_SCALES = ("none", "auto")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PenaltyConfig:
    """How per-sample violations L become a loss term (valr_core.objectives).

    reduction: R over the batch. mode: "squared" lam*R(L^2), "linear" lam*R(L), "al" augmented
    Lagrangian mu*R(L) + rho/2*R(L^2) with mu <- max(0, mu + rho*R(L)) after each critic step.
    check_finite: reject NaN/Inf inputs (eagerly; at run time inside TF graphs).
    """

    reduction: Reduction = "mean"
    mode: Mode = "squared"
    lam: float = 10.0
    rho: float = 0.01
    check_finite: bool = True

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum", "max"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'max', got {self.reduction!r}")
        if self.mode not in ("squared", "linear", "al"):
            raise ValueError(f"mode must be 'squared', 'linear' or 'al', got {self.mode!r}")
        if _number("lam", self.lam) < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam!r}")
        if _number("rho", self.rho) < 0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        if not isinstance(self.check_finite, bool):
            raise ValueError(f"check_finite must be True or False, got {self.check_finite!r}")


@dataclass(frozen=True)
class GradientPenaltyConfig(PenaltyConfig):
    """Hyperparameters of GP (WGAN-GP, eq. 7) and LP (eq. 9): those of ``PenaltyConfig``;
    the defaults are lam = 10, mean reduction, squared mode, as in WGAN-GP."""


@dataclass(frozen=True)
class ValpConfig(PenaltyConfig):
    """Hyperparameters of the penalty. K, xi, eps_min, eps_max, n_power and the distances default
    to the paper's values (section 4). ``mode`` defaults to "squared" (``PenaltyConfig``): a
    stateless loss term that drops into any training step. The paper's VALP runs use the
    augmented Lagrangian, ``mode="al"``, which the trainers select (train.penalties.PAPER_MODES).

    K: Lipschitz constant to enforce. xi: finite-difference step of the power iteration.
    eps_min/eps_max: per-sample perturbation radius range. n_power: power iterations (0 = random
    direction). start: distribution of the initial direction. clip: (low, high) data range for
    x + r_adv, or None. fraction: share of the batch regularised. d_X/d_Y: distances by name or
    callable; d_Y_power: proxy d_Y for the power iteration (default d_Y). stop_gradient_clean:
    treat f(x) as a constant (VAT). reduction, mode, lam, rho, check_finite: ``PenaltyConfig``.

    eps_scale: None / "none" (default): the paper's absolute radii eps ~ U[eps_min, eps_max].
    "auto": the drawn radii, and xi, times the batch's data scale s = m / 40, m the median
    pairwise l2 distance of the batch (at most 256 samples, under stop-gradient;
    ``algorithm.data_scale``); s is about 1 on CIFAR-10 in [-1, 1], where the paper tuned its
    radii. With absolute radii, VALP warns once when eps_max > 5 m (eager mode only). On
    low-dimensional data with gaps between regions (2-D toy sets) auto's default proportion
    (eps_max = m / 4) let the critic escape; there pass eps_min=0.4, eps_max=40, xi=40 with
    "auto". The statistic, the reference value 40 and their limits: docs/conventions-eps-scale.md.
    """

    K: float = 1.0
    xi: float = 10.0
    eps_min: float = 0.1
    eps_max: float = 10.0
    n_power: int = 1
    start: Start = "uniform"
    clip: tuple[float, float] | None = None
    fraction: float = 1.0
    d_X: str | Distance = "l2"
    d_Y: str | Distance = "abs"
    d_Y_power: str | Distance | None = None
    stop_gradient_clean: bool = False
    eps_scale: EpsScale | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        K = _number("K", self.K)
        if K < 0:
            raise ValueError(f"K must be >= 0, got {self.K!r}")
        if _number("xi", self.xi) <= 0:
            raise ValueError(f"xi must be > 0, got {self.xi!r}")
        eps_min, eps_max = _number("eps_min", self.eps_min), _number("eps_max", self.eps_max)
        if eps_min <= 0:
            raise ValueError(f"eps_min must be > 0, got {self.eps_min!r}")
        if eps_min > eps_max:
            raise ValueError(f"eps_min must be <= eps_max, got eps_min={self.eps_min!r} > eps_max={self.eps_max!r}")
        if isinstance(self.n_power, bool) or not isinstance(self.n_power, int) or self.n_power < 0:
            raise ValueError(f"n_power must be an integer >= 0, got {self.n_power!r}")
        if self.start not in ("uniform", "gaussian"):
            raise ValueError(f"start must be 'uniform' or 'gaussian', got {self.start!r}")
        if self.clip is not None:
            if len(self.clip) != 2:
                raise ValueError(f"clip must be None or a (low, high) pair, got {self.clip!r}")
            low, high = _number("clip[0]", self.clip[0]), _number("clip[1]", self.clip[1])
            if low >= high:
                raise ValueError(f"clip must satisfy low < high, got {self.clip!r}")
        fraction = _number("fraction", self.fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if self.eps_scale is not None and self.eps_scale not in EPS_SCALES:
            raise ValueError(f"eps_scale must be None, 'none' or 'auto', got {self.eps_scale!r}")
        lookup(self.d_X, INPUT_DISTANCES, "d_X")
        lookup(self.d_Y, OUTPUT_DISTANCES, "d_Y")
        if self.d_Y_power is not None:
            lookup(self.d_Y_power, OUTPUT_DISTANCES, "d_Y_power")

    @property
    def input_distance(self) -> Distance:
        return lookup(self.d_X, INPUT_DISTANCES, "d_X")

    @property
    def output_distance(self) -> Distance:
        return lookup(self.d_Y, OUTPUT_DISTANCES, "d_Y")

    @property
    def power_distance(self) -> Distance:
        spec = self.d_Y if self.d_Y_power is None else self.d_Y_power
        return lookup(spec, OUTPUT_DISTANCES, "d_Y_power")

    @property
    def auto_scaled(self) -> bool:
        """True when the radii are multiplied by the batch's data scale (``eps_scale="auto"``)."""
        return self.eps_scale == "auto"

    def subset_size(self, batch: int) -> int:
        """How many samples ``fraction`` regularises: at least one."""
        return max(1, int(round(self.fraction * batch)))
