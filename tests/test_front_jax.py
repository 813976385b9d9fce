"""The Flax NNX front door: an NNX critic with BatchNorm, under nnx.jit and under plain jax.jit;
VALP's extra passes must leave the BatchNorm statistics to the one real forward pass."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from valr_core import VALP  # noqa: E402
from valr_core.frontends.nnx import apply_critic, pure_critic, pure_critic_from  # noqa: E402

pytestmark = pytest.mark.framework("jax")


class Critic(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(2, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.bn(self.l1(x))))[:, 0]


X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), dtype=jnp.float32)
VALP_AL = VALP(mode="al", K=0.0, rho=0.5, n_power=2)


def _stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def _after_one_forward(model: nnx.Module, x: jax.Array) -> list[np.ndarray]:
    copy = nnx.clone(model)
    copy(x)
    return _stats(copy)


def test_nnx_jit_step_updates_statistics_once_and_trains_parameters() -> None:
    critic = Critic(nnx.Rngs(0))
    expected = _after_one_forward(critic, X)
    params_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(critic, nnx.Param))]
    opt = nnx.Optimizer(critic, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(critic, opt, x, key, al_state):
        def objective(critic):
            fx = critic(x)  # the one pass that updates the statistics
            penalty, aux = VALP_AL.loss(pure_critic(critic), x, key, al_state, fx=fx)
            return -jnp.mean(fx) + penalty, aux

        (loss, aux), grads = nnx.value_and_grad(objective, has_aux=True)(critic)
        opt.update(critic, grads)
        return loss, VALP_AL.update(al_state, aux.constraint), aux.rng

    loss, al_state, _ = step(critic, opt, X, jax.random.key(1), VALP_AL.init_state(X))
    for a, b in zip(_stats(critic), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    params_after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(critic, nnx.Param))]
    assert all(np.isfinite(p).all() for p in params_after)
    assert any(not np.array_equal(a, b) for a, b in zip(params_after, params_before, strict=True))
    assert float(al_state.mu) > 0


def test_functional_split_pattern_under_jax_jit_matches_nnx() -> None:
    critic = Critic(nnx.Rngs(0))
    expected_stats = _after_one_forward(critic, X)
    graphdef, params, rest = nnx.split(critic, nnx.Param, ...)
    state = VALP_AL.init_state(X)

    def objective(params, rest, x, key):
        fx, new_state = apply_critic(graphdef, params, rest, x=x)
        penalty, aux = VALP_AL.loss(pure_critic_from(graphdef, params, rest), x, key, state, fx=fx)
        return -jnp.mean(fx) + penalty, (nnx.split_state(new_state, nnx.Param, ...)[1], aux.constraint, penalty)

    grad_fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
    (loss, (new_rest, constraint, penalty)), grads = grad_fn(params, rest, X, jax.random.key(2))
    for a, b in zip([np.asarray(v) for v in jax.tree.leaves(new_rest)], expected_stats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The same numbers as the NNX-object form on the same key.
    ref_penalty, ref_aux = VALP_AL.loss(pure_critic(critic), X, jax.random.key(2), state)
    np.testing.assert_allclose(float(penalty), float(ref_penalty), rtol=1e-5)
    np.testing.assert_allclose(float(constraint), float(ref_aux.constraint), rtol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# -- spectral normalisation: VALP's passes leave the power iteration alone -----------------------
class SNCritic(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.SpectralNorm(nnx.Linear(2, 16, rngs=rngs), rngs=rngs)
        self.l2 = nnx.SpectralNorm(nnx.Linear(16, 1, rngs=rngs), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.l1(x)))[:, 0]


@pytest.mark.parametrize("make", [Critic, SNCritic], ids=["batchnorm", "spectral_norm"])
def test_pure_critic_leaves_the_critics_statistics_alone(make: type) -> None:
    critic = make(nnx.Rngs(0))
    before = _stats(critic)  # BatchNorm's running statistics; SpectralNorm's u and sigma
    assert before
    loss, aux = VALP_AL.loss(pure_critic(critic), X, jax.random.key(0), VALP_AL.init_state(X))
    assert np.isfinite(float(loss)) and float(aux.constraint) > 0
    for a, b in zip(_stats(critic), before, strict=True):
        np.testing.assert_array_equal(a, b)
    critic(X)  # an ordinary call in train mode still updates them (advances the power iteration)
    assert any(not np.array_equal(a, b) for a, b in zip(_stats(critic), before, strict=True))


def test_nnx_jit_step_advances_spectral_norm_once() -> None:
    critic = SNCritic(nnx.Rngs(0))
    expected = _after_one_forward(critic, X)

    @nnx.jit
    def step(critic, x, key, al_state):
        def objective(critic):
            fx = critic(x)  # the one pass that advances u
            penalty, aux = VALP_AL.loss(pure_critic(critic), x, key, al_state, fx=fx)
            return -jnp.mean(fx) + penalty, aux

        return nnx.value_and_grad(objective, has_aux=True)(critic)

    (_, aux), _ = step(critic, X, jax.random.key(1), VALP_AL.init_state(X))
    for a, b in zip(_stats(critic), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert {"valp/penalty", "valp/mean_violation", "valp/max_violation", "valp/violating_fraction", "valp/mu"} <= set(aux.stats)
    assert all(k.startswith("valp/") for k in aux.stats)


def test_linen_spectral_norm_documented_pattern() -> None:
    import flax.linen as nn

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
            x = jnp.tanh(nn.SpectralNorm(nn.Dense(16))(x, update_stats=update_stats))
            return nn.SpectralNorm(nn.Dense(1))(x, update_stats=update_stats)[:, 0]

    model = Linen()
    variables = model.init(jax.random.key(0), X, update_stats=False)

    def objective(params, key):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        fx, updates = model.apply(v, X, update_stats=True, mutable=["batch_stats"])  # u moves once
        penalty, aux = VALP_AL.loss(lambda z: model.apply(v, z, update_stats=False), X, key, VALP_AL.init_state(X), fx=fx)
        return -jnp.mean(fx) + penalty, updates["batch_stats"]

    (_, new_stats), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables["params"], jax.random.key(3))
    _, once = model.apply(variables, X, update_stats=True, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(once["batch_stats"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# -- init_state: any array of the framework --------------------------------------------------------
@pytest.mark.parametrize("like", [jnp.zeros((), jnp.float32), jnp.ones(3, jnp.float32), jnp.arange(4), jnp.ones((2, 3), jnp.bfloat16),
                                  jnp.ones(5, jnp.float16), jnp.zeros((0, 2), jnp.float32), jnp.ones(2, bool), jnp.ones(2, jnp.uint8)],
                         ids=["0d", "1d", "int", "bf16", "fp16", "empty", "bool", "uint8"])
def test_init_state_accepts_any_array(like: jax.Array) -> None:
    mu = VALP_AL.init_state(like).mu
    assert mu.shape == () and mu.dtype == jnp.float32 and float(mu) == 0.0
    jitted = jax.jit(lambda a: VALP_AL.init_state(a).mu)(like)
    assert jitted.shape == () and jitted.dtype == jnp.float32


def test_init_state_keeps_float64() -> None:
    if not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    assert VALP_AL.init_state(jnp.zeros((), jnp.float64)).mu.dtype == jnp.float64
