"""Hand-written VALP in each framework, without valr_core: the baseline of the overhead check.

Same semantics and the same random-draw order as ``valr_core.VALP`` with its defaults
(uniform start, d_X = l2, d_Y = |.|, no clipping) in the augmented-Lagrangian form, so that
with the same seed both give the same numbers and the timing compares the same computation:

    idx = argsort(U(N))[:m]            (only when fraction < 1)
    d0  = U(m, ...) - 0.5,  eps = eps_min + (eps_max - eps_min) U(m)
    d   = normalize(grad_r sum_i |f(x_i) - f(x_i + r_i)|  at r = xi d)     (n_power times)
    L_i = max(0, |f(x_i) - f(x_i + eps_i d_i)| / ||eps_i d_i|| - K)
    penalty = mu mean(L) + rho / 2 mean(L^2);  constraint = mean(L) (detached)

Each function returns (penalty, constraint, next rng). Frameworks are imported lazily.
"""

from __future__ import annotations

from typing import Any

K, XI, EPS_MIN, EPS_MAX, RHO = 1.0, 10.0, 0.1, 10.0, 0.01
TINY = 1e-12


def subset_size(n: int, fraction: float) -> int:
    return max(1, int(round(fraction * n)))


# ----------------------------------------------------------------------------- torch
def torch_valp(critic: Any, x: Any, fx: Any, gen: Any, mu: Any, fraction: float = 1.0, n_power: int = 1) -> tuple[Any, Any, Any]:
    import torch

    n = x.shape[0]
    kw = {"generator": gen, "device": x.device, "dtype": x.dtype}
    if fraction < 1.0:
        idx = torch.argsort(torch.rand(n, **kw))[: subset_size(n, fraction)]
        x, fx = x[idx], fx[idx]
    m = x.shape[0]
    view = (m,) + (1,) * (x.dim() - 1)
    start = torch.rand(x.shape, **kw) - 0.5
    eps = EPS_MIN + (EPS_MAX - EPS_MIN) * torch.rand(m, **kw)

    def unit(v: Any) -> tuple[Any, Any]:
        norm = v.flatten(1).norm(dim=1)
        ok = torch.isfinite(norm) & (norm > TINY)
        return v / torch.where(ok, norm, torch.ones_like(norm)).view(view), ok

    fallback, _ = unit(start)
    d = fallback
    x_c, fx_c = x.detach(), fx.detach()
    for _ in range(n_power):
        r = (XI * d).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((fx_c - critic(x_c + r)).abs().sum(), r)
        u, ok = unit(g)
        d = torch.where(ok.view(view), u, fallback)
    r_adv = (eps.view(view) * d).detach()
    x_adv = x + r_adv
    fx_adv = critic(x_adv)
    dx = (x - x_adv).flatten(1).pow(2).sum(1).clamp_min(TINY * TINY).sqrt().clamp_min(TINY)
    q = (fx - fx_adv).abs().flatten(1).sum(1) / dx
    L = torch.relu(q - K)
    return mu * L.mean() + 0.5 * RHO * (L * L).mean(), L.mean().detach(), gen


# ----------------------------------------------------------------------------- tf
def tf_valp(critic: Any, x: Any, fx: Any, gen: Any, mu: Any, fraction: float = 1.0, n_power: int = 1) -> tuple[Any, Any, Any]:
    import tensorflow as tf

    n = x.shape[0]
    if fraction < 1.0:
        idx = tf.argsort(gen.uniform((n,), dtype=x.dtype))[: subset_size(n, fraction)]
        x, fx = tf.gather(x, idx), tf.gather(fx, idx)
    m = x.shape[0]
    view = (m,) + (1,) * (len(x.shape) - 1)
    start = gen.uniform(x.shape, dtype=x.dtype) - 0.5
    eps = EPS_MIN + (EPS_MAX - EPS_MIN) * gen.uniform((m,), dtype=x.dtype)

    def unit(v: Any) -> tuple[Any, Any]:
        norm = tf.norm(tf.reshape(v, (m, -1)), axis=1)
        ok = tf.math.is_finite(norm) & (norm > TINY)
        return v / tf.reshape(tf.where(ok, norm, tf.ones_like(norm)), view), ok

    fallback, _ = unit(start)
    d = fallback
    x_c, fx_c = tf.stop_gradient(x), tf.stop_gradient(fx)
    for _ in range(n_power):
        r = XI * d
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(r)
            total = tf.reduce_sum(tf.abs(fx_c - critic(x_c + r)))
        g = tf.stop_gradient(tape.gradient(total, r))
        u, ok = unit(g)
        d = tf.where(tf.reshape(ok, view), u, fallback)
    r_adv = tf.stop_gradient(tf.reshape(eps, view) * d)
    x_adv = x + r_adv
    fx_adv = critic(x_adv)
    flat = tf.reshape(x - x_adv, (m, -1))
    dx = tf.maximum(tf.sqrt(tf.maximum(tf.reduce_sum(flat * flat, 1), TINY * TINY)), TINY)
    q = tf.reduce_sum(tf.reshape(tf.abs(fx - fx_adv), (m, -1)), 1) / dx
    L = tf.nn.relu(q - K)
    return mu * tf.reduce_mean(L) + 0.5 * RHO * tf.reduce_mean(L * L), tf.stop_gradient(tf.reduce_mean(L)), gen


# ----------------------------------------------------------------------------- jax
def jax_valp(critic: Any, x: Any, fx: Any, key: Any, mu: Any, fraction: float = 1.0, n_power: int = 1) -> tuple[Any, Any, Any]:
    import jax
    import jax.numpy as jnp

    n = x.shape[0]
    if fraction < 1.0:
        key, sub = jax.random.split(key)
        idx = jnp.argsort(jax.random.uniform(sub, (n,), dtype=x.dtype))[: subset_size(n, fraction)]
        x, fx = x[idx], fx[idx]
    m = x.shape[0]
    view = (m,) + (1,) * (x.ndim - 1)
    key, sub = jax.random.split(key)
    start = jax.random.uniform(sub, x.shape, dtype=x.dtype) - 0.5
    key, sub = jax.random.split(key)
    eps = EPS_MIN + (EPS_MAX - EPS_MIN) * jax.random.uniform(sub, (m,), dtype=x.dtype)

    def unit(v: Any) -> tuple[Any, Any]:
        norm = jnp.sqrt(jnp.sum(v.reshape(m, -1) ** 2, axis=1))
        ok = jnp.isfinite(norm) & (norm > TINY)
        return v / jnp.where(ok, norm, 1.0).reshape(view), ok

    fallback, _ = unit(start)
    d = fallback
    x_c, fx_c = jax.lax.stop_gradient(x), jax.lax.stop_gradient(fx)
    for _ in range(n_power):
        g = jax.grad(lambda r: jnp.sum(jnp.abs(fx_c - critic(x_c + r))))(XI * d)
        u, ok = unit(jax.lax.stop_gradient(g))
        d = jnp.where(ok.reshape(view), u, fallback)
    r_adv = jax.lax.stop_gradient(eps.reshape(view) * d)
    x_adv = x + r_adv
    fx_adv = critic(x_adv)
    dx = jnp.maximum(jnp.sqrt(jnp.maximum(jnp.sum((x - x_adv).reshape(m, -1) ** 2, 1), TINY * TINY)), TINY)
    q = jnp.sum(jnp.abs(fx - fx_adv).reshape(m, -1), 1) / dx
    L = jax.nn.relu(q - K)
    return mu * jnp.mean(L) + 0.5 * RHO * jnp.mean(L * L), jax.lax.stop_gradient(jnp.mean(L)), key
