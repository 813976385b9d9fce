"""The one penalty factory of the trainers and the benchmarks, for every framework.

    pen = penalty_from_config(cfg, "torch")           # or make_penalty("gp", "jax", lam=10.0)
    state = pen.init_state(real)                       # ALState(mu): float32 0, for every penalty
    loss, out = pen(critic, real, fake, rng, state, fx=scores)
    ... critic optimiser step on E f(fake) - E f(real) + loss ...
    state = pen.update(state, out.constraint)          # after every critic step (AL only moves mu)

All the math is valr_core's (``VALP``, ``GP``, ``LP``): VALP on concat([real, fake]) (or a random
``fraction`` of it), GP/LP at interpolates of real and fake. This module only chooses which one,
concatenates, and names the statistics the same way for every penalty and framework: the core's
stat names without their family prefix (``penalty``, ``mean_violation``, ``max_violation``,
``violating_fraction``, VALP's ``mean_quotient``/``max_quotient``/``dropped_fraction``, GP/LP's
``mean_grad_norm``/``max_grad_norm``, and ``mu`` in AL mode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from valr_core import GP, LP, VALP, ALState, get_backend
from valr_core.precision import work_dtype

PENALTIES = ("valp", "gp", "lp", "none")
# Each penalty's mode in its paper: VALP's augmented Lagrangian (eqs. 25-26); WGAN-GP's and
# WGAN-LP's fixed weight lam * R(L^2). ``--mode al --penalty lp --reduction max`` is the max-GP
# with augmented Lagrangian the paper cites as [23].
PAPER_MODES = {"valp": "al", "gp": "squared", "lp": "squared"}
DATA_RANGE = (-1.0, 1.0)  # the trainers' images: what VALP's optional clipping keeps x + r_adv in

# The settings of each penalty are the fields of its core config: one name from flag to math.
SHARED_FIELDS = ("lam", "reduction", "mode", "rho")  # every penalty's (GP, LP and VALP configs)
VALP_FIELDS = ("K", "xi", "eps_min", "eps_max", "n_power", "start", "clip", "fraction", "eps_scale")
PENALTY_FIELDS = SHARED_FIELDS + VALP_FIELDS

Critic = Callable[[Any], Any]


class PenaltyOut(NamedTuple):
    stats: dict[str, Any]  # detached scalars, names as in the module docstring
    constraint: Any  # detached R(L): what ``update`` consumes (0 for "none")
    rng: Any  # the next random state


@dataclass(frozen=True)
class Penalty:
    """One Lipschitz penalty for a WGAN critic in one framework (hashable: a jit static arg)."""

    name: str
    backend: str
    core: VALP | GP | LP | None = None

    @property
    def uses_al(self) -> bool:
        return self.core is not None and self.core.mode == "al"

    @property
    def reduction(self) -> str:
        return "mean" if self.core is None else self.core.reduction

    def init_state(self, like: Any) -> ALState:
        """mu = 0 as a float32 scalar of ``like``'s framework (whatever the penalty)."""
        xp = get_backend(self.backend).namespace(like)
        return ALState(xp.zeros((), dtype=xp.float32))

    def update(self, state: ALState, constraint: Any) -> ALState:
        """The AL step mu <- max(0, mu + rho * constraint); the identity for other modes."""
        if not self.uses_al:
            return state
        xp = get_backend(self.backend).namespace(state.mu)
        return self.core.update(state, xp.asarray(constraint, dtype=state.mu.dtype))

    def draws(self, real: Any, fake: Any, rng: Any) -> tuple[Any, Any]:
        """The random inputs of one call, from ``rng`` (the core's ``pair_draws``; None without
        a penalty). Data-parallel TF passes its per-replica stateless stream here (it has the
        generator's ``uniform``/``normal`` methods, which is all the TF adapter calls)."""
        return (None, rng) if self.core is None else self.core.pair_draws(real, fake, rng)

    def __call__(self, critic: Critic, real: Any, fake: Any, rng: Any, state: ALState, *,
                 fx: Any = None, draws: Any = None) -> tuple[Any, PenaltyOut]:
        """The term to add to the critic's loss, and its statistics: the core's ``pair_loss``
        (one crossing per critic step). ``fx``: critic(concat([real, fake])) already computed
        (VALP saves a forward pass). ``draws``: from :meth:`draws`."""
        backend = get_backend(self.backend)
        xp = backend.namespace(real)
        if self.core is None:
            zero = xp.zeros((), dtype=real.dtype)
            return zero, PenaltyOut({"penalty": zero}, zero, rng)
        # mu in the core's work dtype (float32; float64 for float64 batches): never rounded to bf16.
        mu = xp.asarray(state.mu, dtype=getattr(xp, work_dtype(backend, real)))
        if draws is None and not backend.is_rng(rng):
            draws, rng = self.draws(real, fake, rng)  # a stateless stream (see draws)
        loss, aux = self.core.pair_loss(critic, real, fake, rng if draws is None else None,
                                        ALState(mu) if self.uses_al else None, fx=fx, draws=draws)
        stats = {key.split("/", 1)[1]: value for key, value in aux.stats.items()}
        return loss, PenaltyOut(stats, aux.constraint, rng if draws is not None else aux.rng)


def make_penalty(name: str, backend: str, *, check_finite: bool = False, **settings: Any) -> Penalty:
    """The penalty ``name`` in PENALTIES for ``backend``; ``settings`` are core config fields
    (VALP's own fields are ignored by GP/LP). Invalid values raise the core's ValueError.

    ``check_finite`` (core input check) is off by default: the training loop already stops on a
    non-finite loss, and the check costs a host sync per call on GPUs."""
    unknown = sorted(set(settings) - set(PENALTY_FIELDS))
    if unknown:
        raise TypeError(f"unknown penalty settings {unknown}; expected some of {PENALTY_FIELDS}")
    if name == "none":
        return Penalty(name, backend)
    if name in ("gp", "lp"):
        shared = {k: v for k, v in settings.items() if k in SHARED_FIELDS}
        core = (GP if name == "gp" else LP)(backend=backend, check_finite=check_finite, **shared)
        return Penalty(name, backend, core)
    if name == "valp":
        return Penalty(name, backend, VALP(backend=backend, check_finite=check_finite, **settings))
    raise ValueError(f"penalty must be one of {PENALTIES}, got {name!r}")


def penalty_from_config(cfg: Any, backend: str) -> Penalty:
    """The penalty a ``train.config.TrainConfig`` selects (its settings carry the core's names)."""
    return make_penalty(cfg.penalty, backend, **cfg.penalty_settings())


# How each statistic combines over data-parallel replicas; the penalty value and the AL
# constraint follow the penalty's own reduction (mean / sum / max).
def replica_reduction(key: str, reduction: str) -> str:
    if key in ("penalty", "constraint"):
        return reduction
    if key.startswith("max_"):
        return "max"
    return "mean"


def reductions_for(keys: Mapping[str, Any] | list[str], reduction: str) -> dict[str, str]:
    return {k: replica_reduction(k, reduction) for k in keys}
