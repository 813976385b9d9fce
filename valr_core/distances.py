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

# Floors keep sqrt away from 0 (whose gradient is infinite). TINY is the float32/float64
# floor; in float16/bfloat16 it would round to 0, so floors are looked up per dtype.
TINY = 1e-12
_SMALLEST_NORMAL = {"float16": 6.1e-5, "bfloat16": 1.2e-38, "float32": 1.2e-38, "float64": 2.3e-308}


def square_floor_for(dtype_name: str) -> float:
    """The floor of a squared norm in ``dtype_name``: TINY**2, or the dtype's smallest normal
    number where TINY**2 would underflow to 0 (float16)."""
    return max(TINY * TINY, _SMALLEST_NORMAL.get(dtype_name, 0.0))


def _dtype_name(x: Tensor) -> str:
    from .registry import backend_for

    return backend_for(x).dtype_name(x)


def per_sample(x: Tensor, how: str) -> Tensor:
    """Reduce over every axis but the first (the batch)."""
    return einops.reduce(x, "b ... -> b", how)


def _xp(x: Tensor) -> Any:
    from .registry import backend_for

    return backend_for(x).namespace(x)


def tie_abs(xp: Any, v: Tensor) -> Tensor:
    """|v| whose derivative at v = 0 is 0 in every framework (JAX's abs has +1 there): an
    exact tie f(x) = f(x + r) gives a zero gradient, hence the same fallback everywhere."""
    return xp.where(v == 0, xp.zeros_like(v), xp.abs(v))


def l1(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    return per_sample(tie_abs(xp, a - b), "sum")


def l2(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    diff = a - b
    return xp.sqrt(xp.clip(per_sample(diff * diff, "sum"), square_floor_for(_dtype_name(diff)), None))


def linf(a: Tensor, b: Tensor) -> Tensor:
    xp = _xp(a)
    return per_sample(tie_abs(xp, a - b), "max")


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
# The norm distances d_X(x, x + r) = ||r||: eq. 18 rescales r_adv by them (the others keep l2).
NORM_DISTANCES = ("l1", "l2", "linf")
OUTPUT_DISTANCES: dict[str, Distance] = {"abs": l1, "l1": l1, "l2": l2, "linf": linf, "kl": kl}


def lookup(spec: str | Distance, table: dict[str, Distance], argument: str) -> Distance:
    """A named distance from ``table`` or a user callable; a clear error otherwise."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in table:
        return table[spec]
    raise ValueError(f"{argument} must be one of {sorted(table)} or a callable (a, b) -> per-sample distances, got {spec!r}")
