"""flax.linen (NHWC) WGAN-GP CIFAR-10 ResNet generator and critic; module paths equal the
canonical names of ``models.spec``, so conversion is a flatten."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from . import spec
from .spec import BN_EPS, BN_MOMENTUM, ResNetConfig, check_norm

# The original's init: uniform, variance 2/(fan_in+fan_out) ("he") or Glorot.
_HE = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
_GLOROT = nn.initializers.glorot_uniform()


def _conv(c: int, k: int, he: bool, name: str) -> nn.Conv:
    return nn.Conv(c, (k, k), padding="SAME", kernel_init=_HE if he else _GLOROT, name=name)


def _normed(layer: nn.Module, norm: str, train: bool) -> Any:
    """``layer``, or flax's SpectralNorm around it (named "<layer>_sn"; u and sigma in
    ``batch_stats``). Every call takes one power-iteration step; ``train`` stores its u, sigma."""
    if norm == "none":
        return layer
    return functools.partial(nn.SpectralNorm(layer, name=f"{layer.name}_sn"), update_stats=train)


def _bn(train: bool, name: str) -> nn.BatchNorm:
    # Exact (two-pass) variance to match torch/keras closely in float32.
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                        use_fast_variance=False, name=name)


def _up(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _pool(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class UpBlock(nn.Module):
    c: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = nn.relu(_bn(train, "bn1")(x))
        h = _conv(self.c, 3, True, "conv1")(_up(h))
        h = _conv(self.c, 3, True, "conv2")(nn.relu(_bn(train, "bn2")(h)))
        return _conv(self.c, 1, False, "shortcut")(_up(x)) + h


class Generator(nn.Module):
    """z (N, latent) -> images (N, 32, 32, 3) in [-1, 1]."""

    cfg: ResNetConfig = ResNetConfig()
    kind = "generator"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        c, s = self.cfg.gen_channels, self.cfg.base_size
        h = nn.Dense(s * s * c, kernel_init=_GLOROT, name="dense")(z).reshape(-1, s, s, c)
        for i in (1, 2, 3):
            h = UpBlock(c, name=f"block{i}")(h, train)
        h = nn.relu(_bn(train, "out_bn")(h))
        return jnp.tanh(_conv(self.cfg.image_channels, 3, False, "out_conv")(h))


class DownBlock(nn.Module):
    """Residual block; ``optimized`` is the first block (no leading ReLU), ``down`` pools."""

    c: int
    down: bool
    optimized: bool = False
    norm: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(k: int, he: bool, name: str) -> Any:
            return _normed(_conv(self.c, k, he, name), self.norm, train)

        h = x if self.optimized else nn.relu(x)
        h = conv(3, True, "conv2")(nn.relu(conv(3, True, "conv1")(h)))
        if not self.down:
            return x + h
        return conv(1, False, "shortcut")(_pool(x)) + _pool(h)


class Critic(nn.Module):
    """images (N, 32, 32, 3) -> scores (N, 1). ``norm`` in ``models.spec.CRITIC_NORMS``
    ("spectral": see ``_normed``; train=True needs ``mutable=["batch_stats"]``)."""

    cfg: ResNetConfig = ResNetConfig()
    norm: str = "none"
    kind = "critic"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, norm = self.cfg.critic_channels, check_norm(self.norm)
        h = DownBlock(c, True, True, norm, name="block1")(x, train)
        for i, down in ((2, True), (3, False), (4, False)):
            h = DownBlock(c, down, norm=norm, name=f"block{i}")(h, train)
        dense = _normed(nn.Dense(1, kernel_init=_GLOROT, name="dense"), norm, train)
        return dense(nn.relu(h).mean(axis=(1, 2)))


def init(module: Generator | Critic, key: jax.Array) -> tuple[nn.Module, dict[str, Any]]:
    """Initialise float32 variables for ``module``; returns (module, variables)."""
    cfg, gen = module.cfg, module.kind == "generator"
    shape = (1, cfg.latent_dim) if gen else (1, cfg.image_size, cfg.image_size, cfg.image_channels)
    # lazy_init creates the variables without running (and compiling) the forward pass.
    return module, module.lazy_init(key, jax.ShapeDtypeStruct(shape, jnp.float32), train=False)


def to_canonical(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten {'params', 'batch_stats'} into the canonical dict (paths joined by '.')."""
    out: dict[str, np.ndarray] = {}
    for col in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get(col, {}))[0]:
            name = ".".join(str(p.key) for p in path)
            if name.endswith(("/kernel/u", "/kernel/sigma")):  # flax SpectralNorm's state
                spec.refuse_spectral("spectral", "jax critic")
            out[name] = np.asarray(leaf, dtype=np.float32).copy()
    return out


def from_canonical(module: Generator | Critic, params: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Build a fresh variables dict for ``module`` from canonical ``params`` (shapes checked)."""
    what = f"jax {module.kind}"
    spec.refuse_spectral(getattr(module, "norm", "none"), what)
    spec.check_params(params, spec.param_table(module.kind, module.cfg), what)
    return traverse_util.unflatten_dict({
        ("batch_stats" if spec.is_stat(name) else "params", *name.split(".")):
            jnp.asarray(np.asarray(a, dtype=np.float32)) for name, a in params.items()})
