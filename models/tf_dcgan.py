"""Keras 3 (TensorFlow, NHWC) DCGAN generator and critic (``--arch dcgan``), as ``torch_dcgan``."""

from __future__ import annotations

import keras
from keras import layers

from .spec import ResNetConfig, check_norm
from .tf_resnet import _HE, _bn, _conv, _sn, _tag, _up


def build_generator(cfg: ResNetConfig) -> keras.Model:
    """z (N, latent) -> images (N, 32, 32, 3) in [-1, 1]."""
    c, s = cfg.gen_channels, cfg.base_size
    z = keras.Input((cfg.latent_dim,), name="z")
    h = layers.Reshape((s, s, 4 * c))(layers.Dense(s * s * 4 * c, name="dense")(z))
    h = layers.ReLU()(_bn("bn0")(h))
    h = layers.ReLU()(_bn("bn1")(_conv(2 * c, 3, True, "conv1")(_up(h))))
    h = layers.ReLU()(_bn("bn2")(_conv(c, 3, True, "conv2")(_up(h))))
    x = layers.Activation("tanh")(_conv(cfg.image_channels, 3, False, "out_conv")(_up(h)))
    return _tag(keras.Model(z, x, name="generator"), "generator", cfg)


def build_critic(cfg: ResNetConfig, norm: str = "none") -> keras.Model:
    """images (N, 32, 32, 3) -> scores (N, 1); ``norm="spectral"`` wraps every layer (``_sn``)."""
    check_norm(norm)
    c = cfg.critic_channels
    x = keras.Input((cfg.image_size, cfg.image_size, cfg.image_channels), name="x")
    h = x
    for i, width in enumerate((c, 2 * c, 4 * c), start=1):
        h = layers.ZeroPadding2D(1)(h)  # torch's padding=1 ("same" would pad (0, 1) at stride 2)
        conv = layers.Conv2D(width, 3, strides=2, padding="valid", name=f"conv{i}",
                             kernel_initializer=keras.initializers.VarianceScaling(**_HE))
        h = layers.LeakyReLU(0.2)(_sn(conv, norm)(h))
    y = _sn(layers.Dense(1, name="dense"), norm)(layers.Flatten()(h))
    return _tag(keras.Model(x, y, name="critic"), "critic", cfg, norm)
