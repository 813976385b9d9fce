"""The VALP algorithm (paper eqs. 16-24), framework-free.

Split in two so tests can inject fixed draws: ``sample_draws`` consumes randomness, and
``compute_violations`` is deterministic given the draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .config import ValpConfig
from .distances import NORM_DISTANCES, per_sample
from .interface import Backend, Rng, Tensor
from .precision import astype, work_dtype


class Draws(NamedTuple):
    """The random inputs of one VALP evaluation.

    direction: (m, ...) initial direction, any scale (normalised per sample before use).
    eps: (m,) perturbation radii. index: (m,) rows of the batch regularised, or None = all.
    """

    direction: Tensor
    eps: Tensor
    index: Tensor | None


class Violations(NamedTuple):
    """Per-sample results of one evaluation (m = regularised samples).

    violations, quotients: in the work dtype (float32 for float16/bfloat16 inputs). A pair whose
    measured d_X fell below ``DROP_RATIO`` times its drawn eps (clipping or rounding removed the
    perturbation) is dropped: quotient and violation 0, ``kept`` False."""

    violations: Tensor  # (m,) max(0, quotient - K); carries gradients to the critic
    quotients: Tensor  # (m,) d_Y / d_X; carries gradients
    r_adv: Tensor  # (m, ...) the perturbation actually applied (after clipping), detached
    eps: Tensor  # (m,) radii drawn
    index: Tensor | None  # (m,) rows regularised, or None
    kept: Tensor | None = None  # (m,) bool: False for dropped pairs


# A pair whose d_X, measured after clipping and rounding, is below DROP_RATIO * eps is dropped
# (SPEC: never divided by a floor). Its quotient would divide an output difference by a distance
# the clipping (or x's dtype) all but erased: 1.5e11 for a train-mode BatchNorm critic.
DROP_RATIO = 1e-2


def _per_sample_view(xp: Any, v: Tensor, like: Tensor) -> Tensor:
    """Reshape a (m,) vector to broadcast against a (m, ...) batch."""
    return xp.reshape(v, (-1,) + (1,) * (like.ndim - 1))


def unit_directions(backend: Backend, d: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample l2 normalisation (in d's dtype); also returns which samples had a usable
    (finite, nonzero) direction. Scaled by the per-sample max-abs before squaring and summed
    in the work dtype, so tiny float16 gradients neither underflow nor large ones overflow."""
    xp = backend.namespace(d)
    w = astype(backend, d, work_dtype(backend, d))
    peak = per_sample(xp.abs(w), "max")
    ok = xp.isfinite(peak) & (peak > 0)
    s = w / _per_sample_view(xp, xp.where(ok, peak, xp.ones_like(peak)), w)
    norm = xp.sqrt(per_sample(s * s, "sum"))  # in [1, sqrt(size)] where ok
    usable = ok & xp.isfinite(norm)
    unit = s / _per_sample_view(xp, xp.where(usable, norm, xp.ones_like(norm)), s)
    return astype(backend, unit, d.dtype), usable


def metric_norms(backend: Backend, config: ValpConfig, d: Tensor) -> Tensor | None:
    """(m,) ||d||_X of l2-unit directions for the norm distances l1 / linf (eq. 18), in the
    work dtype; None when r_adv keeps the l2 scale (l2, "one", callables)."""
    name = config.d_X if isinstance(config.d_X, str) else None
    if name not in NORM_DISTANCES or name == "l2":
        return None
    xp = backend.namespace(d)
    a = xp.abs(astype(backend, d, work_dtype(backend, d)))
    return per_sample(a, "sum" if name == "l1" else "max")


