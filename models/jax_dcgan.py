"""flax.linen (NHWC) DCGAN generator and critic (``--arch dcgan``); init: ``jax_resnet.init``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .jax_resnet import _GLOROT, _HE, _bn, _conv, _normed, _up
from .spec import ResNetConfig, check_norm


class Generator(nn.Module):
    """z (N, latent) -> images (N, 32, 32, 3) in [-1, 1]."""

    cfg: ResNetConfig = ResNetConfig(arch="dcgan")
    kind = "generator"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        c, s = self.cfg.gen_channels, self.cfg.base_size
        h = nn.Dense(s * s * 4 * c, kernel_init=_GLOROT, name="dense")(z).reshape(-1, s, s, 4 * c)
        h = nn.relu(_bn(train, "bn0")(h))
        h = nn.relu(_bn(train, "bn1")(_conv(2 * c, 3, True, "conv1")(_up(h))))
        h = nn.relu(_bn(train, "bn2")(_conv(c, 3, True, "conv2")(_up(h))))
        return jnp.tanh(_conv(self.cfg.image_channels, 3, False, "out_conv")(_up(h)))


class Critic(nn.Module):
    """images (N, 32, 32, 3) -> scores (N, 1); ``norm`` as ``models.jax_resnet.Critic``."""

    cfg: ResNetConfig = ResNetConfig(arch="dcgan")
    norm: str = "none"
    kind = "critic"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, norm = self.cfg.critic_channels, check_norm(self.norm)
        h = x
        for i, width in enumerate((c, 2 * c, 4 * c), start=1):
            # Explicit (1, 1) padding: torch's padding=1 (SAME would pad (0, 1) at stride 2).
            conv = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                           kernel_init=_HE, name=f"conv{i}")
            h = nn.leaky_relu(_normed(conv, norm, train)(h), 0.2)
        dense = _normed(nn.Dense(1, kernel_init=_GLOROT, name="dense"), norm, train)
        return dense(h.reshape(h.shape[0], -1))
