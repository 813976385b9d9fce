"""Small, independent GP and LP (Gulrajani et al. 2017; Petzka et al. 2018), one per framework.

    GP = lam * mean_i (||grad f(x_hat_i)||_2 - 1)^2
    LP = lam * mean_i max(0, ||grad f(x_hat_i)||_2 - 1)^2
    x_hat_i = real_i + alpha_i (fake_i - real_i),  alpha_i ~ U[0, 1)

The gradient norm is per sample over all non-batch axes. Both need the gradient of the
gradient (double backward): that is the cost VALP avoids. Frameworks are imported lazily.
"""

from __future__ import annotations

from typing import Any

LAM = 10.0
TINY = 1e-12


def _shape(x: Any) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (len(x.shape) - 1)


def torch_penalty(critic: Any, real: Any, fake: Any, gen: Any, one_sided: bool = False, lam: float = LAM) -> Any:
    import torch

    alpha = torch.rand(_shape(real), generator=gen, device=real.device, dtype=real.dtype)
    x_hat = (real + alpha * (fake - real)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norm = torch.sqrt(g.flatten(1).pow(2).sum(1) + TINY)
    gap = torch.relu(norm - 1.0) if one_sided else norm - 1.0
    return lam * gap.pow(2).mean()


def tf_penalty(critic: Any, real: Any, fake: Any, gen: Any, one_sided: bool = False, lam: float = LAM) -> Any:
    import tensorflow as tf

    alpha = gen.uniform(_shape(real), dtype=real.dtype)
    x_hat = tf.stop_gradient(real + alpha * (fake - real))
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x_hat)
        y = tf.reduce_sum(critic(x_hat))
    g = tape.gradient(y, x_hat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    norm = tf.sqrt(tf.reduce_sum(tf.reshape(g, (tf.shape(g)[0], -1)) ** 2, axis=1) + TINY)
    gap = tf.nn.relu(norm - 1.0) if one_sided else norm - 1.0
    return lam * tf.reduce_mean(gap**2)


def jax_penalty(critic: Any, real: Any, fake: Any, key: Any, one_sided: bool = False, lam: float = LAM) -> Any:
    import jax
    import jax.numpy as jnp

    alpha = jax.random.uniform(key, _shape(real), dtype=real.dtype)
    x_hat = jax.lax.stop_gradient(real + alpha * (fake - real))
    g = jax.grad(lambda z: jnp.sum(critic(z)))(x_hat)
    norm = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) + TINY)
    gap = jax.nn.relu(norm - 1.0) if one_sided else norm - 1.0
    return lam * jnp.mean(gap**2)
