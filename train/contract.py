"""The trainer contract the three framework trainers share: the WGAN objectives, the metric
names and the checkpoint key schema. A framework trainer adds only what its framework forces:
the autodiff call around these functions, the optimiser, and device placement.

Objectives (paper section 4, WGAN-GP's CIFAR-10 setup; README "Training"): the critic minimises
``E f(G(z)) - E f(x) + penalty`` on one pass over concat([real, fake]) (whose scores VALP
reuses), and the generator minimises ``-E f(G(z))``. Math goes through the framework's array
namespace, so the same lines run on torch, TF and JAX tensors (and inside jit/tf.function).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from train.penalties import Penalty, PenaltyOut
from valr_core import ALState, get_backend

FRAMEWORKS = ("torch", "tf", "jax")

# Checkpoint keys every trainer uses for the state that is not model weights.
MU_KEY = "penalty/mu"  # the AL multiplier (float32; 0 and unused without AL)
RNG_LATENTS_KEY = "rng/latents"
RNG_PENALTY_KEY = "rng/penalty"
# Model and optimiser state live under these prefixes ("<prefix>/<framework's own name>").
STATE_PREFIXES = ("gen", "critic", "ema", "opt_g", "opt_d")

# Metrics of every critic step: these, plus the penalty's statistics (train.penalties).
CRITIC_METRICS = ("loss", "wdist", "mu")
GENERATOR_METRICS = ("loss",)
# The objective's own metrics, logged as critic/<name>; the penalty's are logged under the core's
# aux.stats names (valp/mean_violation, gp/mean_grad_norm, valp/mu, ...): one name everywhere.
OBJECTIVE_METRICS = ("loss", "wdist")


def logged_names(penalty: str, metrics: Mapping[str, Any], role: str = "critic") -> dict[str, Any]:
    """A step's metrics under the names logs, CSV, TensorBoard and progress bars use. Without a
    penalty (``none``) there are no penalty statistics to log."""
    if role != "critic":
        return {f"{role}/{k}": v for k, v in metrics.items()}
    return {(f"critic/{k}" if k in OBJECTIVE_METRICS else f"{penalty}/{k}"): v
            for k, v in metrics.items() if k in OBJECTIVE_METRICS or penalty != "none"}


def critic_objective(
    penalty: Penalty,
    critic: Callable[[Any], Any],
    real: Any,
    fake: Any,
    rng: Any,
    state: ALState,
    scores: Any,
    *,
    draws: Any = None,
    wdist_weight: float = 1.0,
    penalty_weight: float | Callable[[Any], Any] = 1.0,
) -> tuple[Any, dict[str, Any], PenaltyOut]:
    """The critic's loss ``penalty_weight * penalty - wdist_weight * wdist`` and its metrics.

    ``scores`` = critic(concat([real, fake])). The weights are 1 on one device; data-parallel
    trainers pass each replica's share of the global loss (``penalty_weight`` may be a function
    of the penalty's value, for the max reduction). Metrics hold the unweighted values."""
    xp = get_backend(penalty.backend).namespace(scores)
    n = real.shape[0]
    wdist = xp.mean(scores[:n]) - xp.mean(scores[n:])
    value, out = penalty(critic, real, fake, rng, state, fx=scores, draws=draws)
    weight = penalty_weight(value) if callable(penalty_weight) else penalty_weight
    loss = weight * value - wdist_weight * wdist
    metrics = {"loss": value - wdist, "wdist": wdist, **out.stats}
    return loss, metrics, out


def generator_objective(xp: Any, scores: Any) -> Any:
    return -xp.mean(scores)


def with_multiplier(metrics: Mapping[str, Any], state: ALState) -> dict[str, Any]:
    """The step's metrics with ``mu`` after its update (the value a checkpoint holds)."""
    return {**{k: v for k, v in metrics.items() if k != "mu"}, "mu": state.mu}


def scalar_state(value: Any) -> np.ndarray:
    """A 0-d float32 array for a checkpointed scalar (mu)."""
    return np.asarray(value, dtype=np.float32).reshape(())


def trainer_class(framework: str) -> type:
    """The trainer of ``framework`` (imports that framework): ``trainer_class("jax")(cfg)``."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    return importlib.import_module(f"train.{framework}_wgan").TRAINER
