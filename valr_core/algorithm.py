"""The VALP algorithm (paper eqs. 16-24), framework-free.

Split in two so tests can inject fixed draws: ``sample_draws`` consumes randomness, and
``compute_violations`` is deterministic given the draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import einops

from .config import ValpConfig
from .distances import NORM_DISTANCES, per_sample
from .interface import Backend, Rng, Tensor
from .precision import astype, work_dtype


class Draws(NamedTuple):
    """The random inputs of one VALP evaluation: direction (m, ...), any scale (normalised per
    sample before use); eps (m,) radii; index (m,) rows regularised, or None for all."""

    direction: Tensor
    eps: Tensor
    index: Tensor | None


class Violations(NamedTuple):
    """Per-sample results of one evaluation (m = regularised samples), in the work dtype. A
    finite pair whose measured d_X fell below ``DROP_RATIO`` times its eps is dropped (quotient
    and violation 0, ``kept`` False); a non-finite pair never is (its violation stays NaN/Inf)."""

    violations: Tensor  # (m,) max(0, quotient - K); carries gradients to the critic
    quotients: Tensor  # (m,) d_Y / d_X; carries gradients
    r_adv: Tensor  # (m, ...) the perturbation actually applied (after clipping), detached
    eps: Tensor  # (m,) radii used: those drawn, times ``scale`` for eps_scale="auto"
    index: Tensor | None  # (m,) rows regularised, or None
    kept: Tensor | None = None  # (m,) bool: False for dropped pairs
    scale: Tensor | None = None  # () the data scale the radii were multiplied by (eps_scale="auto")


# A pair whose d_X, measured after clipping and rounding, is below DROP_RATIO * eps is dropped
# (SPEC: never divided by a floor). Its quotient would divide an output difference by a distance
# the clipping (or x's dtype) all but erased: 1.5e11 for a train-mode BatchNorm critic. The rule
# applies to finite pairs only: it never hides a NaN (SPEC "NaN").
DROP_RATIO = 1e-2

# eps_scale="auto": radii times median pairwise distance / EPS_SCALE_REFERENCE (about 1 on
# CIFAR-10 in [-1, 1]), the median over at most EPS_SCALE_SAMPLES samples (docs/conventions-eps-scale.md).
EPS_SCALE_REFERENCE = 40.0
EPS_SCALE_SAMPLES = 256


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


def median_pairwise_distance(backend: Backend, x: Tensor) -> Tensor | None:
    """The median l2 distance over the pairs i < j of at most ``EPS_SCALE_SAMPLES`` samples
    (x[::ceil(N / 256)]), under stop-gradient, in the work dtype; NaN for a non-finite batch, None
    for one sample. From the Gram matrix, so the diagonal is exactly 0 and sorts first: the
    median sits at a static position (jit, tf.function), with no boolean mask."""
    xp = backend.namespace(x)
    n = backend.shape(x)[0]
    if not isinstance(n, int):
        raise ValueError("eps_scale='auto' needs a batch size known when tracing; give the input a static batch dimension")
    if n < 2:
        return None
    stride = -(-n // EPS_SCALE_SAMPLES)
    z = backend.stop_gradient(x[::stride] if stride > 1 else x)
    m = -(-n // stride)
    flat = xp.reshape(astype(backend, z, work_dtype(backend, z)), (m, -1))
    gram = einops.einsum(flat, flat, "i d, j d -> i j")
    g = xp.diagonal(gram)
    d = xp.sqrt(xp.clip(g[:, None] + g[None, :] - 2.0 * gram, 0.0, None))
    ordered = xp.sort(xp.reshape(d, (-1,)))
    pairs = m * (m - 1) // 2
    if pairs % 2:  # the ((pairs + 1) / 2)-th smallest pair
        median = ordered[m + pairs - 1]
    else:  # the mean of the (pairs / 2)-th and (pairs / 2 + 1)-th
        median = 0.5 * (ordered[m + pairs - 2] + ordered[m + pairs])
    finite = xp.all(xp.isfinite(flat))
    return xp.where(finite, median, xp.full_like(median, float("nan")))


def data_scale(backend: Backend, x: Tensor) -> Tensor | None:
    """eps_scale="auto"'s factor: median pairwise distance / EPS_SCALE_REFERENCE (work dtype,
    no gradient); 1 for identical samples (median 0), NaN for a non-finite batch, None for a
    batch of one (no pair: the radii stay absolute)."""
    median = median_pairwise_distance(backend, x)
    if median is None:
        return None
    xp = backend.namespace(median)
    return xp.where(median == 0, xp.ones_like(median), median / EPS_SCALE_REFERENCE)


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
    scale: Tensor | None = None,
) -> Tensor:
    """Unit virtual adversarial directions (m, ...) by ``n_power`` power iterations (eq. 23).

    Each step differentiates sum_i d_Y(f(x_i), f(x_i + xi*d_i)) w.r.t. the perturbation only,
    with f(x) and x held constant; the result is detached. At a tie (f(x + xi*d) = f(x)
    exactly, or after rounding) d_Y's derivative is taken in the +1 direction
    (``distances.tie_abs``), so the step still follows grad f. A sample whose gradient is zero
    or not finite keeps its random start direction, and a critic that ignores x falls back for
    every sample, in every framework alike. ``scale``: eps_scale="auto"'s data scale, which
    multiplies xi as it does the radii (both are lengths in X).
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

    xi = config.xi if scale is None else config.xi * astype(backend, scale, d.dtype)
    for _ in range(config.n_power):
        g = backend.grad(total_distance, xi * d)
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
    scale = data_scale(backend, x) if config.auto_scaled else None  # of the whole batch
    eps = draws.eps if scale is None else draws.eps * astype(backend, scale, draws.eps.dtype)
    batch_finite = None
    if draws.index is not None:
        # Rows outside the subset never reach the quotients: a NaN there must still show.
        batch_finite = xp.all(xp.isfinite(x))
        x = xp.take(x, draws.index, axis=0)
        if fx is not None:
            fx = xp.take(fx, draws.index, axis=0)
    with backend.frozen_state(critic if freeze is None else freeze):
        what = "critic(x)" if fx is None else "fx"
        fx = _check_output(backend, critic(x) if fx is None else fx, x, what)
        d = adversarial_direction(backend, config, critic, x, fx, draws.direction, scale)
        radius = _per_sample_view(xp, eps, d)
        norms = metric_norms(backend, config, d)
        if norms is not None:  # eq. 18: d_X(x, x + r_adv) = eps for l1 / linf as well
            radius = radius / _per_sample_view(xp, astype(backend, norms, x.dtype), d)
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
    dropped = _dropped_pairs(backend, config, xp, dx, dy, eps, x_w, x + r_adv, work)
    zero = xp.zeros_like(dx)
    # Non-finite pairs are not dropped: dy / dx is NaN or Inf there, and stays so.
    quotients = xp.where(dropped, zero, dy / xp.where(dropped, xp.ones_like(dx), dx))
    violations = xp.where(dropped, zero, xp.clip(quotients - config.K, 0.0, None))
    if batch_finite is not None:
        violations = xp.where(batch_finite, violations, xp.full_like(violations, float("nan")))
    return Violations(violations, quotients, backend.stop_gradient(x_adv - x), eps, draws.index, ~dropped, scale)


def _dropped_pairs(backend: Backend, config: ValpConfig, xp: Any, dx: Tensor, dy: Tensor, eps: Tensor, x_w: Tensor,
                   unclipped: Tensor, work: str) -> Tensor:
    """Finite pairs whose dx < DROP_RATIO * (the distance drawn): eps for the norm distances
    (eq. 18), else d_X of the unclipped pair when clipping is on; only dx = 0 otherwise. A
    pair with a non-finite dx or dy is never dropped (its NaN must reach the penalty)."""
    finite = xp.isfinite(dx) & xp.isfinite(dy)
    name = config.d_X if isinstance(config.d_X, str) else None
    if name in NORM_DISTANCES:
        drawn = astype(backend, eps, work)
    elif config.clip is not None:
        drawn = config.input_distance(x_w, astype(backend, backend.stop_gradient(unclipped), work))
    else:
        return finite & ~(dx > 0)
    return finite & ~((dx > 0) & (dx >= DROP_RATIO * drawn))


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
