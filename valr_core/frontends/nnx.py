"""Flax NNX front door: an NNX critic as the pure function VALP needs.

NNX modules are mutable: a ``BatchNorm`` in training mode writes its running statistics on every
call, so VALP's extra passes (the power iteration and ``f(x + r_adv)``) would update them too.
``pure_critic`` splits the module once and merges a *fresh copy* for every call: the copies'
statistic updates are discarded, gradients still flow to the parameters, and the real forward
pass (``fx = critic(x)``, passed to ``VALP.loss``) is the only one that updates the statistics::

    def critic_loss(critic):                       # under nnx.value_and_grad / nnx.jit
        fx = critic(x)                             # updates BatchNorm statistics, once
        penalty, aux = valp.loss(pure_critic(critic), x, key, al_state, fx=fx)
        ...

For a fully functional step (``jax.jit`` with ``graphdef`` static), call
``pure_critic_from(graphdef, params, rest)`` on the split state instead.

Spectral normalisation: ``nnx.SpectralNorm`` keeps its power-iteration vector ``u`` (and
``sigma``) as ``nnx.BatchStat`` variables written on every training call; through
``pure_critic`` those writes land on the discarded copies, so VALP's passes do not advance the
power iteration either (nor keep the normalised kernel it writes back): ``u`` moves once per
step, in the real pass. With Flax linen's ``SpectralNorm`` (``u`` in the ``"batch_stats"``
collection), give VALP ``lambda z: model.apply(variables, z, update_stats=False)`` and run only
the real pass with ``update_stats=True, mutable=["batch_stats"]``: every pass then starts from
the same stored ``u`` and normalises by the same sigma, and ``u`` moves once per step (linen
refuses ``update_stats=True`` without ``mutable``).

Statistics: ``aux.stats`` of ``VALP.loss`` carries the core's names (``valp/penalty``,
``valp/mean_violation``, ``valp/max_violation``, ``valp/violating_fraction``, ``valp/mu``, ...);
return it from the jitted step to log it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

__all__ = ["pure_critic", "pure_critic_from", "apply_critic"]


def pure_critic_from(graphdef: Any, *states: Any) -> Callable[[jax.Array], jax.Array]:
    """``x -> model(x)`` for the module ``nnx.merge(graphdef, *states)``, merged anew per call
    so that nothing the call mutates (BatchNorm statistics, RNG counters) survives it.

    ``copy=True`` gives the copy fresh Variables owned by the current trace: NNX refuses to
    mutate a Variable created at another trace level (VALP calls this inside ``jax.grad``)."""

    def critic(x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, *states, copy=True)(x)

    return critic


def pure_critic(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """``model`` as a pure function of its input at its current state (see module docstring)."""
    graphdef, state = nnx.split(model)
    return pure_critic_from(graphdef, state)


def apply_critic(graphdef: Any, *states: Any, x: jax.Array) -> tuple[jax.Array, nnx.State]:
    """One real forward pass, functionally: the output and the module's state *after* the call
    (with its updated BatchNorm statistics), for the pure ``jax.jit`` pattern."""
    model = nnx.merge(graphdef, *states, copy=True)
    y = model(x)
    return y, nnx.state(model)
