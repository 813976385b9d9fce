"""Per-sample distances d_X (inputs) and d_Y (critic outputs): each maps two batches of equal
shape (N, ...) to a vector (N,), reducing over the non-batch axes; a user distance is any
callable with that contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops

from .registry import backend_for

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


def per_sample(x: Tensor, how: str) -> Tensor:
    """Reduce over every axis but the first (the batch)."""
    return einops.reduce(x, "b ... -> b", how)


def _xp(x: Tensor) -> Any:
    return backend_for(x).namespace(x)


# Ties (docs/conventions-ties.md): d_Y(f(x), b)'s derivative w.r.t. b at a tie b = f(x) is taken
# in the +1 direction, so the power iteration still steps along grad f when f(x + xi d) - f(x)
# rounds to 0 (common in bf16/fp16); the same in every framework (their abs differ at 0).
def plus_sign(xp: Any, t: Tensor) -> Tensor:
    """sign(t) with sign(0) := +1 (and -1 for NaN, whose product stays NaN); no gradient."""
    return xp.where(t >= 0, xp.ones_like(t), -xp.ones_like(t))


def tie_abs(xp: Any, t: Tensor) -> Tensor:
    """|t| whose derivative at t = 0 is +1 in every framework: t * plus_sign(t)."""
    return t * plus_sign(xp, t)


def l1(a: Tensor, b: Tensor) -> Tensor:
    return per_sample(tie_abs(_xp(a), b - a), "sum")


def l2(a: Tensor, b: Tensor) -> Tensor:
    """||b - a||_2, floored at the dtype's tiny value; at a tie (squared norm <= floor) its
    derivative w.r.t. b is ones / sqrt(k), k = the per-sample size (|.|'s +1 rule for k = 1)."""
    backend = backend_for(a)
    xp = backend.namespace(a)
    diff = b - a
    squared = per_sample(diff * diff, "sum")
    floor = square_floor_for(backend.dtype_name(diff))
    norm = xp.sqrt(xp.clip(squared, floor, None))
    total = per_sample(diff, "sum")
    # Value 0 (t - stop_gradient(t)), derivative ones / sqrt(k), and only at ties.
    tie = (total - backend.stop_gradient(total)) / xp.sqrt(per_sample(xp.ones_like(diff), "sum"))
    return norm + xp.where(squared <= floor, tie, xp.zeros_like(tie))


def linf(a: Tensor, b: Tensor) -> Tensor:
    """max_j |b_j - a_j|; at a tie b = a the max shares the +1 derivatives evenly: ones / k."""
    return per_sample(tie_abs(_xp(a), b - a), "max")


def one(a: Tensor, b: Tensor) -> Tensor:
    """The constant distance 1 (VAT: d_X = 1 turns the quotient into the divergence itself)."""
    return per_sample(_xp(a).zeros_like(a), "sum") + 1.0


def _log_softmax(xp: Any, logits: Tensor) -> Tensor:
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)) over the last axis, for (N, C) logits (VAT's divergence)."""
    xp = _xp(p_logits)
    log_p, log_q = _log_softmax(xp, p_logits), _log_softmax(xp, q_logits)
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