def sample_draws(backend: Backend, config: ValpConfig, x: Tensor, rng: Rng) -> tuple[Draws, Rng]:
    """Draw the subset, initial directions and radii for batch ``x`` from ``rng``."""
    xp = backend.namespace(x)
    shape = backend.shape(x)
    batch = shape[0]
    index = None
    if config.fraction < 1.0:
        if not isinstance(batch, int):
            raise ValueError("fraction < 1 needs a batch size known when tracing; give the input a static batch dimension")
        keys, rng = backend.uniform(rng, (batch,), x)
        index = xp.argsort(keys)[: config.subset_size(batch)]
        batch = config.subset_size(batch)
    sub_shape = (batch, *shape[1:])
    if config.start == "uniform":
        direction, rng = backend.uniform(rng, sub_shape, x)
        direction = direction - 0.5  # the released code's U[-0.5, 0.5) start
    else:
        direction, rng = backend.normal(rng, sub_shape, x)
    unit, rng = backend.uniform(rng, (batch,), x)
    eps = config.eps_min + (config.eps_max - config.eps_min) * unit
    return Draws(direction, eps, index), rng


def adversarial_direction(
    backend: Backend,
    config: ValpConfig,
    critic: Callable[[Tensor], Tensor],
    x: Tensor,
    fx: Tensor,
    start: Tensor,
) -> Tensor:
    """Unit virtual adversarial directions (m, ...) by ``n_power`` power iterations (eq. 23).

    Each step differentiates sum_i d_Y(f(x_i), f(x_i + xi*d_i)) w.r.t. the perturbation only,
    with f(x) and x held constant; the result is detached. A sample whose gradient is zero,
    tied (f(x + xi*d) = f(x) exactly) or not finite keeps its random start direction, and a
    critic that ignores x falls back for every sample, in every framework alike.
    """
    xp = backend.namespace(x)
    distance = config.power_distance
    x_const = backend.stop_gradient(x)
    fx_const = backend.stop_gradient(fx)
    fallback, _ = unit_directions(backend, start)
    d = fallback

    def total_distance(r: Tensor) -> Tensor:
        y = _check_output(backend, critic(x_const + r), x, "critic(x + xi * d)", like=fx_const)
        work = work_dtype(backend, fx_const, y)
        return xp.sum(distance(astype(backend, fx_const, work), astype(backend, y, work)))

    for _ in range(config.n_power):
        g = backend.grad(total_distance, config.xi * d)
        unit, usable = unit_directions(backend, backend.stop_gradient(g))
        d = xp.where(_per_sample_view(xp, usable, unit), unit, fallback)
    return d


def compute_violations(
    backend: Backend,
    config: ValpConfig,
    critic: Callable[[Tensor], Tensor],
    x: Tensor,
    draws: Draws,
    fx: Tensor | None = None,
    freeze: Any = None,
) -> Violations:
    """Lipschitz violations at virtual adversarial pairs (eq. 16), deterministic given ``draws``.

    ``fx`` may pass the critic's outputs on the whole batch ``x`` to save a forward pass; it
    must have the critic's output shape ((N, 1) and (N,) count as one shape: a trailing 1 is
    squeezed). ``freeze``: the module/model whose normalisation statistics VALP's passes must
    not update (default: the critic itself when it is one, or the owner of a bound method).
    Both f(x) and f(x + r_adv) carry gradients to the critic's parameters (unless
    ``stop_gradient_clean``); r_adv itself is a constant.
    """
    xp = backend.namespace(x)
    if draws.index is not None:
        x = xp.take(x, draws.index, axis=0)
        if fx is not None:
            fx = xp.take(fx, draws.index, axis=0)
    with backend.frozen_state(critic if freeze is None else freeze):
        what = "critic(x)" if fx is None else "fx"
        fx = _check_output(backend, critic(x) if fx is None else fx, x, what)
        d = adversarial_direction(backend, config, critic, x, fx, draws.direction)
        radius = _per_sample_view(xp, draws.eps, d)
        scale = metric_norms(backend, config, d)
        if scale is not None:  # eq. 18: d_X(x, x + r_adv) = eps for l1 / linf as well
            radius = radius / _per_sample_view(xp, astype(backend, scale, x.dtype), d)
        r_adv = backend.stop_gradient(radius * d)
        x_adv = x + r_adv
        if config.clip is not None:
            x_adv = xp.clip(x_adv, config.clip[0], config.clip[1])
        fx_adv = _check_output(backend, critic(x_adv), x, "critic(x + r_adv)", like=fx)
    if config.stop_gradient_clean:
        fx = backend.stop_gradient(fx)
    work = work_dtype(backend, x, fx, fx_adv)
    x_w, x_adv_w = astype(backend, x, work), astype(backend, x_adv, work)
    # d_X on the pair actually evaluated (after clipping and rounding to x's dtype).
    dx = config.input_distance(x_w, x_adv_w)
    dy = config.output_distance(astype(backend, fx, work), astype(backend, fx_adv, work))
    kept = _kept_pairs(backend, config, xp, dx, draws.eps, x_w, x + r_adv, work)
    zero = xp.zeros_like(dx)
    quotients = xp.where(kept, dy / xp.where(kept, dx, xp.ones_like(dx)), zero)
    violations = xp.where(kept, xp.clip(quotients - config.K, 0.0, None), zero)
    return Violations(violations, quotients, backend.stop_gradient(x_adv - x), draws.eps, draws.index, kept)


