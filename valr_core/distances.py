"""Per-sample distances d_X (inputs) and d_Y (critic outputs).

Every distance maps two batches of equal shape (N, ...) to a vector (N,): reductions run over
all non-batch axes, never over the batch. A user distance is any callable with that contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops

Tensor = Any
Distance = Callable[[Tensor, Tensor], Tensor]

# Floors keep sqrt away from 0 (whose gradient is infinite) and quotients finite.
TINY = 1e-12


def per_sample(x: Tensor, how: str) -> Tensor:
    """Reduce over every axis but the first (the batch)."""
    return einops.reduce(x, "b ... -> b", how)


def _xp(x: Tensor) -> Any:
    from .registry import backend_for

    return backend_for(x).namespace(x)


def l1(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    return per_sample(xp.abs(a - b), "sum")


def l2(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    diff = a - b
    return xp.sqrt(xp.clip(per_sample(diff * diff, "sum"), TINY * TINY, None))


def linf(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    return per_sample(xp.abs(a - b), "max")


def one(a: Tensor, b: Tensor) -> Tensor:
    """The constant distance 1 (VAT: d_X = 1 turns the quotient into the divergence itself)."""
    xp = _xp(a)
    return per_sample(xp.zeros_like(a), "sum") + 1.0


def _log_softmax(xp: Any, logits: Tensor) -> Tensor:
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)) over the last axis, for (N, C) logits (VAT's divergence)."""
    xp = _xp(p_logits)
    log_p = _log_softmax(xp, p_logits)
    log_q = _log_softmax(xp, q_logits)
    return per_sample(xp.exp(log_p) * (log_p - log_q), "sum")


INPUT_DISTANCES: dict[str, Distance] = {"l1": l1, "l2": l2, "linf": linf, "one": one}
OUTPUT_DISTANCES: dict[str, Distance] = {"abs": l1, "l1": l1, "l2": l2, "linf": linf, "kl": kl}


def lookup(spec: str | Distance, table: dict[str, Distance], argument: str) -> Distance:
    """A named distance from ``table`` or a user callable; a clear error otherwise."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in table:
        return table[spec]
    raise ValueError(f"{argument} must be one of {sorted(table)} or a callable (a, b) -> per-sample distances, got {spec!r}")
