"""The VALP algorithm (paper eqs. 16-24), framework-free.

Split in two so tests can inject fixed draws: ``sample_draws`` consumes randomness, and
``compute_violations`` is deterministic given the draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .config import ValpConfig
from .distances import TINY, per_sample
from .interface import Backend, Rng, Tensor


class Draws(NamedTuple):
    """The random inputs of one VALP evaluation.

    direction: (m, ...) initial direction, any scale (normalised per sample before use).
    eps: (m,) perturbation radii. index: (m,) rows of the batch regularised, or None = all.
    """

    direction: Tensor
    eps: Tensor
    index: Tensor | None


class Violations(NamedTuple):
    """Per-sample results of one evaluation (m = regularised samples)."""

    violations: Tensor  # (m,) max(0, quotient - K); carries gradients to the critic
    quotients: Tensor  # (m,) d_Y / d_X; carries gradients
    r_adv: Tensor  # (m, ...) the perturbation actually applied (after clipping), detached
    eps: Tensor  # (m,) radii drawn
    index: Tensor | None  # (m,) rows regularised, or None


def _per_sample_view(xp: Any, v: Tensor, like: Tensor) -> Tensor:
    """Reshape a (m,) vector to broadcast against a (m, ...) batch."""
    return xp.reshape(v, (-1,) + (1,) * (like.ndim - 1))


def unit_directions(xp: Any, d: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample l2 normalisation; also returns which samples had a usable (finite, >0) norm."""
    norm = xp.sqrt(per_sample(d * d, "sum"))
    usable = xp.isfinite(norm) & (norm > TINY)
    safe = xp.where(usable, norm, xp.ones_like(norm))
    return d / _per_sample_view(xp, safe, d), usable


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
    with f(x) and x held constant; the result is detached. A sample whose gradient is zero or
    not finite keeps its random start direction.
    """
    xp = backend.namespace(x)
    distance = config.power_distance
    x_const = backend.stop_gradient(x)
    fx_const = backend.stop_gradient(fx)
    fallback, _ = unit_directions(xp, start)
    d = fallback

    def total_distance(r: Tensor) -> Tensor:
        return xp.sum(distance(fx_const, critic(x_const + r)))

    for _ in range(config.n_power):
        g = backend.grad(total_distance, config.xi * d)
        unit, usable = unit_directions(xp, backend.stop_gradient(g))
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

    ``fx`` may pass the critic's outputs on the whole batch ``x`` to save a forward pass.
    ``freeze``: the module/model whose normalisation statistics VALP's passes must not update
    (default: the critic itself when it is one, or the owner of a bound method).
    Both f(x) and f(x + r_adv) carry gradients to the critic's parameters (unless
    ``stop_gradient_clean``); r_adv itself is a constant.
    """
    xp = backend.namespace(x)
    if draws.index is not None:
        x = xp.take(x, draws.index, axis=0)
        if fx is not None:
            fx = xp.take(fx, draws.index, axis=0)
    with backend.frozen_state(critic if freeze is None else freeze):
        if fx is None:
            fx = critic(x)
        _check_output(backend, fx, x, "critic(x)")
        d = adversarial_direction(backend, config, critic, x, fx, draws.direction)
        r_adv = backend.stop_gradient(_per_sample_view(xp, draws.eps, d) * d)
        x_adv = x + r_adv
        if config.clip is not None:
            x_adv = xp.clip(x_adv, config.clip[0], config.clip[1])
        fx_adv = critic(x_adv)
    _check_output(backend, fx_adv, x, "critic(x + r_adv)")
    if config.stop_gradient_clean:
        fx = backend.stop_gradient(fx)
    # d_X on the pair actually evaluated (after clipping), floored so the quotient stays finite.
    dx = xp.clip(config.input_distance(x, x_adv), TINY, None)
    quotients = config.output_distance(fx, fx_adv) / dx
    violations = xp.clip(quotients - config.K, 0.0, None)
    return Violations(violations, quotients, backend.stop_gradient(x_adv - x), draws.eps, draws.index)


def _check_output(backend: Backend, y: Tensor, x: Tensor, what: str) -> None:
    y_batch, x_batch = backend.shape(y)[0] if backend.shape(y) else None, backend.shape(x)[0]
    if isinstance(y_batch, int) and isinstance(x_batch, int) and y_batch != x_batch:
        raise ValueError(f"{what} must return one output per sample: got shape {tuple(backend.shape(y))} for a batch of {x_batch}")
    if not backend.is_floating(y):
        raise TypeError(f"{what} must return floating-point outputs, got {backend.dtype_name(y)}")
