"""What the three examples share: the 2-D data and the exact W1 their critics are compared with."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    return (2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def exact_w1(p: np.ndarray, q: np.ndarray) -> float:
    """W1 between two equal-size empirical measures: the optimal one-to-one assignment."""
    cost = np.linalg.norm(p[:, None].astype(np.float64) - q[None].astype(np.float64), axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
