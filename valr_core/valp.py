"""The user-facing VALP: a validated config plus pure functions of explicit state
(``init_state``, ``loss``, ``update``); usage in docs/usage.md."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .algorithm import Draws, Violations, compute_violations, median_pairwise_distance, sample_draws
from .base import PenaltyBase
from .config import EpsScale, Mode, Reduction, Start, ValpConfig  # noqa: F401 - the inherited fields' annotations
from .distances import Distance  # noqa: F401 - resolve here (typing.get_type_hints, docs)
from .interface import Backend, Rng, Tensor
from .objectives import ALState, penalty, reduce
from .precision import UNIT_ROUNDOFF, multiplier_like
from .registry import resolve_backend

# With absolute radii (eps_scale None / "none"), warn when eps_max exceeds this many times the
# batch's median pairwise distance: such perturbations leave the data (2-D toy data under the
# paper's CIFAR-10 radii: eps_max = 10 vs samples ~2-3 apart).
RADII_WARN_RATIO = 5.0


def _graph_mode(backend: Backend) -> bool:
    """Inside a tf.function graph, where ``backend.require`` would add a run-time assertion
    rather than read a value (torch and JAX: ``require`` itself skips tracing, compiling and
    accelerators)."""
    tf = sys.modules.get("tensorflow") if backend.name == "tf" else None
    return tf is not None and not tf.executing_eagerly()


class ValpAux(NamedTuple):
    """Everything a training step may log or need after ``VALP.loss``."""

    violations: Violations
    constraint: Tensor  # detached R(L): what the AL multiplier update consumes
    stats: dict[str, Tensor]  # detached scalars for logging
    rng: Rng  # the next random state


@dataclass(frozen=True)
class VALP(ValpConfig, PenaltyBase):
    """Virtual Adversarial Lipschitz Penalty. ``backend`` None = inferred from the input."""

    backend: str | None = None
    prefix: ClassVar[str] = "valp"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_backend_name()

    # -- building blocks -------------------------------------------------------------------
    def resolve(self, x: Tensor) -> tuple[Backend, Tensor]:
        """The backend for ``x`` and ``x`` itself, validated (in TF graphs, with a runtime check)."""
        backend = resolve_backend(self.backend, x)
        x = self._check_input(backend, x)
        if self.check_finite:
            x = self._check_scale(backend, x)
        return backend, x

    def _check_scale(self, backend: Backend, x: Tensor) -> Tensor:
        """Inputs whose scale makes the quotient meaningless in their dtype: max|x| * u >= eps_min
        (u: x's unit roundoff) means the smallest radius is below the resolution of x's largest
        entries, where x + r_adv rounds back to x. A ValueError where reading max|x| is free
        (eager CPU values; TF graphs: a run-time assertion); skipped on accelerators and under
        jit. Pairs rounding erased anyway are dropped and counted (valp/dropped_fraction)."""
        name = backend.dtype_name(x)
        u = UNIT_ROUNDOFF.get(name)
        if u is None:
            return x
        xp = backend.namespace(x)
        peak = xp.max(xp.abs(x))
        return backend.require(x, peak * u < self.eps_min,
                               f"x's scale is too large for {name}: max |x| * {u:.3g} (its unit roundoff) >= eps_min = "
                               f"{self.eps_min}, so x + r_adv rounds back to x for the smallest radii; rescale x "
                               "(e.g. to [-1, 1]), compute in a wider dtype, or raise eps_min")

    def _check_radii(self, backend: Backend, x: Tensor) -> None:
        """With absolute radii, warn once per instance when eps_max > RADII_WARN_RATIO times the
        batch's median pairwise l2 distance. Checked on the first call only, and only where the
        values can be read for free, as ``backend.require`` does: eagerly on CPU values. Never
        while tracing (jax.jit, tf.function, torch.compile: nothing is read, nothing breaks) nor
        on an accelerator (no host sync): there the first call passes unchecked."""
        if self.auto_scaled or self.__dict__.get("_radii_checked") or _graph_mode(backend):
            return
        object.__setattr__(self, "_radii_checked", True)  # not a field: eq and hash unchanged
        if not isinstance(backend.shape(x)[0], int):
            return
        median = median_pairwise_distance(backend, x)
        if median is None:
            return
        xp = backend.namespace(median)
        far = xp.asarray(self.eps_max, dtype=median.dtype) > RADII_WARN_RATIO * median  # NaN: False
        try:
            backend.require(x, ~far, "far")
        except ValueError:
            value = float(median)
            ratio = f"{self.eps_max / value:.3g} times" if value > 0 else "infinitely many times (identical samples)"
            warnings.warn(
                f"VALP's absolute radii are far from this batch's scale: eps_max = {self.eps_max} is {ratio} the median "
                f"pairwise l2 distance between its samples ({value:.3g}; warned above {RADII_WARN_RATIO:g} times), so "
                "r_adv leaves the data. The paper's radii are for CIFAR-10 in [-1, 1] (median distance ~40): pass "
                "eps_scale='auto' to scale them to the batch, or set eps_min/eps_max for your data. (Warned once "
                "per VALP instance.)", UserWarning, stacklevel=4)

    def draws(self, x: Tensor, rng: Rng) -> tuple[Draws, Rng]:
        backend, x = self.resolve(x)
        self._check_rng(backend, rng)
        return sample_draws(backend, self, x, rng)

    def violations(
        self,
        critic: Callable[[Tensor], Tensor],
        x: Tensor,
        rng: Rng | None = None,
        *,
        draws: Draws | None = None,
        fx: Tensor | None = None,
        freeze: Any = None,
    ) -> tuple[Violations, Rng | None]:
        """Per-sample violations; pass ``rng`` to draw, or fixed ``draws``."""
        backend, x = self.resolve(x)
        return self._violations(backend, critic, x, rng, draws, fx, freeze)

    def _violations(
        self, backend: Backend, critic: Callable[[Tensor], Tensor], x: Tensor, rng: Rng | None, draws: Draws | None, fx: Tensor | None, freeze: Any = None
    ) -> tuple[Violations, Rng | None]:
        self._check_radii(backend, x)
        if draws is None:
            if rng is None:
                raise ValueError(f"pass rng (the random state; {backend.rng_help()}) or fixed draws=Draws(...)")
            self._check_rng(backend, rng)
            draws, rng = sample_draws(backend, self, x, rng)
        return compute_violations(backend, self, critic, x, draws, fx, freeze), rng

    # -- the loss ----------------------------------------------------------------------------
    def loss(
        self,
        critic: Callable[[Tensor], Tensor],
        x: Tensor,
        rng: Rng | None = None,
        state: ALState | None = None,
        *,
        draws: Draws | None = None,
        fx: Tensor | None = None,
        freeze: Any = None,
    ) -> tuple[Tensor, ValpAux]:
        """The penalty term to add to the critic's loss, and diagnostics.

        critic: callable (m, ...) -> (m,), (m, 1) or (m, k). rng: torch.Generator / tf.random.Generator
        / JAX key (or fixed ``draws``). state: ALState for mode="al". fx: critic(x), if already
        computed, to save a forward pass. freeze: the nn.Module / Keras model whose BatchNorm
        statistics VALP's passes must leave untouched when ``critic`` is a plain function.
        For float16/bfloat16 inputs or critics the penalty, violations, constraint and stats are
        float32 (valr_core.precision); ``valp/dropped_fraction`` counts the dropped pairs.
        """
        backend, x = self.resolve(x)
        result, rng = self._violations(backend, critic, x, rng, draws, fx, freeze)
        xp = backend.namespace(x)
        value = penalty(xp, self, result.violations, multiplier_like(backend, state, result.violations))
        L = backend.stop_gradient(result.violations)
        q = backend.stop_gradient(result.quotients)
        constraint = reduce(xp, L, self.reduction)
        stats = {
            "valp/penalty": backend.stop_gradient(value),
            "valp/mean_violation": xp.mean(L),
            "valp/max_violation": xp.max(L),
            "valp/mean_quotient": xp.mean(q),
            "valp/max_quotient": xp.max(q),
            "valp/violating_fraction": xp.mean(xp.where(L > 0, xp.ones_like(L), xp.zeros_like(L))),
            "valp/dropped_fraction": xp.mean(xp.where(result.kept, xp.zeros_like(L), xp.ones_like(L))),
        }
        if result.scale is not None:
            stats["valp/eps_scale"] = result.scale
        if state is not None:
            stats["valp/mu"] = state.mu
        return value, ValpAux(result, constraint, stats, rng)
