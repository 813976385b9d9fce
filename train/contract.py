"""The trainers' shared contract (docs/trainers.md): WGAN objectives, metric names, checkpoint keys,
in array-namespace math that runs on torch, TF and JAX tensors, inside jit and tf.function too."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from train.penalties import Penalty
from valr_core import VALP, ALState, backend_for
from valr_core.base import replica_reduction
from valr_core.precision import astype

FRAMEWORKS = ("torch", "tf", "jax")

MU_KEY = "penalty/mu"  # the AL multiplier (float32; 0 and unused without AL)
RNG_LATENTS_KEY = "rng/latents"
RNG_PENALTY_KEY = "rng/penalty"
STATE_PREFIXES = ("gen", "critic", "ema", "opt_g", "opt_d")  # "<prefix>/<framework's own name>"

# Besides these, a step's metrics carry the penalty's core aux.stats names (valp/mu, ...).
CRITIC_LOSS, CRITIC_WDIST, GEN_LOSS = "critic/loss", "critic/wdist", "gen/loss"


class PenaltyStep(NamedTuple):
    constraint: Any  # detached R(L): what multiplier_step consumes (0 without a penalty)
    rng: Any  # the penalty's next random state


def initial_multiplier(penalty: Penalty, like: Any) -> ALState:
    """mu = 0 as the core makes it, a float32 scalar on ``like``'s framework and device."""
    return (penalty or VALP()).init_state(astype(backend_for(like), like, "float32"))


def multiplier_step(penalty: Penalty, state: ALState, constraint: Any) -> ALState:
    """The AL step mu <- max(0, mu + rho * constraint); the identity without AL (mode="al").
    The constraint is taken in mu's dtype (float32) first, so mu keeps one dtype and every
    replica, whatever dtype its reduction used, computes the same step."""
    if penalty is None or penalty.mode != "al":
        return state
    return penalty.update(state, astype(backend_for(state.mu), constraint, state.mu.dtype))


def reduction_of(penalty: Penalty) -> str:
    return "mean" if penalty is None else penalty.reduction


def reduce_over_replicas(metrics: Mapping[str, Any], constraint: Any, reduction: str,
                         reduce: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    """Metrics and constraint combined over replicas by ``reduce(values, how)`` (``replica_reduction``)."""
    values = {**{k: v for k, v in metrics.items() if k != CRITIC_LOSS}, "constraint": constraint}
    reduced = reduce(values, {k: replica_reduction(k, reduction) for k in values})
    constraint = reduced.pop("constraint")
    penalty = sum(v for k, v in reduced.items() if k.endswith("/penalty"))
    return {CRITIC_LOSS: penalty - reduced[CRITIC_WDIST], **reduced}, constraint


def critic_objective(penalty: Penalty, critic: Callable[[Any], Any], real: Any, fake: Any, rng: Any,
                     state: ALState, scores: Any, *, wdist_weight: float = 1.0,
                     penalty_weight: float | Callable[[Any], Any] = 1.0
                     ) -> tuple[Any, dict[str, Any], PenaltyStep]:
    """The critic's loss ``penalty_weight * penalty - wdist_weight * wdist`` and its unweighted metrics;
    ``scores`` = critic(concat([real, fake])); data-parallel trainers pass each replica's share."""
    backend = backend_for(scores)
    xp = backend.namespace(scores)
    n = real.shape[0]
    wdist = xp.mean(scores[:n]) - xp.mean(scores[n:])
    if penalty is None:
        value = xp.zeros((), dtype=scores.dtype)
        stats, step = {}, PenaltyStep(value, rng)
    else:
        draws = None
        if not backend.is_rng(rng):  # data-parallel TF's per-replica stateless stream (tf_distributed)
            draws, rng = penalty.pair_draws(real, fake, rng)
        value, aux = penalty.pair_loss(critic, real, fake, None if draws is not None else rng,
                                       state if penalty.mode == "al" else None, fx=scores, draws=draws)
        stats, step = aux.stats, PenaltyStep(aux.constraint, rng if draws is not None else aux.rng)
    weight = penalty_weight(value) if callable(penalty_weight) else penalty_weight
    loss = weight * value - wdist_weight * wdist
    return loss, {CRITIC_LOSS: value - wdist, CRITIC_WDIST: wdist, **stats}, step


def generator_objective(xp: Any, scores: Any) -> Any:
    return -xp.mean(scores)


def with_multiplier(metrics: Mapping[str, Any], penalty: Penalty, state: ALState) -> dict[str, Any]:
    """The step's metrics with ``<penalty>/mu`` after its update (the value a checkpoint holds)."""
    return dict(metrics) if penalty is None else {**metrics, f"{penalty.prefix}/mu": state.mu}


def scalar_state(value: Any) -> np.ndarray:
    """A 0-d float32 array for a checkpointed scalar (mu)."""
    return np.asarray(value, dtype=np.float32).reshape(())


def trainer_class(framework: str) -> type:
    """The trainer of ``framework`` (imports that framework): ``trainer_class("jax")(cfg)``."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return importlib.import_module(f"train.{framework}_wgan").TRAINER
