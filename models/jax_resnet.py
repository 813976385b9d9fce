"""flax.linen (NHWC) WGAN-GP CIFAR-10 ResNet generator and critic.

Pure use::

    gen, variables = init(Generator(cfg), key)
    x, updates = gen.apply(variables, z, train=True, mutable=["batch_stats"])
    score = critic.apply({"params": p}, x)

Module paths equal the canonical names of ``models.spec``, so conversion is a flatten. A critic
with ``norm="spectral"`` also has ``batch_stats`` (flax SpectralNorm's u and sigma, see
``_normed``): pass them in every apply, and ``train=True, mutable=["batch_stats"]`` only in the
pass whose power-iteration step is to be kept.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .spec import (
    BN_EPS,
    BN_MOMENTUM,
    ResNetConfig,
    check_norm,
    check_params,
    is_stat,
    param_table,
    refuse_spectral,
)

# The original's init: uniform, variance 2/(fan_in+fan_out) ("he") or Glorot.
_HE = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
_GLOROT = nn.initializers.glorot_uniform()


def _conv(c: int, k: int, he: bool, name: str) -> nn.Conv:
    return nn.Conv(c, (k, k), padding="SAME", kernel_init=_HE if he else _GLOROT, name=name)


def _normed(layer: nn.Module, norm: str, train: bool) -> Any:
    """``layer``, or flax's SpectralNorm around it (named "<layer>_sn"). The layer's params keep
    their path; u (1, out) and sigma () live in ``batch_stats`` under
    ``<parent path>/<layer>_sn/"<layer>/kernel/u"`` and ``.../"<layer>/kernel/sigma"``. Every
    call takes one power-iteration step from the stored u; ``train`` stores the new u, sigma."""
    if norm == "none":
        return layer
    return functools.partial(nn.SpectralNorm(layer, name=f"{layer.name}_sn"), update_stats=train)


def _bn(train: bool, name: str) -> nn.BatchNorm:
    # Exact (two-pass) variance to match torch/keras closely in float32.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        use_fast_variance=False,
        name=name,
    )


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
    """images (N, 32, 32, 3) -> scores (N, 1). ``norm`` in ``models.spec.CRITIC_NORMS``: with
    "none" ``train`` is ignored; with "spectral" see ``_normed`` (train=True needs
    ``mutable=["batch_stats"]``)."""

    cfg: ResNetConfig = ResNetConfig()
    norm: str = "none"
    kind = "critic"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, norm = self.cfg.critic_channels, check_norm(self.norm)
        h = DownBlock(c, True, True, norm, name="block1")(x, train)
        h = DownBlock(c, True, norm=norm, name="block2")(h, train)
        h = DownBlock(c, False, norm=norm, name="block3")(h, train)
        h = DownBlock(c, False, norm=norm, name="block4")(h, train)
        dense = _normed(nn.Dense(1, kernel_init=_GLOROT, name="dense"), norm, train)
        return dense(nn.relu(h).mean(axis=(1, 2)))


def init(module: Generator | Critic, key: jax.Array) -> tuple[nn.Module, dict[str, Any]]:
    """Initialise float32 variables for ``module``; returns (module, variables)."""
    cfg = module.cfg
    if module.kind == "generator":
        shape = (1, cfg.latent_dim)
    else:
        shape = (1, cfg.image_size, cfg.image_size, cfg.image_channels)
    # lazy_init creates the variables without running (and compiling) the forward pass.
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return module, module.lazy_init(key, x, train=False)


def _is_sn_stat(name: str) -> bool:
    return name.endswith(("/kernel/u", "/kernel/sigma"))


def to_canonical(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten {'params', 'batch_stats'} into the canonical dict (paths joined by '.')."""
    out: dict[str, np.ndarray] = {}
    for col in ("params", "batch_stats"):
        if col not in variables:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0]:
            name = ".".join(str(p.key) for p in path)
            if _is_sn_stat(name):
                refuse_spectral("spectral", "jax critic")
            out[name] = np.asarray(leaf, dtype=np.float32).copy()
    return out


def from_canonical(module: Generator | Critic, params: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Build a fresh variables dict for ``module`` from canonical ``params`` (shapes checked)."""
    refuse_spectral(getattr(module, "norm", "none"), f"jax {module.kind}")
    check_params(params, param_table(module.kind, module.cfg), f"jax {module.kind}")
    variables: dict[str, Any] = {}
    for name, a in params.items():
        col = "batch_stats" if is_stat(name) else "params"
        node = variables.setdefault(col, {})
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(np.asarray(a, dtype=np.float32))
    return variables
