"""Flax NNX front door: an NNX critic as the pure function VALP needs. NNX modules write state
(BatchNorm, ``nnx.SpectralNorm``) on every training call, so VALP's extra passes get a fresh copy
per call: their writes are discarded and only the real pass counts (docs/usage.md, "Flax NNX")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

__all__ = ["pure_critic", "pure_critic_from", "apply_critic"]


def pure_critic_from(graphdef: Any, *states: Any) -> Callable[[jax.Array], jax.Array]:
    """``x -> model(x)`` for the module ``nnx.merge(graphdef, *states)``, merged anew per call
    so that nothing the call mutates (BatchNorm statistics, RNG counters) survives it."""
    # copy=True: fresh Variables owned by the current trace (NNX refuses to mutate a Variable
    # created at another trace level, and VALP calls this inside jax.grad).
    return lambda x: nnx.merge(graphdef, *states, copy=True)(x)


def pure_critic(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """``model`` as a pure function of its input at its current state (see module docstring)."""
    return pure_critic_from(*nnx.split(model))


def apply_critic(graphdef: Any, *states: Any, x: jax.Array) -> tuple[jax.Array, nnx.State]:
    """One real forward pass, functionally: the output and the module's state *after* the call
    (with its updated BatchNorm statistics), for the pure ``jax.jit`` pattern."""
    model = nnx.merge(graphdef, *states, copy=True)
    return model(x), nnx.state(model)
