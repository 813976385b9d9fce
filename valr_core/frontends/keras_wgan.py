"""Keras 3 front door: a WGAN-VALP ``keras.Model`` with an overridden ``train_step`` (the form of
keras.io's WGAN-GP example) and a callback that puts VALP's statistics into the logs.

    gan = WGANVALP(generator, critic, latent_dim=2, n_critic=5, mode="al", rho=1.0)
    gan.compile(c_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-4))
    gan.fit(dataset, epochs=10, callbacks=[VALPCallback(), keras.callbacks.TensorBoard("tb")])

``train_step`` is written for Keras' TensorFlow backend. On the JAX backend Keras requires a
stateless ``train_step`` and on the torch backend a torch-autograd one; constructing
``WGANVALP`` there raises ``NotImplementedError`` saying what to use instead (VALP itself works
on those backends' tensors: ``VALP(backend="jax")`` with ``critic.stateless_call``, or
``VALPModule`` on the torch tensors Keras returns).
"""

from __future__ import annotations

from typing import Any

import keras

from ..objectives import ALState
from ..valp import VALP

__all__ = ["WGANVALP", "VALPCallback", "STAT_NAMES"]

# VALP's per-step statistics the model keeps in variables; the callback logs them.
STAT_NAMES = ("penalty", "mean_violation", "max_violation", "mean_quotient", "max_quotient", "violating_fraction")


def _require_tensorflow_backend() -> None:
    name = keras.backend.backend()
    if name == "tensorflow":
        return
    hint = {
        "jax": "Keras on JAX needs a stateless train_step; write the step with VALP(backend='jax') "
        "on critic.stateless_call(...) (see examples/jax_wgan_valp.py for a jitted optax step)",
        "torch": "on Keras' torch backend use valr_core.frontends.torch_module.VALPModule on the "
        "torch tensors your Keras models return, in your own torch training loop",
    }.get(name, "use the framework's own VALP front door")
    raise NotImplementedError(f"WGANVALP.train_step is written for Keras' TensorFlow backend, but KERAS_BACKEND is {name!r}: {hint}")


class WGANVALP(keras.Model):
    """A WGAN whose critic is regularised by VALP: ``n_critic`` critic steps, then one
    generator step, per batch of real samples (each critic step draws fresh latents and reuses
    the batch, as keras.io's WGAN-GP does).

    The critic minimises ``E f(G(z)) - E f(x) + penalty`` on ``concat([real, fake])``. In
    ``mode="al"`` the multiplier ``mu`` is a non-trainable ``keras.Variable`` (saved with the
    weights) updated after each critic step. VALP's random state is a ``tf.random.Generator``
    seeded with ``seed``. ``valp`` or ``**config`` configure the penalty (``VALP``'s keywords).
    """

    def __init__(self, generator: keras.Model, critic: keras.Model, *, latent_dim: int, n_critic: int = 5, valp: VALP | None = None, seed: int = 0, **config: Any) -> None:
        _require_tensorflow_backend()
        import tensorflow as tf

        super().__init__()
        if valp is not None and config:
            raise TypeError("pass either a VALP instance or its keyword config, not both")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic!r}")
        self.generator = generator
        self.critic = critic
        self.latent_dim = int(latent_dim)
        self.n_critic = int(n_critic)
        self.valp = valp if valp is not None else VALP(backend="tf", **config)
        self.valp_rng = tf.random.Generator.from_seed(seed)
        self.mu = keras.Variable(0.0, dtype="float32", trainable=False, name="valp_mu")
        self.valp_stats = {k: keras.Variable(0.0, dtype="float32", trainable=False, name=f"valp_{k}") for k in STAT_NAMES}
        self.c_loss_tracker = keras.metrics.Mean(name="c_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.wdist_tracker = keras.metrics.Mean(name="wdist")

    def compile(self, c_optimizer: keras.optimizers.Optimizer, g_optimizer: keras.optimizers.Optimizer, **kwargs: Any) -> None:
        super().compile(**kwargs)
        self.c_optimizer = c_optimizer
        self.g_optimizer = g_optimizer

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.c_loss_tracker, self.g_loss_tracker, self.wdist_tracker]

    def call(self, z: Any, training: bool = False) -> Any:
        return self.generator(z, training=training)

    def _critic_fn(self, x: Any) -> Any:
        return self.critic(x, training=True)

    def train_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        real = data[0] if isinstance(data, tuple | list) else data
        batch = tf.shape(real)[0]
        al = self.valp.mode == "al"
        for _ in range(self.n_critic):
            z = self.valp_rng.normal([batch, self.latent_dim])
            fake = self.generator(z, training=True)
            with tf.GradientTape() as tape:
                x = tf.concat([real, tf.cast(fake, real.dtype)], 0)
                fx = self.critic(x, training=True)
                wdist = tf.reduce_mean(fx[:batch]) - tf.reduce_mean(fx[batch:])
                state = ALState(tf.cast(self.mu.value, x.dtype)) if al else None
                # freeze=critic: VALP's extra passes leave its BatchNorm statistics alone.
                penalty, aux = self.valp.loss(self._critic_fn, x, self.valp_rng, state, fx=fx, freeze=self.critic)
                c_loss = -wdist + penalty
            grads = tape.gradient(c_loss, self.critic.trainable_variables)
            self.c_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables, strict=True))
            if al:
                mu = ALState(self.mu.value)
                self.mu.assign(self.valp.update(mu, tf.cast(aux.constraint, "float32")).mu)
        for k in STAT_NAMES:
            self.valp_stats[k].assign(tf.cast(aux.stats[f"valp/{k}"], "float32"))

        z = self.valp_rng.normal([batch, self.latent_dim])
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(self.critic(self.generator(z, training=True), training=True))
        grads = tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables, strict=True))

        self.c_loss_tracker.update_state(c_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.wdist_tracker.update_state(wdist)
        return {m.name: m.result() for m in self.metrics}


class VALPCallback(keras.callbacks.Callback):
    """Adds ``valp/mu`` and VALP's violation statistics to the logs, so that ``History``,
    ``CSVLogger`` and ``TensorBoard`` (placed *after* this callback) record them.

    Batch logs get the last critic step's values; epoch logs get their mean over the epoch's
    batches (the maximum for ``max_*``) and ``mu`` at the epoch's end. Works with any model that
    has ``mu`` and ``valp_stats`` variables like ``WGANVALP``.
    """

    def __init__(self, prefix: str = "valp/") -> None:
        super().__init__()
        self.prefix = prefix
        self._sums: dict[str, float] = {}
        self._count = 0

    def _read(self) -> dict[str, float]:
        out = {k: float(keras.ops.convert_to_numpy(v.value)) for k, v in self.model.valp_stats.items()}
        out["mu"] = float(keras.ops.convert_to_numpy(self.model.mu.value))
        return out

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._sums, self._count = {}, 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        values = self._read()
        for k, v in values.items():
            if k.startswith("max_"):
                self._sums[k] = max(self._sums.get(k, v), v)
            else:
                self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if logs is not None:
            logs.update({self.prefix + k: v for k, v in values.items()})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None or not self._count:
            return
        for k, v in self._sums.items():
            logs[self.prefix + k] = v if k.startswith("max_") else v / self._count
        logs[self.prefix + "mu"] = self._read()["mu"]
