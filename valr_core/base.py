"""What VALP, GP and LP share beyond their configuration: the backend field's check, input
and random-state checks, and the pure augmented-Lagrangian state functions."""

from __future__ import annotations

from typing import Any

from .interface import Backend, Tensor
from .objectives import ALState, multiplier_update
from .registry import resolve_backend


class PenaltyBase:
    """Mixin for the frozen penalty dataclasses; needs ``backend``, ``rho``, ``check_finite``."""

    backend: str | None
    rho: float
    check_finite: bool

    def _check_backend_name(self) -> None:
        if self.backend is not None:
            from .registry import _ALIASES

            if not isinstance(self.backend, str) or self.backend.lower() not in _ALIASES:
                raise ValueError(f"backend must be None or one of {sorted(_ALIASES)}, got {self.backend!r}")

    # -- augmented-Lagrangian state ------------------------------------------------------------
    def init_state(self, like: Tensor | None = None) -> ALState:
        """mu = 0, as a scalar of ``like``'s framework and dtype (or a Python float)."""
        if like is None:
            return ALState(0.0)
        backend = resolve_backend(self.backend, like)
        xp = backend.namespace(like)
        return ALState(xp.sum(xp.zeros_like(like[:1])))

    def update(self, state: ALState, constraint: Tensor) -> ALState:
        """The AL multiplier step mu <- max(0, mu + rho * constraint); pure.

        In data-parallel training, average ``constraint`` over replicas before calling."""
        if isinstance(state.mu, float) and isinstance(constraint, float):
            return ALState(max(0.0, state.mu + self.rho * constraint))
        backend = resolve_backend(self.backend, constraint if not isinstance(constraint, float) else state.mu)
        return multiplier_update(backend.namespace(constraint), self, state, constraint)

    # -- input checks ------------------------------------------------------------------------
    def _check_input(self, backend: Backend, x: Tensor, what: str = "x") -> Tensor:
        if not backend.is_floating(x):
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {backend.dtype_name(x)}")
        shape = backend.shape(x)
        if len(shape) < 1:
            raise ValueError(f"{what} must have a batch dimension: shape (N, ...), got a scalar")
        if isinstance(shape[0], int) and shape[0] == 0:
            raise ValueError(f"{what} must hold at least one sample, got an empty batch of shape {tuple(shape)}")
        if self.check_finite:
            x = backend.check_finite(x, what)
        return x

    def _check_rng(self, backend: Backend, rng: Any) -> None:
        if not backend.is_rng(rng):
            kind = f"{type(rng).__module__}.{type(rng).__qualname__}"
            raise TypeError(f"rng must be a random state of the {backend.name} backend ({backend.rng_help()}), got {kind}")
