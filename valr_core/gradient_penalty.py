"""The gradient-norm baselines beside VALP: GP (WGAN-GP, eq. 7) and LP (eq. 9), at interpolates of
real and fake, with VALP's modes and reductions (docs/usage.md, "GP and LP"). The gradient of
sum_i f(x_hat_i) is per sample only for critics without BatchNorm, as WGAN-GP's are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .algorithm import _check_output, _per_sample_view
from .base import PenaltyBase, sample_alphas
from .config import GradientPenaltyConfig, Mode, Reduction  # noqa: F401 - the inherited fields' annotations
from .distances import per_sample
from .interface import Backend, Rng, Tensor
from .objectives import ALState, penalty, reduce
from .precision import astype, multiplier_like, work_dtype
from .registry import resolve_backend

# Squared norms at or below this are treated as 0: sqrt's derivative stays finite.
_SQUARE_FLOOR = {"float16": 6.2e-5, "bfloat16": 1.2e-38, "float32": 1.2e-38, "float64": 2.3e-308}


class GPAux(NamedTuple):
    """Everything a training step may log or need after ``GP.loss`` / ``LP.loss``."""

    norms: Tensor  # (N,) ||grad_x f(x_hat_i)||_2, detached
    violations: Tensor  # (N,) L_i, detached
    constraint: Tensor  # detached R(L): what the AL multiplier update consumes
    stats: dict[str, Tensor]  # detached scalars for logging
    rng: Rng  # the next random state (None when alphas were given and rng was not)


def safe_norm(backend: Backend, g: Tensor) -> Tensor:
    """Per-sample l2 norm over all non-batch axes in the work dtype; value and gradient finite (0)
    at g = 0: with the double ``where`` no inf * 0 = NaN reaches the gradient."""
    xp = backend.namespace(g)
    g = astype(backend, g, work_dtype(backend, g))  # float32 for float16/bfloat16: no underflow
    sq = per_sample(g * g, "sum")
    positive = sq > _SQUARE_FLOOR.get(backend.dtype_name(g), 1.2e-38)
    root = xp.sqrt(xp.where(positive, sq, xp.ones_like(sq)))
    return xp.where(positive, root, xp.zeros_like(sq))


@dataclass(frozen=True)
class _GradientNormPenalty(GradientPenaltyConfig, PenaltyBase):
    backend: str | None = None

    one_sided: ClassVar[bool]
    pairs: ClassVar[str] = "interpolates"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_backend_name()

    def interpolate(self, backend: Backend, real: Tensor, fake: Tensor, alphas: Tensor) -> Tensor:
        """x_hat = alpha * real + (1 - alpha) * fake per sample, real and fake held constant."""
        a = _per_sample_view(backend.namespace(real), alphas, real)
        return a * backend.stop_gradient(real) + (1 - a) * backend.stop_gradient(fake)

    def grad_norms(self, backend: Backend, critic: Callable[[Tensor], Tensor], x_hat: Tensor, freeze: Any = None) -> Tensor:
        """(N,) ||grad_x f(x_hat_i)||_2, differentiable w.r.t. the critic's parameters."""
        xp = backend.namespace(x_hat)

        def total(v: Tensor) -> Tensor:
            y = critic(v)
            _check_scalar_output(backend, y, v)
            return xp.sum(y)

        with backend.frozen_state(critic if freeze is None else freeze):
            g = backend.input_grad(total, x_hat)
        return safe_norm(backend, g)

    def loss(self, critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, rng: Rng | None = None,
             state: ALState | None = None, *, alphas: Tensor | None = None,
             freeze: Any = None) -> tuple[Tensor, GPAux]:
        """The penalty term to add to the critic's loss, and diagnostics. critic: (N, ...) -> (N,) or
        (N, 1); real, fake: batches of equal shape; rng: torch.Generator / tf.random.Generator / JAX
        key, or fixed ``alphas`` (N,); state: ALState for mode="al"; freeze: the nn.Module / Keras
        model whose BatchNorm statistics the interpolate pass leaves untouched (``critic`` a function)."""
        backend, real, fake = self._check_pair(real, fake)
        if alphas is None:
            if rng is None:
                raise ValueError(f"pass rng (the random state; {backend.rng_help()}) or fixed alphas=(N,) weights")
            self._check_rng(backend, rng)
            alphas, rng = sample_alphas(backend, real, rng)
        else:
            self._check_alphas(backend, alphas, real)
        xp = backend.namespace(real)
        norms = self.grad_norms(backend, critic, self.interpolate(backend, real, fake, alphas), freeze)
        excess = norms - 1.0
        violations = xp.clip(excess, 0.0, None) if self.one_sided else xp.abs(excess)
        value = penalty(xp, self, violations, multiplier_like(backend, state, violations))
        L, n, p = backend.stop_gradient(violations), backend.stop_gradient(norms), self.prefix
        stats = {f"{p}/penalty": backend.stop_gradient(value), f"{p}/mean_violation": xp.mean(L),
                 f"{p}/max_violation": xp.max(L),
                 f"{p}/violating_fraction": xp.mean(xp.where(L > 0, xp.ones_like(L), xp.zeros_like(L))),
                 f"{p}/mean_grad_norm": xp.mean(n), f"{p}/max_grad_norm": xp.max(n)}
        if state is not None:
            stats[f"{p}/mu"] = state.mu
        return value, GPAux(n, L, reduce(xp, L, self.reduction), stats, rng)

    def _check_pair(self, real: Tensor, fake: Tensor) -> tuple[Backend, Tensor, Tensor]:
        backend = resolve_backend(self.backend, real)
        if not backend.is_tensor(fake):
            kind = f"{type(fake).__module__}.{type(fake).__qualname__}"
            raise TypeError(f"fake is a {kind}, but real is a {backend.name} tensor; pass both in one framework")
        real = self._check_input(backend, real, "real")
        fake = self._check_input(backend, fake, "fake")
        rs, fs = backend.shape(real), backend.shape(fake)
        if len(rs) != len(fs) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(rs, fs, strict=True)):
            raise ValueError(f"real and fake must have the same shape, got real {tuple(rs)} and fake {tuple(fs)}")
        if backend.dtype_name(real) != backend.dtype_name(fake):
            raise TypeError(f"real and fake must have the same dtype, got real {backend.dtype_name(real)} and fake {backend.dtype_name(fake)}")
        return backend, real, fake

    def _check_alphas(self, backend: Backend, alphas: Tensor, real: Tensor) -> None:
        if not backend.is_tensor(alphas):
            kind = f"{type(alphas).__module__}.{type(alphas).__qualname__}"
            raise TypeError(f"alphas must be a {backend.name} tensor of shape (N,), got {kind}")
        if backend.dtype_name(alphas) != backend.dtype_name(real):
            raise TypeError(f"alphas must have real's dtype {backend.dtype_name(real)}, got {backend.dtype_name(alphas)}")
        shape, batch = backend.shape(alphas), backend.shape(real)[0]
        if len(shape) != 1 or (isinstance(shape[0], int) and isinstance(batch, int) and shape[0] != batch):
            raise ValueError(f"alphas must have shape (N,) = ({batch},), one weight per sample, got {tuple(shape)}")


def _check_scalar_output(backend: Backend, y: Tensor, x: Tensor) -> None:
    _check_output(backend, y, x, "critic(x_hat)")
    extra = backend.shape(y)[1:]
    if not backend.shape(y) or any(isinstance(d, int) and d != 1 for d in extra):
        raise ValueError(f"critic(x_hat) must return one scalar per sample, shape (N,) or (N, 1), got {tuple(backend.shape(y))}")


@dataclass(frozen=True)
class GP(_GradientNormPenalty):
    """WGAN-GP's two-sided penalty lam * R((||grad f(x_hat)||_2 - 1)^2) (eq. 7); backend None: inferred."""

    one_sided: ClassVar[bool] = False
    prefix: ClassVar[str] = "gp"


@dataclass(frozen=True)
class LP(_GradientNormPenalty):
    """The one-sided penalty lam * R(max(0, ||grad f(x_hat)||_2 - 1)^2) (eq. 9); backend None: inferred."""

    one_sided: ClassVar[bool] = True
    prefix: ClassVar[str] = "lp"
