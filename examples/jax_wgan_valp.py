"""WGAN-VALP on 2-D data in JAX: Flax NNX models, optax, one ``nnx.jit`` step per update.

A generator learns 8 Gaussians; the critic's estimate E f(real) - E f(fake) on fixed evaluation
sets is printed next to the exact W1 between those sets (an optimal assignment). The critic
goes through ``pure_critic`` so that VALP's extra passes could not touch BatchNorm statistics
(this MLP has none; an NNX critic with ``nnx.BatchNorm`` or ``nnx.SpectralNorm`` works the same
way). The step returns ``aux.stats``, VALP's statistics under the core's names.

    python -m examples.jax_wgan_valp --steps 300     # or: python examples/jax_wgan_valp.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from valr_core import VALP, ALState
from valr_core.frontends.nnx import pure_critic

if __package__:  # python -m examples.jax_wgan_valp, or imported
    from .common import eight_gaussians, exact_w1, parse_args, report
else:  # python examples/jax_wgan_valp.py: common.py is beside this file, on sys.path
    from common import eight_gaussians, exact_w1, parse_args, report


class MLP(nnx.Module):
    def __init__(self, n_in: int, n_out: int, rngs: nnx.Rngs, hidden: int = 64) -> None:
        self.layers = nnx.List([nnx.Linear(n_in, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs), nnx.Linear(hidden, n_out, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(__doc__, argv)

    rng = np.random.default_rng(args.seed)
    gen, critic = MLP(2, 2, nnx.Rngs(args.seed)), MLP(2, 1, nnx.Rngs(args.seed + 1))
    opt_g = nnx.Optimizer(gen, optax.adam(args.lr_gen, b1=0.5, b2=0.9), wrt=nnx.Param)
    opt_d = nnx.Optimizer(critic, optax.adam(args.lr_critic, b1=0.5, b2=0.9), wrt=nnx.Param)
    valp = VALP(backend="jax", mode="al", rho=args.rho, xi=1.0, eps_min=args.eps_min, eps_max=args.eps_max)
    al_state = ALState(jnp.zeros((), jnp.float32))
    key = jax.random.key(args.seed)
    n = args.batch

    @nnx.jit
    def critic_step(critic, opt_d, gen, real, key, al_state):
        key, kz = jax.random.split(key)
        fake = jax.lax.stop_gradient(gen(jax.random.normal(kz, (n, 2), jnp.float32)))
        x = jnp.concatenate([real, fake])

        def objective(critic):
            fx = critic(x)
            penalty, aux = valp.loss(pure_critic(critic), x, key, al_state, fx=fx)
            return jnp.mean(fx[n:]) - jnp.mean(fx[:n]) + penalty, aux

        (_, aux), grads = nnx.value_and_grad(objective, has_aux=True)(critic)
        opt_d.update(critic, grads)
        return valp.update(al_state, aux.constraint), aux.rng, aux.stats  # mu <- max(0, mu + rho * mean L)

    @nnx.jit
    def gen_step(gen, opt_g, critic, key):
        key, kz = jax.random.split(key)
        grads = nnx.grad(lambda g: -jnp.mean(critic(g(jax.random.normal(kz, (n, 2), jnp.float32)))))(gen)
        opt_g.update(gen, grads)
        return key

    real_eval, z_eval = eight_gaussians(rng, 512), jnp.asarray(rng.standard_normal((512, 2)), jnp.float32)
    history: list[dict[str, float]] = []
    stats: dict[str, jax.Array] = {}  # the last critic step's

    def evaluate(step: int) -> None:
        fake = np.asarray(gen(z_eval))
        estimate = float(jnp.mean(critic(real_eval)) - jnp.mean(critic(fake)))
        # "valp/mu": the multiplier after the last update (aux.stats holds the one the step used).
        history.append(report(step, estimate, exact_w1(real_eval, fake), {**stats, "valp/mu": al_state.mu}))

    evaluate(0)
    for step in range(1, args.steps + 1):
        for _ in range(args.n_critic):
            al_state, key, stats = critic_step(critic, opt_d, gen, jnp.asarray(eight_gaussians(rng, n)), key, al_state)
        key = gen_step(gen, opt_g, critic, key)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)
    return history


if __name__ == "__main__":
    main()
