"""The precision policy: with float16 / bfloat16 inputs, normalisation (after max-abs scaling),
distances, quotients, violations, penalty and the AL multiplier are computed in the *work dtype*,
float32 (float64 when any operand is); directions and perturbations stay in x's dtype, so d_X is
measured on the pair the critic sees. Floors are per dtype (``distances.square_floor_for``)."""

from __future__ import annotations

from typing import Any

from .interface import Backend, Tensor


def work_dtype(backend: Backend, *tensors: Tensor) -> str:
    """"float64" if any of ``tensors`` is float64, else "float32"."""
    return "float64" if any(backend.dtype_name(t) == "float64" for t in tensors) else "float32"


def astype(backend: Backend, x: Tensor, dtype: Any) -> Tensor:
    """``x`` in ``dtype`` (a name such as "float32", or a native dtype); differentiable; a
    no-op when it already has it."""
    xp = backend.namespace(x)
    target = getattr(xp, dtype) if isinstance(dtype, str) else dtype
    name = dtype if isinstance(dtype, str) else str(getattr(dtype, "name", dtype))
    if backend.dtype_name(x) == name.removeprefix("torch."):
        return x
    cast = getattr(xp, "astype", None)  # TF's NumPy namespace has none: asarray casts
    return cast(x, target) if cast is not None else xp.asarray(x, dtype=target)


def multiplier_like(backend: Backend, state: Any, like: Tensor) -> Any:
    """An ``ALState`` whose mu has ``like``'s dtype (the work dtype of the violations), so
    mu * R(L) never mixes dtypes (TF would refuse) nor rounds mu to bfloat16."""
    if state is None or isinstance(state.mu, float) or not backend.is_tensor(state.mu):
        return state
    return state._replace(mu=astype(backend, state.mu, like.dtype))


# Unit roundoff 2**-p of each floating dtype: |fl(v) - v| <= UNIT_ROUNDOFF * |v|.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
