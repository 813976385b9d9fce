"""Keras 3 (TensorFlow backend, NHWC) WGAN-GP CIFAR-10 ResNet generator and critic; layer names
equal the canonical names of ``models.spec``."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import layers

from . import spec
from .spec import BN_EPS, BN_MOMENTUM, ResNetConfig, check_norm

# The training code drives these models with tf.GradientTape, so Keras must run on TF (its
# default backend); a process set to another backend is told so rather than switched.
if keras.backend.backend() != "tensorflow":
    raise ImportError("models.tf_resnet needs Keras' TensorFlow backend (unset KERAS_BACKEND or "
                      f"set it to tensorflow), got {keras.backend.backend()!r}")

# The original's init: uniform, variance 2/(fan_in+fan_out) ("he") or Glorot.
_HE = {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"}


def _conv(c: int, k: int, he: bool, name: str) -> layers.Conv2D:
    init = keras.initializers.VarianceScaling(**_HE) if he else "glorot_uniform"
    return layers.Conv2D(c, k, padding="same", kernel_initializer=init, name=name)


def _sn(layer: layers.Layer, norm: str) -> layers.Layer:
    """``layer``, or Keras' SpectralNormalization around it under the same name; the wrapper keeps
    u in ``vector_u`` and takes a power-iteration step only in a call with ``training=True``."""
    return layer if norm == "none" else layers.SpectralNormalization(layer, name=layer.name)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def _up(x):
    return layers.UpSampling2D(2, interpolation="nearest")(x)


def _pool(x):
    return layers.AveragePooling2D(2)(x)


def _tag(model: keras.Model, kind: str, cfg: ResNetConfig, norm: str = "none") -> keras.Model:
    # Conversion needs to know what a model is; plain attributes survive on Functional models.
    model.valr_kind, model.valr_cfg, model.valr_norm = kind, cfg, norm
    return model


def build_generator(cfg: ResNetConfig | None = None) -> keras.Model:
    """z (N, latent) -> images (N, 32, 32, 3) in [-1, 1]."""
    cfg = cfg or ResNetConfig()
    c, s = cfg.gen_channels, cfg.base_size
    z = keras.Input((cfg.latent_dim,), name="z")
    h = layers.Reshape((s, s, c))(layers.Dense(s * s * c, name="dense")(z))
    for i in (1, 2, 3):
        b = f"block{i}"
        r = layers.ReLU()(_bn(f"{b}.bn1")(h))
        r = _conv(c, 3, True, f"{b}.conv1")(_up(r))
        r = _conv(c, 3, True, f"{b}.conv2")(layers.ReLU()(_bn(f"{b}.bn2")(r)))
        h = layers.Add()([_conv(c, 1, False, f"{b}.shortcut")(_up(h)), r])
    h = layers.ReLU()(_bn("out_bn")(h))
    x = layers.Activation("tanh")(_conv(cfg.image_channels, 3, False, "out_conv")(h))
    return _tag(keras.Model(z, x, name="generator"), "generator", cfg)


def build_critic(cfg: ResNetConfig | None = None, norm: str = "none") -> keras.Model:
    """images (N, 32, 32, 3) -> scores (N, 1); ``norm`` in ``models.spec.CRITIC_NORMS``
    ("spectral": every conv and the dense layer wrapped, see ``_sn``)."""
    cfg, norm = cfg or ResNetConfig(), check_norm(norm)
    c = cfg.critic_channels

    def conv(k: int, he: bool, name: str) -> layers.Layer:
        return _sn(_conv(c, k, he, name), norm)

    x = keras.Input((cfg.image_size, cfg.image_size, cfg.image_channels), name="x")
    r = conv(3, True, "block1.conv2")(layers.ReLU()(conv(3, True, "block1.conv1")(x)))
    h = layers.Add()([conv(1, False, "block1.shortcut")(_pool(x)), _pool(r)])
    for i, down in ((2, True), (3, False), (4, False)):
        b = f"block{i}"
        r = conv(3, True, f"{b}.conv1")(layers.ReLU()(h))
        r = conv(3, True, f"{b}.conv2")(layers.ReLU()(r))
        short = conv(1, False, f"{b}.shortcut")(_pool(h)) if down else h
        h = layers.Add()([short, _pool(r) if down else r])
    h = layers.GlobalAveragePooling2D()(layers.ReLU()(h))
    y = _sn(layers.Dense(1, name="dense"), norm)(h)
    return _tag(keras.Model(x, y, name="critic"), "critic", cfg, norm)


_LEAVES = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "mean": "moving_mean",
           "var": "moving_variance"}


def inner_layer(model: keras.Model, layer_name: str) -> layers.Layer:
    """The layer of canonical name ``layer_name`` (the Conv2D/Dense inside a SpectralNormalization)."""
    layer = model.get_layer(layer_name)
    return layer.layer if isinstance(layer, layers.SpectralNormalization) else layer


def sn_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """``"<layer>.sn_u"`` -> that layer's SpectralNormalization ``vector_u`` (the state a
    checkpoint must hold beyond the canonical table); empty for ``norm="none"``."""
    out = {}
    for name in _table(model):
        layer_name, leaf = name.rsplit(".", 1)
        layer = model.get_layer(layer_name)
        if leaf == "kernel" and isinstance(layer, layers.SpectralNormalization):
            out[f"{layer_name}.sn_u"] = layer.vector_u
    return out


def _variable(model: keras.Model, name: str):
    layer_name, leaf = name.rsplit(".", 1)
    layer = inner_layer(model, layer_name)
    is_bn = isinstance(layer, layers.BatchNormalization)
    return getattr(layer, "beta" if leaf == "bias" and is_bn else _LEAVES[leaf])


def _table(model: keras.Model) -> dict[str, tuple[int, ...]]:
    return spec.param_table(model.valr_kind, model.valr_cfg)


def to_canonical(model: keras.Model) -> dict[str, np.ndarray]:
    spec.refuse_spectral(getattr(model, "valr_norm", "none"), f"tf {model.valr_kind}")
    return {n: np.array(_variable(model, n).numpy(), dtype=np.float32) for n in _table(model)}


def from_canonical(model: keras.Model, params: Mapping[str, np.ndarray]) -> keras.Model:
    """Assign canonical ``params`` to ``model`` in place (shapes checked first)."""
    spec.refuse_spectral(getattr(model, "valr_norm", "none"), f"tf {model.valr_kind}")
    table = _table(model)
    spec.check_params(params, table, f"tf {model.valr_kind}")
    for name in table:
        _variable(model, name).assign(np.asarray(params[name], dtype=np.float32))
    return model
