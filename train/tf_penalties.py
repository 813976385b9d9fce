"""Lipschitz penalties for a TensorFlow WGAN critic behind one code path: ``valp``, ``gp``, ``lp``, ``none``.

Usage (the trainer and the benchmarks call exactly this; it also works inside ``tf.function``)::

    pen = make_penalty("valp", **penalty_kwargs(cfg))   # or make_penalty("gp", lam=10.0)
    state = pen.init_state()                             # ALState(mu = float32 scalar 0)
    rng = tf.random.Generator.from_seed(0)
    with tf.GradientTape() as tape:                      # the tape over the critic's parameters
        f_real, f_fake = critic(real), critic(fake)
        loss, stats, rng, aux = pen(critic, real, fake, rng, state, fx=tf.concat([f_real, f_fake], 0))
        critic_loss = tf.reduce_mean(f_fake) - tf.reduce_mean(f_real) + loss
    ... optimiser step with tape.gradient(critic_loss, critic.trainable_variables) ...
    state = pen.update(state, aux)                       # after every critic optimiser step

Signature of a penalty call::

    pen(critic: Callable[[tf.Tensor], tf.Tensor], real: tf.Tensor, fake: tf.Tensor,
        rng: tf.random.Generator, state: ALState, *, fx: tf.Tensor | None = None)
        -> tuple[tf.Tensor, dict[str, tf.Tensor], tf.random.Generator, tf.Tensor | None]

* ``critic`` maps a batch (N, ...) to scores (N, 1) or (N,); ``real``/``fake`` have equal shapes.
  Call the penalty *inside* the tape that differentiates the critic's parameters: GP/LP take a
  gradient of a gradient and VALP's loss depends on f(x + r_adv).
* ``loss`` is a scalar to *add* to the critic loss E f(fake) - E f(real).
* ``stats`` holds gradient-free scalars, keyed as in the torch and JAX trainers: ``penalty``,
  ``violation_mean``, ``violation_max``, ``violation_frac`` (VALP: the violations L_i; GP/LP:
  max(0, ||grad_i|| - 1)), ``grad_norm_mean``/``grad_norm_max`` (GP/LP), ``quotient_mean``/
  ``quotient_max`` (VALP), ``al_mu`` (VALP-AL: the multiplier used in this loss).
* ``rng`` is the random state afterwards (tf.random.Generator is stateful: the same object).
  Randomness only ever comes from it, never from TF's global generator. Data-parallel training
  passes a :class:`train.tf_distributed.ReplicaStream` instead (stateless per-replica draws with
  the generator's ``uniform``/``normal`` methods); it is returned as it came.
* ``aux`` is what :meth:`Penalty.update` consumes: VALP-AL's gradient-free constraint R(L), else None.
* ``fx`` optionally passes ``critic(concat([real, fake]))`` already computed, so VALP saves a
  forward pass (GP/LP evaluate at interpolates and ignore it).

Definitions (lam = ``lam``, norms per sample over all non-batch axes, sqrt with a zero gradient
at 0): GP ``lam * R((||grad f(x_hat)|| - 1)^2)`` at x_hat = a*real + (1-a)*fake, a ~ U[0, 1) per
sample; LP ``lam * R(max(0, ||grad f(x_hat)|| - 1)^2)``; VALP (valr_core, on concat([real, fake])
or a random ``fraction`` of it) in mode ``al``: ``mu * R(L) + rho/2 * R(L^2)`` with
``mu <- max(0, mu + rho * R(L))`` after every critic step (SPEC.md), or in mode ``plain``:
``lam * R(L^2)``. R = mean / sum / max (``reduce``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Start-up notices TF's C++ runtime writes straight to fd 2, ignoring TF_CPP_MIN_LOG_LEVEL
# (oneDNN, absl, CPU features). Nothing else is filtered.
_TF_NOISE = re.compile(r"oneDNN custom operations are on|All log messages before absl::InitializeLog"
                       r"|cpu_feature_guard|To enable the following instructions:")


@contextlib.contextmanager
def tf_noise_filtered() -> Iterator[None]:
    """Capture fd 2 for the block, then write back every line except TF's start-up notices.

    Only for short blocks that cannot crash the process (a hard abort would lose what was captured)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): filter nothing
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _TF_NOISE.search(ln)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Import TF with its start-up notices filtered out of stderr; every other line is kept."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with tf_noise_filtered():
        import tensorflow  # noqa: F401


