"""What the three examples share: the 2-D data and the exact W1 their critics are compared with."""

from __future__ import annotations

import argparse

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


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The settings every example takes (one WGAN-VALP recipe in three frameworks)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="generator steps")
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr-critic", type=float, default=2e-3)
    ap.add_argument("--lr-gen", type=float, default=1e-4)
    ap.add_argument("--eps-max", type=float, default=3.0, help="largest VALP radius: the scale of the gaps between the distributions")
    ap.add_argument("--rho", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)
