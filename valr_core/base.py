"""What VALP, GP and LP share beyond their configuration: the backend field's check, input
and random-state checks, and the pure augmented-Lagrangian state functions."""

from __future__ import annotations

from typing import Any

from .interface import Backend, Tensor
from .objectives import ALState, multiplier_update
from .precision import astype, work_dtype
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
        """mu = 0, a scalar of ``like``'s framework and device (or a Python float): float32
        whatever ``like``'s dtype (float64 for float64), so a bfloat16 mu still moves. ``like``
        may be any array of its framework: 0-d, empty, integer, boolean, half precision."""
        if like is None:
            return ALState(0.0)
        backend = resolve_backend(self.backend, like)
        xp = backend.namespace(like)
        # An empty slice of ``like`` (0-d: reshaped to (1,) first) summed: 0 on like's device,
        # and no value of ``like`` is read, copied or cast.
        empty = like[:0] if len(backend.shape(like)) else xp.reshape(like, (1,))[:0]
        return ALState(xp.sum(astype(backend, empty, work_dtype(backend, like))))

    def update(self, state: ALState, constraint: Tensor) -> ALState:
        """The AL multiplier step mu <- max(0, mu + rho * constraint); pure.

        In data-parallel training, average ``constraint`` over replicas before calling."""
        if isinstance(state.mu, float) and isinstance(constraint, float):
            return ALState(max(0.0, state.mu + self.rho * constraint))
        tensor = constraint if not isinstance(constraint, float) else state.mu
        backend = resolve_backend(self.backend, tensor)
        xp = backend.namespace(tensor)
        # In the work dtype (float32 for float16/bfloat16): rho * constraint must not round away.
        work = work_dtype(backend, *(t for t in (state.mu, constraint) if not isinstance(t, float)))
        mu = state.mu if isinstance(state.mu, float) else astype(backend, state.mu, work)
        c = constraint if isinstance(constraint, float) else astype(backend, constraint, work)
        return multiplier_update(xp, self, ALState(mu), c)

    # -- input checks ------------------------------------------------------------------------
    def _check_input(self, backend: Backend, x: Tensor, what: str = "x") -> Tensor:
        if not backend.is_floating(x):
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {backend.dtype_name(x)}")
        shape = backend.shape(x)
        if len(shape) < 1:
            raise ValueError(f"{what} must have a batch dimension: shape (N, ...), got a scalar")
        empty = f"{what} must hold at least one sample, got an empty batch"
        if isinstance(shape[0], int):
            if shape[0] == 0:
                raise ValueError(f"{empty} of shape {tuple(shape)}")
        else:  # a dynamic batch size (TF graphs): checked when the graph runs
            x = backend.require(x, shape[0] > 0, empty)
        if self.check_finite:
            x = backend.check_finite(x, what)
        return x

    def _check_rng(self, backend: Backend, rng: Any) -> None:
        if not backend.is_rng(rng):
            kind = f"{type(rng).__module__}.{type(rng).__qualname__}"
            raise TypeError(f"rng must be a random state of the {backend.name} backend ({backend.rng_help()}), got {kind}")