import_tensorflow_quietly()
import tensorflow as tf  # noqa: E402

from train.config import penalty_kwargs  # noqa: E402
from valr_core import VALP, ALState, get_backend, sample_draws  # noqa: E402

Critic = Callable[[tf.Tensor], tf.Tensor]
PenaltyResult = tuple[tf.Tensor, dict[str, tf.Tensor], tf.random.Generator, "tf.Tensor | None"]

PENALTY_NAMES = ("valp", "gp", "lp", "none")


def _reduce(v: tf.Tensor, how: str) -> tf.Tensor:
    if how == "mean":
        return tf.reduce_mean(v)
    if how == "sum":
        return tf.reduce_sum(v)
    if how == "max":
        return tf.reduce_max(v)
    raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {how!r}")


def per_sample_norm(g: tf.Tensor) -> tf.Tensor:
    """l2 norm of each sample over all non-batch axes; exact, with gradient 0 (not NaN) at 0."""
    sq = tf.reduce_sum(tf.square(g), axis=list(range(1, g.shape.rank)))
    positive = sq > 0
    # Double where: sqrt never sees 0, so its infinite derivative never reaches the gradient.
    return tf.where(positive, tf.sqrt(tf.where(positive, sq, tf.ones_like(sq))), tf.zeros_like(sq))


