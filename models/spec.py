"""Framework-neutral WGAN-GP CIFAR-10 ResNet (Gulrajani et al. 2017) and DCGAN: the *canonical*
parameter dict all frameworks convert through, keyed ``"<layer path>.<leaf>"`` (the flax module
paths and Keras layer names) in NHWC terms: conv kernels HWIO, dense (in, out), the generator's
first dense layer's outputs ordered (h, w, c), BatchNorm ``scale``, ``bias``, ``mean``, ``var``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

KINDS = ("generator", "critic")
STAT_LEAVES = ("mean", "var")  # running statistics, not trainable parameters
N_UP_BLOCKS = 3
BN_EPS = 1e-5
# running = BN_MOMENTUM * running + (1 - BN_MOMENTUM) * batch (keras/flax; torch's is 1 - this).
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    latent_dim: int = 128
    gen_channels: int = 128  # paper 256, released code 128
    critic_channels: int = 128
    image_size: int = 32
    image_channels: int = 3
    # "dcgan": models/*_dcgan.py, for the digits preset (~4x fewer FLOPs at equal width).
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
    return t | _bn("out_bn", c) | _conv("out_conv", 3, c, cfg.image_channels)


def critic_table(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
    c = cfg.critic_channels
    t: dict[str, tuple[int, ...]] = {}
    # block1 (optimised) and block2 down-sample through a 1x1 shortcut; block3/4 are plain.
    for i, cin in ((1, cfg.image_channels), (2, c), (3, c), (4, c)):
        t |= _conv(f"block{i}.conv1", 3, cin, c) | _conv(f"block{i}.conv2", 3, c, c)
        if i <= 2:
            t |= _conv(f"block{i}.shortcut", 1, cin, c)
    return t | _dense("dense", c, 1)


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
# The critics' ``norm``. "spectral": every layer spectrally normalised by the framework's own
# implementation; canonical parameters stay those of "none", the power-iteration state is extra.
CRITIC_NORMS = ("none", "spectral")


def check_norm(norm: str) -> str:
    if norm not in CRITIC_NORMS:
        raise ValueError(f"unknown critic norm {norm!r}; expected one of {CRITIC_NORMS}")
    return norm


def refuse_spectral(norm: str, what: str) -> None:
    """Canonical conversion carries parameters only: refuse a spectrally normalised critic."""
    if norm != "none":
        raise ValueError(f"{what}: a critic with norm={norm!r} cannot be converted between "
                         "frameworks (each framework's spectral normalisation keeps its own "
                         "power-iteration state)")


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


def check_params(params: Mapping[str, np.ndarray], table: Mapping[str, tuple[int, ...]],
                 what: str = "params") -> None:
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
