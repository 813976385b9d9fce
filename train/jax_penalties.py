"""Lipschitz penalties for the JAX WGAN critic, all behind one interface so comparisons are fair.

    pen = make_penalty("valp", mode="al", rho=0.01, fraction=0.5)   # or penalty_from_config(cfg)
    state = pen.init_state()                                         # ALState(mu=float32 0.0)
    loss, stats, key, aux = pen(critic, real, fake, key, state, scores=None)
    ...critic optimiser step on (E f(fake) - E f(real) + loss)...
    state = pen.update(state, aux)                                   # after every critic step

Exact signature of a penalty call (pure; works under ``jax.jit``; ``Penalty`` is a frozen,
hashable dataclass, so it can also be a static argument)::

    pen(critic: Callable[[Array], Array], real: Array, fake: Array, key: Array, state: ALState,
        *, scores: Array | None = None) -> tuple[Array, dict[str, Array], Array, Array]

* ``critic``: a batch (N, ...) -> scores (N,) or (N, 1), closed over the critic's parameters
  (the penalty's gradient reaches them through it). Samples must be independent (no
  BatchNorm in the critic): GP/LP take ``grad_x sum_i f(x_i)``.
* ``real``, ``fake``: equal-shape batches (N, ...) in the critic's dtype.
* ``key``: an explicit JAX PRNG key (``jax.random.PRNGKey``); no global RNG anywhere.
* ``state``: the AL multiplier ``ALState(mu)`` (a float32 scalar; stays 0 except for VALP-AL).
* ``scores``: optionally ``critic(concat([real, fake]))`` already computed on this batch, so
  VALP saves a forward pass.
* returns ``loss`` (scalar to add to the critic's loss), ``stats`` (detached scalars:
  ``penalty`` and per penalty ``violation_mean/max/frac``, ``quotient_mean/max`` (VALP) or
  ``grad_norm_mean/max`` (GP/LP), ``al_mu`` (VALP-AL)), the next ``key`` and ``aux`` (the
  detached constraint value R(L) that ``pen.update(state, aux) -> ALState`` consumes).

Penalties: ``valp`` (VALP on the concatenated real and fake batch, or a random ``fraction`` of
it; ``mode="al"``: mu*R(L) + rho/2*R(L^2) with mu <- max(0, mu + rho*R(L)), SPEC's convention;
``mode="plain"``: lam*R(L^2)), ``gp`` (lam*mean((||grad f(x_hat)|| - 1)^2) at random
interpolates x_hat = alpha*real + (1-alpha)*fake, alpha ~ U[0,1) per sample), ``lp`` (one-sided:
lam*mean(max(0, ||grad f(x_hat)|| - 1)^2)) and ``none``.

On XLA:CPU, trace calls inside ``jax.threefry_partitionable(False)`` (as ``train.jax_wgan``
does): with JAX's default partitionable threefry each random draw of a new shape takes seconds
to compile. The values differ between the two modes; each is deterministic given the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from train.config import penalty_kwargs
from valr_core import VALP
from valr_core.objectives import ALState

NAMES = ("valp", "gp", "lp", "none")
Array = jax.Array
Critic = Callable[[Array], Array]
PenaltyOut = tuple[Array, dict[str, Array], Array, Array]


def per_sample_norm(g: Array) -> Array:
    """l2 norm per sample over all non-batch axes; value and gradient are finite at 0."""
    sq = jnp.sum(jnp.reshape(g * g, (g.shape[0], -1)), axis=1)
    positive = sq > 0
    # Double where: sqrt's derivative at 0 is infinite, so it must never see a 0.
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def interpolate(real: Array, fake: Array, key: Array) -> Array:
    """x_hat = alpha*real + (1-alpha)*fake with one alpha ~ U[0,1) per sample."""
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    alpha = jax.random.uniform(key, shape, dtype=real.dtype)
    return fake + alpha * (real - fake)


def input_grad_norms(critic: Critic, x: Array) -> Array:
    """||grad_x f(x_i)||_2 per sample (samples are independent, so grad of the sum suffices)."""
    grads = jax.grad(lambda v: jnp.sum(critic(v)))(x)
    return per_sample_norm(grads)


def _zero(like: Array) -> Array:
    return jnp.zeros((), like.dtype)


def _detached_stats(**values: Array) -> dict[str, Array]:
    return {k: jax.lax.stop_gradient(v) for k, v in values.items()}


@dataclass(frozen=True)
class Penalty:
    """One Lipschitz penalty; call it (see the module docstring) and ``update`` after the step."""

    name: str = "valp"
    lam: float = 10.0
    valp: VALP | None = None  # set for name == "valp"

    def init_state(self) -> ALState:
        return ALState(jnp.zeros((), jnp.float32))

    def __call__(self, critic: Critic, real: Array, fake: Array, key: Array, state: ALState,
                 *, scores: Array | None = None) -> PenaltyOut:
        if real.shape != fake.shape:
            raise ValueError(f"real and fake batches must have the same shape, got {real.shape} and {fake.shape}")
        if self.name == "valp":
            return self._valp(critic, real, fake, key, state, scores)
        if self.name in ("gp", "lp"):
            return self._gradient_penalty(critic, real, fake, key)
        zero = _zero(real)
        return zero, {"penalty": zero}, key, zero

    def update(self, state: ALState, aux: Array) -> ALState:
        """The AL multiplier step (VALP-AL only); every other penalty keeps mu at 0."""
        if self.valp is not None and self.valp.mode == "al":
            return self.valp.update(state, aux)
        return state

    def _valp(self, critic: Critic, real: Array, fake: Array, key: Array, state: ALState,
              scores: Array | None) -> PenaltyOut:
        assert self.valp is not None
        x = jnp.concatenate([real, fake], axis=0)
        mu = state.mu.astype(x.dtype)
        loss, aux = self.valp.loss(critic, x, key, ALState(mu), fx=scores)
        s = aux.stats
        stats = _detached_stats(
            penalty=loss, violation_mean=s["valp/mean_violation"], violation_max=s["valp/max_violation"],
            violation_frac=s["valp/violating_fraction"], quotient_mean=s["valp/mean_quotient"],
            quotient_max=s["valp/max_quotient"])
        if self.valp.mode == "al":
            stats["al_mu"] = mu
        return loss, stats, aux.rng, aux.constraint

    def _gradient_penalty(self, critic: Critic, real: Array, fake: Array, key: Array) -> PenaltyOut:
        key, sub = jax.random.split(key)
        norms = input_grad_norms(critic, interpolate(real, fake, sub))
        excess = norms - 1.0
        if self.name == "lp":
            excess = jnp.maximum(excess, 0.0)  # one-sided: only slopes above 1 are penalised
        loss = self.lam * jnp.mean(excess * excess)
        over = jnp.maximum(norms - 1.0, 0.0)
        stats = _detached_stats(
            penalty=loss, grad_norm_mean=jnp.mean(norms), grad_norm_max=jnp.max(norms),
            violation_mean=jnp.mean(over), violation_max=jnp.max(over),
            violation_frac=jnp.mean((over > 0).astype(norms.dtype)))
        return loss, stats, key, _zero(real)


def make_penalty(
    name: str = "valp",
    *,
    lam: float = 10.0,
    mode: str = "al",
    rho: float = 0.01,
    fraction: float = 1.0,
    K: float = 1.0,
    xi: float = 10.0,
    eps_min: float = 0.1,
    eps_max: float = 10.0,
    n_power: int = 1,
    start: str = "uniform",
    clip: tuple[float, float] | None = (-1.0, 1.0),
    reduction: str = "mean",
) -> Penalty:
    """Build a penalty. ``lam``: weight of gp / lp / plain VALP; ``mode`` "al" | "plain" and the
    rest configure VALP (SPEC defaults; ``clip`` the data range of x + r_adv, None = no clip)."""
    if name not in NAMES:
        raise ValueError(f"penalty must be one of {NAMES}, got {name!r}")
    if mode not in ("al", "plain"):
        raise ValueError(f"mode must be 'al' or 'plain', got {mode!r}")
    if name != "valp":
        return Penalty(name=name, lam=float(lam))
    valp = VALP(backend="jax", mode="al" if mode == "al" else "squared", lam=float(lam), rho=float(rho),
                fraction=float(fraction), K=float(K), xi=float(xi), eps_min=float(eps_min),
                eps_max=float(eps_max), n_power=int(n_power), start=start,  # type: ignore[arg-type]
                clip=tuple(clip) if clip is not None else None, reduction=reduction)  # type: ignore[arg-type]
    return Penalty(name=name, lam=float(lam), valp=valp)


def penalty_from_config(cfg: Any) -> Penalty:
    """The penalty a ``train.config.TrainConfig`` (or anything with its field names) selects."""
    return make_penalty(cfg.penalty, **penalty_kwargs(cfg))
