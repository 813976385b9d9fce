"""Framework-neutral description of the WGAN-GP CIFAR-10 ResNet (Gulrajani et al. 2017).

The *canonical* parameter dict is what all three frameworks convert through: a flat
``dict[str, np.ndarray]`` keyed ``"<layer path>.<leaf>"`` in NHWC terms:

* conv ``kernel`` (kh, kw, in, out) (HWIO) and ``bias`` (out,)
* dense ``kernel`` (in, out) and ``bias`` (out,); the generator's first dense layer orders its
  4*4*C outputs as (h, w, c), i.e. it reshapes to NHWC
* BatchNorm ``scale``, ``bias`` (trainable) and ``mean``, ``var`` (running statistics)

Layer paths equal the flax module paths and the Keras layer names, so the table below is
the single place the naming lives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

KINDS = ("generator", "critic")
# Leaves that are running statistics, not trainable parameters.
STAT_LEAVES = ("mean", "var")
N_UP_BLOCKS = 3
BN_EPS = 1e-5
# running = BN_MOMENTUM * running + (1 - BN_MOMENTUM) * batch (keras/flax convention;
# torch's ``momentum`` is 1 - BN_MOMENTUM).
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    latent_dim: int = 128
    gen_channels: int = 128  # paper 256, released code 128
    critic_channels: int = 128
    image_size: int = 32
    image_channels: int = 3
    # "resnet": the architecture above; "dcgan": the small all-convolutional pair of
    # models/*_dcgan.py (the digits preset: ~4x fewer FLOPs at equal width, for 2 CPU cores).
    arch: str = "resnet"

    @property
    def base_size(self) -> int:
        """Spatial size after the generator's dense layer (4 for 32x32 images)."""
        size = self.image_size // 2**N_UP_BLOCKS
        if size * 2**N_UP_BLOCKS != self.image_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by {2**N_UP_BLOCKS}")
        return size


def _conv(name: str, k: int, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.kernel": (k, k, cin, cout), f"{name}.bias": (cout,)}


def _dense(name: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.kernel": (cin, cout), f"{name}.bias": (cout,)}


def _bn(name: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.{leaf}": (c,) for leaf in ("scale", "bias", "mean", "var")}


def generator_table(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    c, s = cfg.gen_channels, cfg.base_size
    t = _dense("dense", cfg.latent_dim, s * s * c)
    for i in range(1, N_UP_BLOCKS + 1):
        b = f"block{i}"
        t |= _bn(f"{b}.bn1", c) | _conv(f"{b}.conv1", 3, c, c)
        t |= _bn(f"{b}.bn2", c) | _conv(f"{b}.conv2", 3, c, c)
        t |= _conv(f"{b}.shortcut", 1, c, c)
    t |= _bn("out_bn", c) | _conv("out_conv", 3, c, cfg.image_channels)
    return t


def critic_table(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    c = cfg.critic_channels
    # block1: optimised down block; block2: down block; block3/4: plain (identity shortcut).
    t = _conv("block1.conv1", 3, cfg.image_channels, c) | _conv("block1.conv2", 3, c, c)
    t |= _conv("block1.shortcut", 1, cfg.image_channels, c)
    t |= _conv("block2.conv1", 3, c, c) | _conv("block2.conv2", 3, c, c)
    t |= _conv("block2.shortcut", 1, c, c)
    for i in (3, 4):
        t |= _conv(f"block{i}.conv1", 3, c, c) | _conv(f"block{i}.conv2", 3, c, c)
    t |= _dense("dense", c, 1)
    return t


def dcgan_generator_table(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    c, s = cfg.gen_channels, cfg.base_size
    t = _dense("dense", cfg.latent_dim, s * s * 4 * c) | _bn("bn0", 4 * c)
    t |= _conv("conv1", 3, 4 * c, 2 * c) | _bn("bn1", 2 * c)
    t |= _conv("conv2", 3, 2 * c, c) | _bn("bn2", c)
    return t | _conv("out_conv", 3, c, cfg.image_channels)


def dcgan_critic_table(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    c, s = cfg.critic_channels, cfg.base_size
    t = _conv("conv1", 3, cfg.image_channels, c) | _conv("conv2", 3, c, 2 * c) | _conv("conv3", 3, 2 * c, 4 * c)
    return t | _dense("dense", s * s * 4 * c, 1)


ARCHS = ("resnet", "dcgan")
# The critics' ``norm`` constructor argument. "spectral": every conv and dense layer of the critic,
# the final dense included, spectrally normalised (Miyato et al. 2018, SN-GAN) by the framework's
# own implementation; parameters and their canonical names stay those of "none", and the
# power-iteration state is extra (torch buffers ``_u``/``_v``, Keras ``vector_u``, flax
# ``batch_stats`` u/sigma).
CRITIC_NORMS = ("none", "spectral")


def check_norm(norm: str) -> str:
    if norm not in CRITIC_NORMS:
        raise ValueError(f"unknown critic norm {norm!r}; expected one of {CRITIC_NORMS}")
    return norm


def refuse_spectral(norm: str, what: str) -> None:
    """Canonical conversion carries parameters only: refuse a spectrally normalised critic."""
    if norm != "none":
        raise ValueError(
            f"{what}: a critic with norm={norm!r} cannot be converted between frameworks (each "
            "framework's spectral normalisation keeps its own power-iteration state)"
        )


def param_table(kind: str, cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for ``kind`` in {"generator", "critic"}."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown architecture {cfg.arch!r}; expected one of {ARCHS}")
    if cfg.arch == "dcgan":
        return dcgan_generator_table(cfg) if kind == "generator" else dcgan_critic_table(cfg)
    if kind == "generator":
        return generator_table(cfg)
    if kind == "critic":
        return critic_table(cfg)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def is_stat(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in STAT_LEAVES


def trainable_count(table: Mapping[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(shape)) for name, shape in table.items() if not is_stat(name))


def check_params(
    params: Mapping[str, np.ndarray], table: Mapping[str, tuple[int, ...]], what: str = "params"
) -> None:
    """Raise ValueError unless ``params`` has exactly the keys and shapes of ``table``."""
    for name, shape in table.items():
        if name not in params:
            raise ValueError(f"{what}: missing key {name!r} (expected shape {tuple(shape)})")
        got = tuple(np.shape(params[name]))
        if got != tuple(shape):
            raise ValueError(f"{what}: key {name!r} has shape {got}, expected {tuple(shape)}")
    extra = sorted(set(params) - set(table))
    if extra:
        raise ValueError(f"{what}: unexpected keys {extra}")
