"""Statistics over seeds: percentile bootstrap intervals, paired per-seed comparisons, curves
interpolated onto a common time grid, and a critic's Lipschitz constant on sample pairs. NumPy
only; every bootstrap uses a fixed RNG seed, so a report regenerated from the same records is
the same report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its percentile-bootstrap interval (``lo``, ``hi``); ``n`` seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    def includes(self, value: float) -> bool:
        return self.lo <= value <= self.hi


def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts: how often each seed is drawn in each resample (rows sum to n)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts


def bootstrap_columns(values: np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL,
                      seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (the seeds) and its percentile-bootstrap interval, per column.

    The same resampled seed sets serve every column (a curve's points stay jointly resampled).
    The interval is clipped to [min, max] of the data, where every resampled mean lies anyway,
    so a constant's interval is exactly that constant despite rounding."""
    x = np.asarray(values, np.float64)
    x = x.reshape(len(x), -1)
    n = len(x)
    if n == 0:
        nan = np.full(x.shape[1], np.nan)
        return nan, nan.copy(), nan.copy()
    lo_x, hi_x = x.min(axis=0), x.max(axis=0)
    mean = np.clip(x.mean(axis=0), lo_x, hi_x)
    if n == 1:
        return mean, mean.copy(), mean.copy()
    means = _resample_weights(n, resamples, seed) @ x / n
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return mean, np.clip(lo, lo_x, hi_x), np.clip(hi, lo_x, hi_x)


def bootstrap_ci(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = SEED) -> Estimate:
    """The mean of ``values`` (one per seed) with its 95% percentile-bootstrap interval."""
    x = np.asarray(values, np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_ci needs finite values, got {x.tolist()}")
    mean, lo, hi = bootstrap_columns(x[:, None], resamples=resamples, level=level, seed=seed)
    return Estimate(float(mean[0]), float(lo[0]), float(hi[0]), len(x))


@dataclass(frozen=True)
class Paired:
    """``a`` against ``b`` on the seeds both have: ``wins`` counts seeds where ``a`` is better,
    ``losses`` where it is worse; ``diff`` is the mean of a - b with its bootstrap interval."""

    seeds: tuple[int, ...]
    wins: int
    losses: int
    ties: int
    diff: Estimate

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float], *, lower_is_better: bool = True,
                      resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Paired:
    """Per-seed comparison of two cells trained on the same seeds (same init, data and latents)."""
    seeds = tuple(sorted(set(a) & set(b)))
    d = np.array([a[s] - b[s] for s in seeds], np.float64)
    better = d < 0 if lower_is_better else d > 0
    worse = d > 0 if lower_is_better else d < 0
    diff = bootstrap_ci(d, resamples=resamples, level=level, seed=seed) if len(d) else \
        Estimate(float("nan"), float("nan"), float("nan"), 0)
    return Paired(seeds, int(better.sum()), int(worse.sum()), int(len(d) - better.sum() - worse.sum()), diff)


def interpolate(times: Sequence[float], values: Sequence[float], at: Sequence[float] | float) -> np.ndarray:
    """Piecewise-linear ``values`` against increasing ``times``, read at ``at``; NaN outside
    [times[0], times[-1]] (a curve is never extrapolated)."""
    t = np.asarray(times, np.float64)
    v = np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) == 0:
        raise ValueError(f"times and values must be equal-length 1-d sequences, got {t.shape} and {v.shape}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("times must be strictly increasing")
    q = np.asarray(at, np.float64)
    out = np.interp(q, t, v)
    return np.where((q < t[0]) | (q > t[-1]), np.nan, out)


def common_span(curves: Sequence[Sequence[float]]) -> tuple[float, float] | None:
    """The times every curve covers: (latest first time, earliest last time); None if empty."""
    if not curves or any(len(c) == 0 for c in curves):
        return None
    start, end = max(c[0] for c in curves), min(c[-1] for c in curves)
    return (float(start), float(end)) if start <= end else None


def time_grid(curves: Sequence[Sequence[float]], points: int = 60) -> np.ndarray:
    """``points`` equally spaced times over :func:`common_span` (empty when the curves do not overlap)."""
    span = common_span(curves)
    if span is None:
        return np.zeros(0)
    return np.linspace(span[0], span[1], points) if span[1] > span[0] else np.array([span[0]])


def lipschitz_on_pairs(scores: ArrayLike, points: ArrayLike) -> float:
    """max over pairs i < j of |f_i - f_j| / ||x_i - x_j||_2 (flattened points)."""
    f = np.asarray(scores, np.float64).reshape(-1)
    x = np.asarray(points, np.float64).reshape(len(f), -1)
    sq = (x * x).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    iu = np.triu_indices(len(f), k=1)
    ok = dist[iu] > 1e-6
    return float((np.abs(f[:, None] - f[None, :])[iu][ok] / dist[iu][ok]).max())