def input_gradient_norms(critic: Critic, x: tf.Tensor) -> tf.Tensor:
    """||grad_x f(x_i)|| per sample; differentiable w.r.t. the critic's parameters by an outer tape."""
    x = tf.stop_gradient(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        # Samples are independent (no BatchNorm in the critic): grad of the sum = per-sample grads.
        total = tf.reduce_sum(critic(x))
    g = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return per_sample_norm(g)


def interpolate(real: tf.Tensor, fake: tf.Tensor, rng: tf.random.Generator) -> tf.Tensor:
    """a * real + (1 - a) * fake with a ~ U[0, 1) per sample, drawn from ``rng``."""
    n = real.shape[0] if real.shape[0] is not None else tf.shape(real)[0]  # static when known
    alpha = rng.uniform([n] + [1] * (real.shape.rank - 1), dtype=real.dtype)
    return alpha * tf.stop_gradient(real) + (1.0 - alpha) * tf.stop_gradient(fake)


def _violation_stats(v: tf.Tensor) -> dict[str, tf.Tensor]:
    v = tf.stop_gradient(v)
    return {"violation_mean": tf.reduce_mean(v), "violation_max": tf.reduce_max(v),
            "violation_frac": tf.reduce_mean(tf.cast(v > 0, v.dtype))}


def _check_pair(real: tf.Tensor, fake: tf.Tensor) -> None:
    if real.shape != fake.shape:
        raise ValueError(f"real and fake batches must have equal shapes, got {real.shape} and {fake.shape}")


@dataclass(frozen=True)
class Penalty:
    """Base: no penalty. Subclasses override ``__call__`` (and ``update`` for AL)."""

    name: str = "none"
    reduce: str = "mean"

    def init_state(self, like: tf.Tensor | None = None) -> ALState:
        """mu = 0 as a scalar of ``like``'s dtype (float32 without ``like``); unused except VALP-AL."""
        return ALState(tf.zeros([], like.dtype if like is not None else tf.float32))

    def update(self, state: ALState, aux: tf.Tensor | None) -> ALState:
        """The multiplier step after a critic optimiser step; identity without AL."""
        return state

    def __call__(self, critic: Critic, real: tf.Tensor, fake: tf.Tensor, rng: tf.random.Generator,
                 state: ALState, *, fx: tf.Tensor | None = None) -> PenaltyResult:
        _check_pair(real, fake)
        zero = tf.zeros([], real.dtype)
        return zero, {"penalty": zero}, rng, None


@dataclass(frozen=True)
class GradientPenalty(Penalty):
    """WGAN-GP (two-sided) or, with ``one_sided``, WGAN-LP at random interpolates."""

    name: str = "gp"
    lam: float = 10.0
    one_sided: bool = False

    def __call__(self, critic: Critic, real: tf.Tensor, fake: tf.Tensor, rng: tf.random.Generator,
                 state: ALState, *, fx: tf.Tensor | None = None) -> PenaltyResult:
        _check_pair(real, fake)
        norms = input_gradient_norms(critic, interpolate(real, fake, rng))
        over = tf.nn.relu(norms - 1.0)
        excess = over if self.one_sided else norms - 1.0
        loss = self.lam * _reduce(tf.square(excess), self.reduce)
        stats = {"penalty": tf.stop_gradient(loss), "grad_norm_mean": tf.stop_gradient(tf.reduce_mean(norms)),
                 "grad_norm_max": tf.stop_gradient(tf.reduce_max(norms)), **_violation_stats(over)}
        return loss, stats, rng, None


@dataclass(frozen=True)
class ValpPenalty(Penalty):
    """VALP (valr_core) on the concatenated real and fake batch."""

    name: str = "valp"
    valp: VALP = field(default_factory=lambda: VALP(backend="tf", mode="al"))

    @property
    def uses_al(self) -> bool:
        return self.valp.mode == "al"

    def update(self, state: ALState, aux: tf.Tensor | None) -> ALState:
        if not self.uses_al:
            return state
        if aux is None:
            raise ValueError("the VALP-AL update needs the aux returned by the penalty call")
        return self.valp.update(state, aux)

    def __call__(self, critic: Critic, real: tf.Tensor, fake: tf.Tensor, rng: tf.random.Generator,
                 state: ALState, *, fx: tf.Tensor | None = None) -> PenaltyResult:
        _check_pair(real, fake)
        x = tf.stop_gradient(tf.concat([real, fake], axis=0))
        mu = tf.cast(state.mu, x.dtype)
        draws = None
        if not isinstance(rng, tf.random.Generator):
            # A stateless per-replica stream (train.tf_distributed.ReplicaStream): the same draws
            # valr_core would make, taken through the generator-like methods the TF adapter calls.
            draws, rng = sample_draws(get_backend("tf"), self.valp, x, rng)
        loss, aux = self.valp.loss(critic, x, None if draws is not None else rng,
                                   ALState(mu) if self.uses_al else None, draws=draws, fx=fx)
        s = aux.stats
        stats = {"penalty": s["valp/penalty"], "violation_mean": s["valp/mean_violation"],
                 "violation_max": s["valp/max_violation"], "violation_frac": s["valp/violating_fraction"],
                 "quotient_mean": s["valp/mean_quotient"], "quotient_max": s["valp/max_quotient"]}
        if self.uses_al:
            stats["al_mu"] = tf.stop_gradient(mu)
        return loss, stats, rng if draws is not None else aux.rng, aux.constraint if self.uses_al else None


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
    """The penalty ``name`` in ``PENALTY_NAMES``; keywords a penalty does not use are ignored.

    ``mode`` (VALP only): "al" (augmented Lagrangian, coefficient ``rho``) or "plain"
    (``lam * R(L^2)``). ``check_finite`` adds VALP's input check (a graph assertion); off by
    default because the training loop already stops on a non-finite loss."""
    if reduction not in ("mean", "sum", "max"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'max', got {reduction!r}")
    if name == "none":
        return Penalty(reduce=reduction)
    if name in ("gp", "lp"):
        return GradientPenalty(name=name, reduce=reduction, lam=float(lam), one_sided=name == "lp")
    if name == "valp":
        if mode not in ("al", "plain"):
            raise ValueError(f"VALP mode must be 'al' or 'plain', got {mode!r}")
        valp = VALP(backend="tf", mode="al" if mode == "al" else "squared", lam=float(lam), rho=float(rho),
                    reduction=reduction, fraction=float(fraction), K=float(K), xi=float(xi),  # type: ignore[arg-type]
                    eps_min=float(eps_min), eps_max=float(eps_max), n_power=int(n_power),
                    start=start, clip=tuple(clip) if clip is not None else None,  # type: ignore[arg-type]
                    check_finite=check_finite)
        return ValpPenalty(reduce=reduction, valp=valp)
    raise ValueError(f"unknown penalty {name!r}; expected one of {PENALTY_NAMES}")


def penalty_from_config(cfg: Any) -> Penalty:
    """``make_penalty(cfg.penalty, **penalty_kwargs(cfg))``."""
    return make_penalty(cfg.penalty, **penalty_kwargs(cfg))
