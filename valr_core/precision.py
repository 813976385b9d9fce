"""The precision policy (SPEC "Decisions taken since"), in one place.

float16 / bfloat16 inputs and critics are supported; what those dtypes cannot hold is done in
the *work dtype*, float32 (float64 when any operand is float64):
- per-sample normalisation: scaled by the per-sample max-abs first, then the squares summed in
  the work dtype, so neither underflows (|grad f| = 1e-3 in float16) nor overflows;
- the distances d_X, d_Y, the quotients, violations, penalty, constraint and the AL multiplier;
- floors are per dtype (``distances.square_floor_for``).
Directions and perturbations stay in x's dtype: the pair VALP evaluates is the one the critic
sees, and d_X is measured on it after rounding.
"""

from __future__ import annotations

from typing import Any

from .interface import Backend, Tensor


def work_dtype(backend: Backend, *tensors: Tensor) -> str:
    """"float64" if any of ``tensors`` is float64, else "float32"."""
    return "float64" if any(backend.dtype_name(t) == "float64" for t in tensors) else "float32"


def astype(backend: Backend, x: Tensor, dtype: Any) -> Tensor:
    """``x`` in ``dtype`` (a name such as "float32", or a native dtype); differentiable; a
    no-op when it already has it. TF's NumPy namespace has no ``astype``: ``asarray`` casts."""
    xp = backend.namespace(x)
    target = getattr(xp, dtype) if isinstance(dtype, str) else dtype
    if backend.dtype_name(x) == (dtype if isinstance(dtype, str) else _name(dtype)):
        return x
    cast = getattr(xp, "astype", None)
    return cast(x, target) if cast is not None else xp.asarray(x, dtype=target)


def _name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).removeprefix("torch.")


def multiplier_like(backend: Backend, state: Any, like: Tensor) -> Any:
    """An ``ALState`` whose mu has ``like``'s dtype (the work dtype of the violations), so
    mu * R(L) never mixes dtypes (TF would refuse) nor rounds mu to bfloat16."""
    if state is None or isinstance(state.mu, float) or not backend.is_tensor(state.mu):
        return state
    return state._replace(mu=astype(backend, state.mu, like.dtype))


# Unit roundoff 2**-p of each floating dtype: |fl(v) - v| <= UNIT_ROUNDOFF * |v|.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
