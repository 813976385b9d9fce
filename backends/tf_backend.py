"""TensorFlow adapter: eager and inside tf.function. Array math uses TF's numpy namespace."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from valr_core.interface import critic_owners


def _layers_of(critic: Any) -> list[Any]:
    """Keras BatchNormalization layers behind a critic: itself, the owner of a bound method, a
    partial's func and arguments, and the layers/models a plain function closes over."""
    import keras

    candidates = critic_owners(critic)
    found: list[Any] = []
    for owner in candidates:
        if isinstance(owner, keras.layers.Layer):
            for layer in owner._flatten_layers(include_self=True):
                if isinstance(layer, keras.layers.BatchNormalization) and all(layer is not f for f in found):
                    found.append(layer)
    return found


class TfBackend:
    name = "tf"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, tf.Tensor | tf.Variable)

    def is_rng(self, rng: Any) -> bool:
        return isinstance(rng, tf.random.Generator)

    def rng_help(self) -> str:
        return "tf.random.Generator.from_seed(seed)"

    def namespace(self, x: tf.Tensor) -> Any:
        return tnp

    def grad(self, fn: Callable[[tf.Tensor], tf.Tensor], r: tf.Tensor) -> tf.Tensor:
        r = tf.stop_gradient(r)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(r)
            value = fn(r)
        g = tape.gradient(value, r, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.stop_gradient(g)

    def input_grad(self, fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        x = tf.stop_gradient(x)
        # A nested tape: a caller's outer tape records this gradient computation too, so it
        # can differentiate the result w.r.t. the variables fn reads (no stop_gradient here).
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def stop_gradient(self, x: tf.Tensor) -> tf.Tensor:
        return tf.stop_gradient(x)

    def uniform(self, rng: tf.random.Generator, shape: Sequence[Any], like: tf.Tensor) -> tuple[tf.Tensor, tf.random.Generator]:
        return rng.uniform(list(shape), dtype=like.dtype), rng

    def normal(self, rng: tf.random.Generator, shape: Sequence[Any], like: tf.Tensor) -> tuple[tf.Tensor, tf.random.Generator]:
        return rng.normal(list(shape), dtype=like.dtype), rng

    def shape(self, x: tf.Tensor) -> tuple[Any, ...]:
        static = x.shape.as_list()
        if all(d is not None for d in static):
            return tuple(static)
        dynamic = tf.shape(x)
        return tuple(d if d is not None else dynamic[i] for i, d in enumerate(static))

    def is_floating(self, x: tf.Tensor) -> bool:
        return x.dtype.is_floating

    def dtype_name(self, x: tf.Tensor) -> str:
        return x.dtype.name

    def check_finite(self, x: tf.Tensor, what: str) -> tf.Tensor:
        if tf.executing_eagerly():
            if not bool(tf.reduce_all(tf.math.is_finite(x))):
                raise ValueError(f"{what} contains NaN or Inf values")
            return x
        return tf.debugging.assert_all_finite(x, f"{what} contains NaN or Inf values")

    def require(self, x: tf.Tensor, condition: tf.Tensor, message: str) -> tf.Tensor:
        if tf.executing_eagerly():
            if not bool(condition):
                raise ValueError(message)
            return x
        check = tf.debugging.Assert(condition, [message])
        with tf.control_dependencies([check]):
            return tf.identity(x)

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        # Keras BatchNorm assigns its moving statistics when called in training mode; the
        # extra VALP passes must not, so snapshot them and assign the snapshot back after. A
        # layer not built yet (a model never called before) has no statistics to snapshot: the
        # pass builds it, and its statistics are reset to their initial values after.
        layers = _layers_of(critic)
        built = [layer for layer in layers if layer.built]
        unbuilt = [layer for layer in layers if not layer.built]
        variables = [v for layer in built for v in (layer.moving_mean, layer.moving_variance)]
        saved = [tf.identity(v.value) for v in variables]
        try:
            yield
        finally:
            for v, value in zip(variables, saved, strict=True):
                v.assign(value)
            for layer in unbuilt:
                if layer.built:
                    for v, init in ((layer.moving_mean, layer.moving_mean_initializer),
                                    (layer.moving_variance, layer.moving_variance_initializer)):
                        v.assign(init(v.shape, v.dtype))


BACKEND = TfBackend()