def _kept_pairs(backend: Backend, config: ValpConfig, xp: Any, dx: Tensor, eps: Tensor, x_w: Tensor,
                unclipped: Tensor, work: str) -> Tensor:
    """dx >= DROP_RATIO * (the distance drawn): eps for the norm distances (eq. 18), else d_X
    of the unclipped pair when clipping is on; only dx > 0 otherwise."""
    name = config.d_X if isinstance(config.d_X, str) else None
    if name in NORM_DISTANCES:
        drawn = astype(backend, eps, work)
    elif config.clip is not None:
        drawn = config.input_distance(x_w, astype(backend, backend.stop_gradient(unclipped), work))
    else:
        return xp.isfinite(dx) & (dx > 0)
    return xp.isfinite(dx) & (dx > 0) & (dx >= DROP_RATIO * drawn)


def _check_output(backend: Backend, y: Tensor, x: Tensor, what: str, like: Tensor | None = None) -> Tensor:
    """``y`` with one output per sample of ``x`` (a trailing dimension of 1 squeezed), and the
    shape of ``like`` when given; a ValueError naming the shapes otherwise (TF graphs with a
    dynamic batch size: a run-time assertion)."""
    if not backend.is_tensor(y):
        kind = f"{type(y).__module__}.{type(y).__qualname__}"
        raise TypeError(f"{what} must be a tensor of x's framework, got {kind}")
    if not backend.is_floating(y):
        raise TypeError(f"{what} must return floating-point outputs, got {backend.dtype_name(y)}")
    shape, x_batch = backend.shape(y), backend.shape(x)[0]
    if len(shape) == 0:
        raise ValueError(f"{what} must return one output per sample, shape (N,) or (N, ...) with N = {x_batch}, "
                         "got a scalar of shape (); do not reduce over the batch")
    y_batch = shape[0]
    if isinstance(y_batch, int) and isinstance(x_batch, int):
        if y_batch != x_batch:
            raise ValueError(f"{what} must return one output per sample: got shape {_shape_str(shape)} for a batch of "
                             f"{x_batch} (x has shape {_shape_str(backend.shape(x))})")
    else:
        xp = backend.namespace(y)
        y = backend.require(y, xp.asarray(y_batch) == xp.asarray(x_batch),
                            f"{what} must return one output per sample: its batch size differs from x's")
    if len(shape) == 2 and shape[1] == 1:  # (N, 1) -> (N,): one scalar per sample either way
        y = backend.namespace(y).reshape(y, (-1,))
        shape = (y_batch,)
    if like is not None:
        want = backend.shape(like)
        if len(want) != len(shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                          for a, b in zip(want[1:], shape[1:], strict=True)):
            raise ValueError(f"{what} must have the shape of critic(x): got {_shape_str(shape)}, expected "
                             f"{_shape_str(want)} (a trailing dimension of 1 is squeezed)")
    return y


def _shape_str(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + ("," if len(shape) == 1 else "") + ")"
