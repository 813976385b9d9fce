"""Each framework's idioms: torch eager/compile with untouched .grad and BatchNorm statistics,
TF eager/tf.function with Keras BatchNorm, JAX jit with explicit state."""

from __future__ import annotations

import numpy as np
import pytest

from valr_core import VALP

RS = np.random.default_rng(11)
X = RS.normal(size=(12, 5)).astype(np.float32)


@pytest.mark.framework("torch")
def test_torch_leaves_grads_and_batchnorm_stats_untouched() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)  # a user's accumulated gradients
    bn = net[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    res, _ = VALP(n_power=3).violations(net, torch.tensor(X), torch.Generator().manual_seed(0))
    for p in net.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 7.0))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2] and bn.track_running_stats
    assert res.violations.requires_grad  # still differentiable w.r.t. the critic
    # An ordinary forward pass still updates the statistics (the freeze is scoped).
    net(torch.tensor(X))
    assert not torch.equal(bn.running_mean, before[0])


@pytest.mark.framework("torch")
def test_torch_compile_matches_eager() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    valp = VALP()

    def step(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return valp.loss(net, x, g)[0]

    eager = step(torch.tensor(X), torch.Generator().manual_seed(0))
    # "eager" compiles the captured graphs with Dynamo but skips codegen, keeping the test
    # fast; graph breaks (Generator draws, autograd.grad) are what README documents.
    compiled = torch.compile(step, backend="eager")(torch.tensor(X), torch.Generator().manual_seed(0))
    torch.testing.assert_close(compiled, eager)


@pytest.mark.framework("tf")
def test_tf_function_matches_eager_and_keras_batchnorm_is_frozen() -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16), keras.layers.BatchNormalization(), keras.layers.Activation("tanh"), keras.layers.Dense(1)])
    bn = net.layers[1]
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    valp = VALP(n_power=2, mode="al")

    def critic(x: tf.Tensor) -> tf.Tensor:
        return net(x, training=True)

    def step(x, gen, mu):
        with tf.GradientTape() as tape:
            loss, aux = valp.loss(critic, x, gen, valp.init_state(x)._replace(mu=mu), freeze=net)
        return loss, tape.gradient(loss, net.trainable_variables), aux.constraint

    x = tf.constant(X)
    eager = step(x, tf.random.Generator.from_seed(1), tf.constant(0.5))
    graph = tf.function(step)(x, tf.random.Generator.from_seed(1), tf.constant(0.5))
    np.testing.assert_allclose(graph[0].numpy(), eager[0].numpy(), rtol=1e-5)
    for a, b in zip(graph[1], eager[1], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    # VALP's own passes (graph and eager) left the moving statistics alone.
    for v, b in zip((bn.moving_mean, bn.moving_variance), before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
    net(x, training=True)
    assert not np.array_equal(bn.moving_mean.numpy(), before[0])


@pytest.mark.framework("tf")
def test_tf_function_rejects_nan_at_run_time() -> None:
    import tensorflow as tf

    w = tf.constant(RS.normal(size=5).astype(np.float32))
    fn = tf.function(lambda x, g: VALP().loss(lambda z: tf.linalg.matvec(z, w), x, g)[0])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="x contains NaN or Inf"):
        fn(tf.constant(bad), tf.random.Generator.from_seed(0))


@pytest.mark.framework("jax")
def test_jax_jit_matches_eager_with_explicit_state() -> None:
    import jax
    import jax.numpy as jnp

    w1 = jnp.asarray(RS.normal(size=(5, 16)), jnp.float32)
    w2 = jnp.asarray(RS.normal(size=(16, 1)), jnp.float32)
    valp = VALP(mode="al", rho=0.1, fraction=0.5)

    def step(params, x, key, state):
        def objective(p):
            return valp.loss(lambda z: jnp.tanh(z @ p[0]) @ p[1], x, key, state)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, grads, valp.update(state, aux.constraint), aux.rng

    x, key = jnp.asarray(X), jax.random.key(0)
    state = valp.init_state(x)
    eager = step((w1, w2), x, key, state)
    jitted = jax.jit(step)((w1, w2), x, key, state)
    for a, b in zip(jax.tree.leaves(jitted[:3]), jax.tree.leaves(eager[:3]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(jitted[2].mu) > 0  # the multiplier moved, functionally
    assert not np.array_equal(jax.random.key_data(jitted[3]), jax.random.key_data(key))
