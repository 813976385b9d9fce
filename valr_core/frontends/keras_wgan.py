"""Keras 3 front door: a WGAN-VALP ``keras.Model`` in the form of keras.io's WGAN-GP example
(``train_step``; Keras' TensorFlow backend), saved and loaded as ``.keras``, and a callback that
puts VALP's statistics into the logs (docs/usage.md, "Keras 3")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from ..objectives import ALState
from ..valp import VALP

__all__ = ["WGANVALP", "VALPCallback", "STAT_NAMES", "wasserstein_d_loss", "wasserstein_g_loss"]

# VALP's per-step statistics (VALP.loss's aux.stats names), kept in the model's variables.
MU_NAME = "valp/mu"
_STEP_STATS = ("valp/penalty", "valp/mean_violation", "valp/max_violation", "valp/mean_quotient",
               "valp/max_quotient", "valp/violating_fraction", "valp/dropped_fraction")
STAT_NAMES = (*_STEP_STATS, MU_NAME)

# train.seeds.stream_seed's policy (valr_core does not import train): index in its PURPOSES.
_PURPOSE_INDEX = {"latents": 2, "penalty": 3}
_MAX_SEED = 2**32 - 1
_ALIASES = {"critic": "discriminator", "n_critic": "discriminator_extra_steps", "c_optimizer": "d_optimizer"}


def _stream_seed(seed: int, purpose: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {_MAX_SEED}], got {seed!r}")
    entropy = np.random.SeedSequence([int(seed), _PURPOSE_INDEX[purpose]])
    return int(entropy.generate_state(1, np.uint32)[0] >> 1)


def _pick(name: str, value: Any, alias_value: Any) -> Any:
    """keras.io's ``name`` or valr's alias for it, not both."""
    alias = next(a for a, n in _ALIASES.items() if n == name)
    if value is not None and alias_value is not None:
        raise TypeError(f"pass {name}= or its alias {alias}=, not both")
    return value if value is not None else alias_value


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


def _valp_config(valp: VALP) -> dict[str, Any]:
    """VALP's settings as plain values (distances given as callables: Keras-serialised)."""

    def plain(value: Any) -> Any:
        if callable(value):
            return keras.saving.serialize_keras_object(value)
        return list(value) if isinstance(value, tuple) else value

    return {field.name: plain(getattr(valp, field.name)) for field in dataclasses.fields(valp)}


def _valp_from_config(config: Mapping[str, Any]) -> VALP:
    kwargs = {k: keras.saving.deserialize_keras_object(v) if isinstance(v, dict) else v
              for k, v in config.items()}
    if kwargs.get("clip") is not None:
        kwargs["clip"] = tuple(kwargs["clip"])
    return VALP(**kwargs)


def wasserstein_d_loss(real_img: Any, fake_img: Any) -> Any:
    """The critic's WGAN loss ``E f(fake) - E f(real)`` (keras.io's ``discriminator_loss``)."""
    return keras.ops.mean(fake_img) - keras.ops.mean(real_img)


def wasserstein_g_loss(fake_img: Any) -> Any:
    """The generator's WGAN loss ``-E f(fake)`` (keras.io's ``generator_loss``)."""
    return -keras.ops.mean(fake_img)


