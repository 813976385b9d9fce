"""TensorFlow adapter: eager and inside tf.function. Array math uses TF's numpy namespace."""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from valr_core.interface import critic_owners

_SEARCH_DEPTH = 2  # helper functions followed from a critic function (same module only)


def _is_layer(obj: Any) -> bool:
    import keras

    return isinstance(obj, keras.layers.Layer)


def _code_names(code: types.CodeType) -> set[str]:
    """The global and attribute names a code object (and the lambdas/functions inside it) uses."""
    inner = (_code_names(c) for c in code.co_consts if isinstance(c, types.CodeType))
    return set(code.co_names).union(*inner)


def _named_layers(fn: Any, depth: int = _SEARCH_DEPTH) -> list[Any]:
    """Keras layers a plain function reaches by the global and attribute names in its code (which
    ``critic_owners`` cannot see), also inside helper functions of its own module."""
    func = getattr(fn, "__func__", fn)  # a bound method of a non-Keras object: its function
    code = getattr(func, "__code__", None)
    if code is None or depth < 0:
        return []
    names = _code_names(code)
    scope = getattr(func, "__globals__", {})
    roots = [scope[n] for n in names if n in scope] + [c for c in critic_owners(func) if c is not func]
    if getattr(fn, "__self__", None) is not None:
        roots.append(fn.__self__)
    found: list[Any] = []
    for obj in roots:
        if _is_layer(obj):
            found.append(obj)
            continue
        if isinstance(obj, types.FunctionType | types.MethodType | functools.partial):
            if getattr(getattr(obj, "__func__", obj), "__globals__", None) is scope:
                found += _named_layers(obj, depth - 1)
            continue
        try:
            attrs = vars(obj)
        except Exception:  # no __dict__ (or one that refuses to be read): nothing named inside
            continue
        if isinstance(obj, type) or not isinstance(attrs, Mapping):
            continue
        for name in names & attrs.keys():
            value = attrs[name]
            if _is_layer(value):
                found.append(value)
            elif isinstance(value, types.FunctionType | types.MethodType) and depth > 0:
                found += _named_layers(value, depth - 1)
    return found


def _unique(objects: list[Any]) -> list[Any]:
    return list({id(obj): obj for obj in objects}.values())


def _state_variables(layer: Any) -> list[Any]:
    """The floating-point statistics of a layer and every layer below it (a frozen layer's weights
    keep ``variable.trainable``; integer state, e.g. Dropout's seeds, is left to advance)."""
    return [v for v in layer.non_trainable_variables if not v.trainable and str(v.dtype).startswith(("float", "bfloat"))]


def _unbuilt_batchnorms(layer: Any) -> list[Any]:
    """BatchNormalization layers not built yet, below ``layer`` through ``keras.Model.layers`` (no
    public recursive walk exists: one inside a custom layer is not found)."""
    import keras

    out = [layer] if isinstance(layer, keras.layers.BatchNormalization) and not layer.built else []
    subs = layer.layers if isinstance(layer, keras.Model) else []
    return out + [bn for sub in subs for bn in _unbuilt_batchnorms(sub)]


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
        return tf.stop_gradient(self.input_grad(fn, r))

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
        # Keras BatchNorm assigns its moving statistics in training mode: snapshot and restore
        # them. One not built yet is built by the pass, and its statistics reset after.
        owners = critic_owners(critic)
        layers = _unique([o for o in owners if _is_layer(o)])
        if not (_is_layer(critic) or _is_layer(getattr(critic, "__self__", None))):
            # A plain function may run models VALP is not shown: find them by the names in its code.
            named = [layer for o in owners if isinstance(o, types.FunctionType | types.MethodType) for layer in _named_layers(o)]
            shown = {id(layer) for layer in layers}
            unseen = [layer for layer in _unique(named) if id(layer) not in shown]
            stateful = [layer for layer in unseen if _state_variables(layer) or _unbuilt_batchnorms(layer)]
            if stateful:
                warnings.warn(
                    f"VALP's passes run Keras layers with moving statistics ({', '.join(repr(layer.name) for layer in stateful)}) "
                    "through a critic function that does not show them (found by the names in its code); their "
                    "statistics were frozen for those passes. Pass freeze=<your keras.Model> (or the model itself as "
                    "the critic) to say so explicitly.", RuntimeWarning, stacklevel=3)
            layers += unseen
        variables = _unique([v for layer in layers for v in _state_variables(layer)])
        unbuilt = _unique([bn for layer in layers for bn in _unbuilt_batchnorms(layer)])
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
