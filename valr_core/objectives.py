"""Per-sample violations to a loss: reductions, the plain penalty, and the augmented-Lagrangian
(AL) term. AL convention (paper eqs. 25-26, consistent signs): the critic *minimises*
    E f(G(z)) - E f(x) + mu * R(L) + rho/2 * R(L^2),     R = reduction over the batch,
and after each critic step  mu <- max(0, mu + rho * R(L)).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .config import PenaltyConfig
from .interface import Tensor


class ALState(NamedTuple):
    """Explicit augmented-Lagrangian state: the multiplier mu (a scalar, >= 0)."""

    mu: Any


def reduce(xp: Any, v: Tensor, how: str) -> Tensor:
    if how == "mean":
        return xp.mean(v)
    if how == "sum":
        return xp.sum(v)
    return xp.max(v)


def penalty(xp: Any, config: PenaltyConfig, violations: Tensor, state: ALState | None) -> Tensor:
    """The regularisation term for ``config.mode``; it increases with every violation."""
    how = config.reduction
    if config.mode == "squared":
        return config.lam * reduce(xp, violations * violations, how)
    if config.mode == "linear":
        return config.lam * reduce(xp, violations, how)
    if state is None:
        raise ValueError("mode='al' needs state=ALState(mu); create it with penalty.init_state(x)")
    return state.mu * reduce(xp, violations, how) + 0.5 * config.rho * reduce(xp, violations * violations, how)


def multiplier_update(xp: Any, config: PenaltyConfig, state: ALState, constraint: Tensor) -> ALState:
    """mu <- max(0, mu + rho * constraint), with constraint = R(L) of the step just taken."""
    return ALState(xp.clip(state.mu + config.rho * constraint, 0.0, None))
