"""TensorFlow adapter: eager and inside tf.function. Array math uses TF's numpy namespace."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import tensorflow as tf
import tensorflow.experimental.numpy as tnp


def _layers_of(critic: Any) -> list[Any]:
    import keras

    owners = [c for c in (critic, getattr(critic, "__self__", None), getattr(critic, "func", None)) if isinstance(c, keras.layers.Layer)]
    found = []
    for owner in owners:
        found.extend(layer for layer in owner._flatten_layers(include_self=True) if isinstance(layer, keras.layers.BatchNormalization))
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

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        # Keras BatchNorm assigns its moving statistics when called in training mode; the
        # extra VALP passes must not, so snapshot them and assign the snapshot back after.
        variables = [v for layer in _layers_of(critic) for v in (layer.moving_mean, layer.moving_variance)]
        saved = [tf.identity(v.value) for v in variables]
        try:
            yield
        finally:
            for v, value in zip(variables, saved, strict=True):
                v.assign(value)


BACKEND = TfBackend()
