"""What the three examples share: the 2-D data, the exact W1 their critics are compared with,
their settings, and their report line (VALP's statistics under the core's names).

Each example imports this file as ``.common`` when run as a module (``python -m
examples.torch_wgan_valp``) and as ``common`` when run as a script (``python
examples/torch_wgan_valp.py``: the script's folder is then the first entry of ``sys.path``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np
from scipy.optimize import linear_sum_assignment

# What each report line shows of VALP's statistics: the core's names (VALP.loss's aux.stats).
STAT_NAMES = ("valp/mean_violation", "valp/max_violation", "valp/violating_fraction", "valp/mu")


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    return (2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def exact_w1(p: np.ndarray, q: np.ndarray) -> float:
    """W1 between two equal-size empirical measures: the optimal one-to-one assignment."""
    cost = np.linalg.norm(p[:, None].astype(np.float64) - q[None].astype(np.float64), axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def report(step: int, estimate: float, exact: float, stats: Mapping[str, Any]) -> dict[str, float]:
    """One history row, printed as one line: the critic's estimate against the exact W1, and the
    ``STAT_NAMES`` present in ``stats`` (the last critic step's; ``valp/mu`` the current one)."""
    row = {"step": step, "estimate": estimate, "exact": exact, "rel_error": estimate / exact - 1}
    row.update({k: float(stats[k]) for k in STAT_NAMES if k in stats})
    shown = "".join(f"  {k} {row[k]:.4f}" for k in STAT_NAMES if k in row)
    print(f"step {step:5d}  critic estimate {estimate:7.4f}  exact W1 {exact:7.4f}  rel. error {100 * row['rel_error']:+6.1f}%{shown}")
    return row


# -- settings ------------------------------------------------------------------------------------
def _number(kind: type, low: float, strict: bool, high: float = math.inf) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` in (low, high] (strict) or [low, high]."""
    bound = f"> {low:g}" if strict else f">= {low:g}"
    bound += "" if high == math.inf else f" and <= {high:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


_POSITIVE_INT, _SEED = _number(int, 0, strict=True), _number(int, 0, strict=False, high=2**32 - 1)
_POSITIVE, _NON_NEGATIVE = _number(float, 0.0, strict=True), _number(float, 0.0, strict=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """argparse's refusal in one line (no usage block): exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The settings every example takes (one WGAN-VALP recipe in three frameworks); a bad value
    is refused in one line naming its flag, with exit status 2."""
    ap = _Parser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=_POSITIVE_INT, default=300, help="generator steps (>= 1)")
    ap.add_argument("--n-critic", type=_POSITIVE_INT, default=5, help="critic steps per generator step (>= 1)")
    ap.add_argument("--batch", type=_POSITIVE_INT, default=128, help="samples per batch (>= 1)")
    ap.add_argument("--lr-critic", type=_POSITIVE, default=2e-3)
    ap.add_argument("--lr-gen", type=_POSITIVE, default=1e-4)
    ap.add_argument("--eps-min", type=_POSITIVE, default=0.01, help="smallest VALP radius (> 0)")
    ap.add_argument("--eps-max", type=_POSITIVE, default=3.0,
                    help="largest VALP radius (>= --eps-min): the scale of the gaps between the distributions")
    ap.add_argument("--rho", type=_NON_NEGATIVE, default=1.0, help="augmented-Lagrangian rho (>= 0)")
    ap.add_argument("--eval-every", type=_POSITIVE_INT, default=50, help="generator steps between reports (>= 1)")
    ap.add_argument("--seed", type=_SEED, default=0, help="random seed (0 to 2**32 - 1)")
    args = ap.parse_args(argv)
    if args.eps_min > args.eps_max:
        ap.error(f"argument --eps-min: must be <= --eps-max ({args.eps_max:g}), got {args.eps_min:g}")
    return args