@keras.saving.register_keras_serializable(package="valr")
class WGANVALP(keras.Model):
    """A WGAN whose critic is regularised by VALP: ``discriminator_extra_steps`` critic steps
    (default 5; each draws fresh latents and reuses the batch), then one generator step.

    Keyword-only, with keras.io's names (aliases ``critic=``, ``n_critic=``); ``valp`` or
    ``**config`` (``VALP``'s keywords) configure the penalty on ``concat([real, fake])``; in
    ``mode="al"`` ``mu`` is a non-trainable variable. Latents and VALP's draws come from
    ``latent_rng`` and ``valp_rng``, seeded from ``seed`` as the trainers' (``latent_seed`` /
    ``valp_seed`` override one); ``save``/``save_weights`` store their states with ``mu``, so
    loading resumes exactly.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> WGANVALP:
        _require_tensorflow_backend()
        if args:
            raise TypeError(
                f"WGANVALP takes keyword arguments only, got {len(args)} positional: pass discriminator=... and "
                "generator=... by keyword (keras.io's WGAN(discriminator, generator, ...) and valr's former "
                "WGANVALP(generator, critic, ...) have opposite orders)")
        return super().__new__(cls, **kwargs)

    def __init__(self, *, discriminator: keras.Model | None = None,
                 generator: keras.Model | None = None, latent_dim: int | None = None,
                 discriminator_extra_steps: int | None = None, valp: VALP | None = None,
                 seed: int = 0, latent_seed: int | None = None, valp_seed: int | None = None,
                 critic: keras.Model | None = None, n_critic: int | None = None,
                 name: str | None = None, **config: Any) -> None:
        import tensorflow as tf

        discriminator = _pick("discriminator", discriminator, critic)
        steps = _pick("discriminator_extra_steps", discriminator_extra_steps, n_critic)
        steps = 5 if steps is None else steps
        if discriminator is None or generator is None:
            raise TypeError("WGANVALP needs discriminator= (the critic; alias critic=) and generator=, by keyword")
        if latent_dim is None:
            raise TypeError("WGANVALP needs latent_dim= (the size of the generator's input)")
        if valp is not None and config:
            raise TypeError("pass either a VALP instance or its keyword config, not both")
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
            raise ValueError(f"discriminator_extra_steps (alias n_critic) must be an integer >= 1, got {steps!r}")
        super().__init__(name=name)
        self.discriminator, self.generator = discriminator, generator
        self.latent_dim = int(latent_dim)
        self.discriminator_extra_steps = int(steps)
        self.valp = valp if valp is not None else VALP(backend="tf", **config)
        self.seed = int(seed)
        self.latent_seed = _stream_seed(seed, "latents") if latent_seed is None else int(latent_seed)
        self.valp_seed = _stream_seed(seed, "penalty") if valp_seed is None else int(valp_seed)
        self.latent_rng = tf.random.Generator.from_seed(self.latent_seed, alg="philox")
        self.valp_rng = tf.random.Generator.from_seed(self.valp_seed, alg="philox")
        # Keras saves keras.Variables only: the streams' states are mirrored here (after every
        # train_step and before saving) and pushed back into the generators on loading.
        self.latent_rng_state = keras.Variable(self.latent_rng.state.numpy(), dtype="int64", trainable=False, name="latent_rng_state")
        self.valp_rng_state = keras.Variable(self.valp_rng.state.numpy(), dtype="int64", trainable=False, name="valp_rng_state")
        self.mu = keras.Variable(0.0, dtype="float32", trainable=False, name="valp_mu")
        self.valp_stats = {k: keras.Variable(0.0, dtype="float32", trainable=False, name=k.replace("/", "_"))
                           for k in _STEP_STATS}
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.wdist_tracker = keras.metrics.Mean(name="wdist")
        self.d_optimizer: keras.optimizers.Optimizer | None = None
        self.g_optimizer: keras.optimizers.Optimizer | None = None
        self.d_loss_fn: Callable[[Any, Any], Any] | None = None
        self.g_loss_fn: Callable[[Any], Any] | None = None
        # Every variable now (an unbuilt model is called once on zeros): save_weights needs it.
        if not generator.built or not discriminator.built:
            fake = generator(tf.zeros([1, self.latent_dim]), training=False)
            if not discriminator.built:
                discriminator(fake, training=False)
        self.built = True

    # valr's earlier names, kept as aliases.
    @property
    def critic(self) -> keras.Model:
        """Alias of ``discriminator``."""
        return self.discriminator

    @property
    def n_critic(self) -> int:
        """Alias of ``discriminator_extra_steps``."""
        return self.discriminator_extra_steps

    @property
    def c_optimizer(self) -> keras.optimizers.Optimizer | None:
        """Alias of ``d_optimizer``."""
        return self.d_optimizer

    def compile(self, d_optimizer: keras.optimizers.Optimizer | None = None,
                g_optimizer: keras.optimizers.Optimizer | None = None,
                d_loss_fn: Callable[[Any, Any], Any] | None = None,
                g_loss_fn: Callable[[Any], Any] | None = None, *,
                c_optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        """Set the critic's ``d_optimizer`` (alias ``c_optimizer``) and the generator's
        ``g_optimizer``, optionally ``d_loss_fn(real_img, fake_img)`` (VALP's penalty is added to
        it) and ``g_loss_fn(fake_img)`` (defaults: the WGAN losses), keras.io's WGAN-GP names.
        Other keywords go to ``keras.Model.compile`` (``optimizer``, ``loss``, ``metrics`` not)."""
        d_optimizer = _pick("d_optimizer", d_optimizer, c_optimizer)
        if d_optimizer is None or g_optimizer is None:
            raise TypeError("WGANVALP.compile needs d_optimizer= (the critic's; alias c_optimizer=) and g_optimizer=")
        unused = sorted(set(kwargs) & {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics"})
        if unused:
            raise TypeError(f"WGANVALP.compile does not take {unused}: the losses are d_loss_fn/g_loss_fn, "
                            "the optimisers d_optimizer/g_optimizer")
        for fn_name, fn in (("d_loss_fn", d_loss_fn), ("g_loss_fn", g_loss_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{fn_name} must be a callable or None, got {type(fn).__name__}")
        super().compile(optimizer=None, **kwargs)
        self.d_optimizer = keras.optimizers.get(d_optimizer)
        self.g_optimizer = keras.optimizers.get(g_optimizer)
        self.d_loss_fn, self.g_loss_fn = d_loss_fn, g_loss_fn
        for opt, model in ((self.d_optimizer, self.discriminator), (self.g_optimizer, self.generator)):
            if not opt.built:
                opt.build(model.trainable_variables)

    def get_compile_config(self) -> dict[str, Any]:
        if self.d_optimizer is None or self.g_optimizer is None:
            return {}
        serialize = keras.saving.serialize_keras_object
        return {"d_optimizer": serialize(self.d_optimizer), "g_optimizer": serialize(self.g_optimizer),
                "d_loss_fn": None if self.d_loss_fn is None else serialize(self.d_loss_fn),
                "g_loss_fn": None if self.g_loss_fn is None else serialize(self.g_loss_fn)}

    def compile_from_config(self, config: dict[str, Any]) -> None:
        self.compile(**{k: None if v is None else keras.saving.deserialize_keras_object(v)
                        for k, v in config.items()})

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        return {"name": self.name, "discriminator": serialize(self.discriminator), "generator": serialize(self.generator),
                "latent_dim": self.latent_dim, "discriminator_extra_steps": self.discriminator_extra_steps,
                "seed": self.seed, "latent_seed": self.latent_seed, "valp_seed": self.valp_seed,
                "valp": _valp_config(self.valp)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WGANVALP:
        config = dict(config)
        for key in ("discriminator", "generator"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        config["valp"] = _valp_from_config(config["valp"])
        return cls(**config)

    def _sync_rng_variables(self) -> None:
        self.latent_rng_state.assign(self.latent_rng.state)
        self.valp_rng_state.assign(self.valp_rng.state)

    def save_own_variables(self, store: Any) -> None:
        self._sync_rng_variables()
        super().save_own_variables(store)

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(store)
        self.latent_rng.reset(self.latent_rng_state.value)
        self.valp_rng.reset(self.valp_rng_state.value)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.d_loss_tracker, self.g_loss_tracker, self.wdist_tracker]

    def call(self, z: Any, training: bool = False) -> Any:
        return self.generator(z, training=training)

    def _critic_fn(self, x: Any) -> Any:
        return self.discriminator(x, training=True)

    def train_step(self, data: Any) -> dict[str, Any]:
        import tensorflow as tf

        if self.d_optimizer is None or self.g_optimizer is None:
            raise RuntimeError("call WGANVALP.compile(d_optimizer=..., g_optimizer=...) before fit")
        d_loss_fn = self.d_loss_fn or wasserstein_d_loss
        g_loss_fn = self.g_loss_fn or wasserstein_g_loss
        critic, generator = self.discriminator, self.generator
        real = tf.convert_to_tensor(data[0] if isinstance(data, tuple | list) else data)
        batch = tf.shape(real)[0]
        al = self.valp.mode == "al"
        for _ in range(self.discriminator_extra_steps):
            z = self.latent_rng.normal([batch, self.latent_dim])
            fake = generator(z, training=True)
            with tf.GradientTape() as tape:
                fx = critic(tf.concat([real, tf.cast(fake, real.dtype)], 0), training=True)
                real_logits, fake_logits = fx[:batch], fx[batch:]
                wdist = tf.reduce_mean(real_logits) - tf.reduce_mean(fake_logits)
                state = ALState(tf.cast(self.mu.value, real.dtype)) if al else None
                # The trainers' call; freeze=critic: VALP's extra passes leave its BatchNorm alone.
                penalty, aux = self.valp.pair_loss(self._critic_fn, real, fake, self.valp_rng, state, fx=fx,
                                                   freeze=critic)
                d_loss = tf.cast(d_loss_fn(real_logits, fake_logits), penalty.dtype) + penalty
            grads = tape.gradient(d_loss, critic.trainable_variables)
            self.d_optimizer.apply_gradients(zip(grads, critic.trainable_variables, strict=True))
            if al:
                constraint = tf.cast(aux.constraint, "float32")
                self.mu.assign(self.valp.update(ALState(self.mu.value), constraint).mu)
        for k in _STEP_STATS:
            self.valp_stats[k].assign(tf.cast(aux.stats[k], "float32"))

        z = self.latent_rng.normal([batch, self.latent_dim])
        with tf.GradientTape() as tape:
            g_loss = g_loss_fn(critic(generator(z, training=True), training=True))
        grads = tape.gradient(g_loss, generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(grads, generator.trainable_variables, strict=True))
        self._sync_rng_variables()

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.wdist_tracker.update_state(wdist)
        return {m.name: m.result() for m in self.metrics}


class VALPCallback(keras.callbacks.Callback):
    """Adds VALP's statistics (``STAT_NAMES``) to the logs of callbacks placed *after* it: batch
    logs the last critic step's values, epoch logs their mean (max for ``valp/max_*``) and the
    final ``valp/mu``. A model that does not keep them like ``WGANVALP`` raises ``TypeError``."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, float] = {}
        self._count = 0

    def set_model(self, model: keras.Model) -> None:
        stats = getattr(model, "valp_stats", None)
        if not isinstance(getattr(model, "mu", None), keras.Variable) or not isinstance(stats, Mapping):
            raise TypeError(
                f"VALPCallback needs a model that runs VALP and keeps its statistics (a valr WGANVALP, or a model "
                f"with a `mu` keras.Variable and a `valp_stats` dict of keras.Variables named {_STEP_STATS[0]!r}, "
                f"...); got {type(model).__module__}.{type(model).__qualname__}")
        super().set_model(model)

    def _read(self) -> dict[str, float]:
        variables = {**self.model.valp_stats, MU_NAME: self.model.mu}
        return {k: float(keras.ops.convert_to_numpy(v.value)) for k, v in variables.items()}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._sums, self._count = {}, 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        values, sums = self._read(), self._sums
        for k, v in values.items():
            sums[k] = max(sums.get(k, v), v) if "/max_" in k else sums.get(k, 0.0) + v
        self._count += 1
        if logs is not None:
            logs.update(values)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None or not self._count:
            return
        for k, v in self._sums.items():
            logs[k] = v if "/max_" in k else v / self._count
        logs[MU_NAME] = self._read()[MU_NAME]
