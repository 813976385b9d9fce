"""Lipschitz penalties for a torch WGAN critic behind one code path: ``valp``, ``gp``, ``lp``, ``none``.

Usage (the trainer and the benchmarks call exactly this)::

    pen = make_penalty("valp", **penalty_kwargs(cfg))   # or make_penalty("gp", lam=10.0)
    state = pen.init_state(real)                         # ALState(mu) for VALP-AL, else None
    loss, stats, rng, aux = pen(critic, real, fake, rng, state, fx=None)
    (critic_loss + loss).backward(); optimizer.step()
    state = pen.update(state, aux)                       # after every critic optimiser step

Signature of a penalty call::

    pen(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
        rng: torch.Generator, state: ALState | None, *, fx: Tensor | None = None)
        -> tuple[Tensor, dict[str, Tensor], torch.Generator, Tensor | None]

* ``critic`` maps a batch (N, ...) to scores (N, 1) or (N,); ``real``/``fake`` have equal shapes.
* ``loss`` is a scalar to *add* to the critic loss E f(fake) - E f(real); it carries gradients
  to the critic's parameters and never touches their ``.grad`` itself.
* ``stats`` holds detached 0-dim tensors with the same keys for every penalty where they make
  sense: ``penalty``, ``violation_mean``, ``violation_max``, ``violation_frac`` (VALP: the
  violations L_i; GP/LP: max(0, ||grad_i|| - 1)), ``grad_norm_mean`` (GP/LP), ``al_mu`` (VALP-AL:
  the multiplier used in this loss), ``quotient_mean``/``quotient_max`` (VALP).
* ``rng`` is the random state afterwards (torch generators are stateful: the same object).
* ``aux`` is what :meth:`Penalty.update` consumes: VALP's detached constraint R(L), else None.
* ``fx`` optionally passes ``critic(cat([real, fake]))`` already computed, so VALP saves a
  forward pass. Randomness always comes from ``rng``, never from torch's global generator.

Definitions (lam = ``lam``, norms per sample over all non-batch axes, sqrt floored at 0):
GP ``lam * R((||grad f(x_hat)|| - 1)^2)`` at x_hat = a*real + (1-a)*fake, a ~ U[0, 1) per sample;
LP ``lam * R(max(0, ||grad f(x_hat)|| - 1)^2)``; VALP (valr_core, on cat([real, fake]) or a random
``fraction`` of it) in mode ``al``: ``mu * R(L) + rho/2 * R(L^2)`` with ``mu <- max(0, mu + rho R(L))``
after every critic step (SPEC.md), or in mode ``plain``: ``lam * R(L^2)``. R = mean/sum/max.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from train.config import penalty_kwargs
from valr_core import VALP, ALState
from valr_core.registry import get_backend

Tensor = torch.Tensor
Critic = Callable[[Tensor], Tensor]
PenaltyResult = tuple[Tensor, dict[str, Tensor], torch.Generator, Tensor | None]

PENALTY_NAMES = ("valp", "gp", "lp", "none")
_TINY = 1e-12  # floor under squared norms: sqrt'(0) is infinite


def _reduce(v: Tensor, how: str) -> Tensor:
    if how == "mean":
        return v.mean()
    if how == "sum":
        return v.sum()
    if how == "max":
        return v.max()
    raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {how!r}")


def per_sample_norm(g: Tensor) -> Tensor:
    """l2 norm of each sample over all non-batch axes; finite gradient at 0."""
    sq = g.flatten(1).square().sum(dim=1)
    return torch.sqrt(torch.clamp(sq, min=_TINY * _TINY))


def input_gradient_norms(critic: Critic, x: Tensor) -> Tensor:
    """||grad_x f(x_i)|| per sample, differentiable w.r.t. the critic's parameters (double backward)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), get_backend("torch").frozen_state(critic):
        # autograd.grad w.r.t. x only: parameter .grad buffers are not written here.
        (g,) = torch.autograd.grad(critic(x).sum(), (x,), create_graph=True)
    return per_sample_norm(g)


def _violation_stats(v: Tensor) -> dict[str, Tensor]:
    v = v.detach()
    return {"violation_mean": v.mean(), "violation_max": v.max(), "violation_frac": (v > 0).float().mean()}


@dataclass(frozen=True)
class Penalty:
    """Base: no penalty. Subclasses override ``__call__`` (and ``init_state``/``update`` for AL)."""

    name: str = "none"
    reduce: str = "mean"

    def init_state(self, like: Tensor | None = None) -> ALState | None:
        return None

    def update(self, state: ALState | None, aux: Tensor | None) -> ALState | None:
        """The multiplier step after a critic optimiser step; identity without AL."""
        return state

    def __call__(self, critic: Critic, real: Tensor, fake: Tensor, rng: torch.Generator,
                 state: ALState | None, *, fx: Tensor | None = None) -> PenaltyResult:
        zero = real.new_zeros(())
        return zero, {"penalty": zero}, rng, None


