"""What VALP, GP and LP share beyond their configuration: the backend field's check, input
and random-state checks, and the pure augmented-Lagrangian state functions."""

from __future__ import annotations

from typing import Any, ClassVar

from .algorithm import sample_draws
from .interface import Backend, Rng, Tensor
from .objectives import ALState, multiplier_update
from .precision import astype, work_dtype
from .registry import get_backend, resolve_backend


def sample_alphas(backend: Backend | str, real: Tensor, rng: Rng) -> tuple[Tensor, Rng]:
    """One interpolation weight alpha ~ U[0, 1) per sample of ``real``, in its dtype: (N,)."""
    if isinstance(backend, str):
        backend = get_backend(backend)
    return backend.uniform(rng, (backend.shape(real)[0],), real)


def replica_reduction(stat: str, reduction: str) -> str:
    """How ``stat`` (an ``aux.stats`` name, e.g. ``valp/max_violation``) combines over replicas:
    penalty and constraint by the penalty's ``reduction``, ``max_*`` by max, the others by mean."""
    name = stat.rsplit("/", 1)[-1]
    if name in ("penalty", "constraint"):
        return reduction
    return "max" if name.startswith("max_") else "mean"


class PenaltyBase:
    """Mixin for the frozen penalty dataclasses; needs ``backend``, ``rho``, ``check_finite``."""

    backend: str | None
    rho: float
    check_finite: bool
    prefix: ClassVar[str]  # of its aux.stats names: "valp", "gp" or "lp"
    # Where a WGAN critic step's penalty looks: VALP at concat([real, fake]), GP/LP at interpolates.
    pairs: ClassVar[str] = "concat"

    def pair_loss(self, critic: Any, real: Tensor, fake: Tensor, rng: Any = None, state: ALState | None = None, *,
                  fx: Tensor | None = None, draws: Any = None, freeze: Any = None) -> tuple[Tensor, Any]:
        """The penalty of a WGAN critic step (the trainers' and Keras front door's call): ``loss``'s
        (penalty, aux) for VALP on concat([real, fake]) (held constant; ``fx``: the critic's scores of
        it, reused) or GP/LP on their interpolates; ``draws`` (from :meth:`pair_draws`) replace ``rng``."""
        backend = resolve_backend(self.backend, real)
        rs, fs = tuple(backend.shape(real)), tuple(backend.shape(fake))
        # Static sizes only: a dynamic batch size (TF graphs) is a tensor, checked by the penalty.
        if len(rs) != len(fs) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(rs, fs, strict=False)):
            raise ValueError(f"real and fake batches must have equal shapes, got {rs} and {fs}")
        if self.pairs == "interpolates":
            return self.loss(critic, real, fake, rng, state, alphas=draws, freeze=freeze)  # type: ignore[attr-defined]
        return self.loss(critic, self._concat(backend, real, fake), rng, state, draws=draws, fx=fx,  # type: ignore[attr-defined]
                         freeze=freeze)

    def pair_draws(self, real: Tensor, fake: Tensor, rng: Any) -> tuple[Any, Any]:
        """The random inputs of :meth:`pair_loss` drawn from ``rng``: (draws, next rng)."""
        backend = resolve_backend(self.backend, real)
        if self.pairs == "interpolates":
            return sample_alphas(backend, real, rng)
        # No rng check here: data-parallel TF passes a per-replica stateless stream that only
        # has the generator's uniform/normal methods (train/tf_distributed.py).
        return sample_draws(backend, self, self._concat(backend, real, fake), rng)  # type: ignore[arg-type]

    @staticmethod
    def _concat(backend: Backend, real: Tensor, fake: Tensor) -> Tensor:
        xp = backend.namespace(real)
        concat = getattr(xp, "concat", None) or xp.concatenate  # TF's numpy namespace predates concat
        return concat([backend.stop_gradient(real), backend.stop_gradient(astype(backend, fake, backend.dtype_name(real)))],
                      axis=0)

    def _check_backend_name(self) -> None:
        if self.backend is not None:
            from .registry import _ALIASES

            if not isinstance(self.backend, str) or self.backend.lower() not in _ALIASES:
                raise ValueError(f"backend must be None or one of {sorted(_ALIASES)}, got {self.backend!r}")

    def init_state(self, like: Tensor | None = None) -> ALState:
        """mu = 0, a scalar of ``like``'s framework and device (or a Python float): float32
        whatever ``like``'s dtype (float64 for float64), so a bfloat16 mu still moves. ``like``
        may be any array of its framework: 0-d, empty, integer, boolean, half precision."""
        if like is None:
            return ALState(0.0)
        backend = resolve_backend(self.backend, like)
        xp = backend.namespace(like)
        # An empty slice summed: 0 on like's device, with no value of ``like`` read or cast.
        empty = like[:0] if len(backend.shape(like)) else xp.reshape(like, (1,))[:0]
        return ALState(xp.sum(astype(backend, empty, work_dtype(backend, like))))

    def update(self, state: ALState, constraint: Tensor) -> ALState:
        """The AL multiplier step mu <- max(0, mu + rho * constraint); pure. In data-parallel
        training, average ``constraint`` over replicas before calling."""
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