@dataclass(frozen=True)
class GradientPenalty(Penalty):
    """WGAN-GP (two-sided) or, with ``one_sided``, WGAN-LP at random interpolates."""

    name: str = "gp"
    lam: float = 10.0
    one_sided: bool = False

    def __call__(self, critic: Critic, real: Tensor, fake: Tensor, rng: torch.Generator,
                 state: ALState | None, *, fx: Tensor | None = None) -> PenaltyResult:
        if real.shape != fake.shape:
            raise ValueError(f"real and fake batches must have equal shapes, got {tuple(real.shape)} and {tuple(fake.shape)}")
        shape = (real.shape[0],) + (1,) * (real.ndim - 1)
        alpha = torch.rand(shape, generator=rng, device=real.device, dtype=real.dtype)
        x_hat = alpha * real.detach() + (1.0 - alpha) * fake.detach()
        norms = input_gradient_norms(critic, x_hat)
        excess = norms - 1.0
        if self.one_sided:
            excess = torch.clamp(excess, min=0.0)
        loss = self.lam * _reduce(excess.square(), self.reduce)
        stats = {"penalty": loss.detach(), "grad_norm_mean": norms.detach().mean(),
                 **_violation_stats(torch.clamp(norms - 1.0, min=0.0))}
        return loss, stats, rng, None


@dataclass(frozen=True)
class ValpPenalty(Penalty):
    """VALP (valr_core) on the concatenated real and fake batch."""

    name: str = "valp"
    valp: VALP = field(default_factory=lambda: VALP(backend="torch", mode="al"))

    def init_state(self, like: Tensor | None = None) -> ALState | None:
        if self.valp.mode != "al":
            return None
        if like is None:
            raise ValueError("VALP-AL needs a tensor to create mu on the right device: init_state(real)")
        return self.valp.init_state(like)

    def update(self, state: ALState | None, aux: Tensor | None) -> ALState | None:
        if self.valp.mode != "al":
            return state
        if state is None or aux is None:
            raise ValueError("VALP-AL update needs the state and the aux returned by the penalty call")
        return self.valp.update(state, aux)

    def __call__(self, critic: Critic, real: Tensor, fake: Tensor, rng: torch.Generator,
                 state: ALState | None, *, fx: Tensor | None = None) -> PenaltyResult:
        x = torch.cat([real.detach(), fake.detach()])
        loss, aux = self.valp.loss(critic, x, rng, state, fx=fx)
        s = aux.stats
        stats = {"penalty": s["valp/penalty"], "violation_mean": s["valp/mean_violation"],
                 "violation_max": s["valp/max_violation"], "violation_frac": s["valp/violating_fraction"],
                 "quotient_mean": s["valp/mean_quotient"], "quotient_max": s["valp/max_quotient"]}
        if state is not None:
            stats["al_mu"] = torch.as_tensor(state.mu).detach()
        return loss, stats, aux.rng, aux.constraint if self.valp.mode == "al" else None


def make_penalty(
    name: str,
    *,
    lam: float = 10.0,
    reduction: str = "mean",
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
    check_finite: bool = False,
) -> Penalty:
    """The penalty ``name`` in ``PENALTY_NAMES``; unused keywords are ignored by that penalty.

    ``mode`` (VALP only): "al" (augmented Lagrangian, coefficient ``rho``) or "plain"
    (``lam * R(L^2)``). ``check_finite`` makes VALP verify its input with a host sync each call;
    off by default because the training loop already stops on a non-finite loss."""
    if name == "none":
        return Penalty(reduce=reduction)
    if name in ("gp", "lp"):
        return GradientPenalty(name=name, reduce=reduction, lam=lam, one_sided=name == "lp")
    if name == "valp":
        if mode not in ("al", "plain"):
            raise ValueError(f"VALP mode must be 'al' or 'plain', got {mode!r}")
        valp = VALP(backend="torch", mode="al" if mode == "al" else "squared", lam=lam, rho=rho,
                    reduction=reduction, fraction=fraction, K=K, xi=xi, eps_min=eps_min, eps_max=eps_max,
                    n_power=n_power, start=start, clip=clip, check_finite=check_finite)
        return ValpPenalty(reduce=reduction, valp=valp)
    raise ValueError(f"unknown penalty {name!r}; expected one of {PENALTY_NAMES}")


def penalty_from_config(cfg: Any) -> Penalty:
    """``make_penalty(cfg.penalty, **penalty_kwargs(cfg))``."""
    return make_penalty(cfg.penalty, **penalty_kwargs(cfg))
