"""PyTorch (NCHW) WGAN-GP CIFAR-10 ResNet generator and critic."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from . import spec
from .spec import BN_EPS, BN_MOMENTUM, ResNetConfig, check_norm


def _conv(cin: int, cout: int, k: int, he: bool) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    # The original's init: uniform, variance 2/(fan_in+fan_out) ("he") or half that (Glorot).
    bound = math.sqrt(3.0 * (4.0 if he else 2.0) / ((cin + cout) * k * k))
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)
    return conv


def _dense(cin: int, cout: int) -> nn.Linear:
    lin = nn.Linear(cin, cout)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _bn(c: int) -> nn.BatchNorm2d:
    # torch momentum is the weight of the new batch; running_var uses the unbiased variance.
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=1.0 - BN_MOMENTUM)


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Every Conv2d and Linear below ``module`` through torch's ``spectral_norm`` (in place); a
    forward pass in training mode takes one power-iteration step, in eval mode none."""
    for sub in list(module.modules()):
        if isinstance(sub, nn.Conv2d | nn.Linear):
            spectral_norm(sub)  # draws u, v from the global RNG: call it after the weights' init
    return module


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class UpBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = _bn(c), _conv(c, c, 3, he=True)
        self.bn2, self.conv2 = _bn(c), _conv(c, c, 3, he=True)
        self.shortcut = _conv(c, c, 1, he=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_up(F.relu(self.bn1(x))))
        h = self.conv2(F.relu(self.bn2(h)))
        return self.shortcut(_up(x)) + h


class Generator(nn.Module):
    """z (N, latent) -> images (N, 3, 32, 32) in [-1, 1]."""

    kind = "generator"

    def __init__(self, cfg: ResNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ResNetConfig()
        c, s = cfg.gen_channels, cfg.base_size
        self.dense = _dense(cfg.latent_dim, s * s * c)
        self.block1, self.block2, self.block3 = UpBlock(c), UpBlock(c), UpBlock(c)
        self.out_bn = _bn(c)
        self.out_conv = _conv(c, cfg.image_channels, 3, he=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.gen_channels, self.cfg.base_size
        h = self.dense(z).view(-1, c, s, s)
        h = self.block3(self.block2(self.block1(h)))
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class DownBlock(nn.Module):
    """Residual block; ``optimized`` is the first block (no leading ReLU), ``down`` pools."""

    def __init__(self, cin: int, c: int, down: bool, optimized: bool = False) -> None:
        super().__init__()
        self.down, self.optimized = down, optimized
        self.conv1, self.conv2 = _conv(cin, c, 3, he=True), _conv(c, c, 3, he=True)
        self.shortcut = _conv(cin, c, 1, he=False) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.optimized else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if not self.down:
            return x + h
        # A 1x1 conv commutes with mean pooling, so MeanPoolConv == ConvMeanPool here.
        return self.shortcut(F.avg_pool2d(x, 2)) + F.avg_pool2d(h, 2)


class Critic(nn.Module):
    """images (N, 3, 32, 32) -> scores (N, 1); ``norm`` in ``models.spec.CRITIC_NORMS``
    ("spectral": see :func:`spectral_normalize`)."""

    kind = "critic"

    def __init__(self, cfg: ResNetConfig | None = None, norm: str = "none") -> None:
        super().__init__()
        self.cfg = cfg = cfg or ResNetConfig()
        self.norm = check_norm(norm)
        c = cfg.critic_channels
        self.block1 = DownBlock(cfg.image_channels, c, down=True, optimized=True)
        self.block2 = DownBlock(c, c, down=True)
        self.block3 = DownBlock(c, c, down=False)
        self.block4 = DownBlock(c, c, down=False)
        self.dense = _dense(c, 1)
        if norm == "spectral":
            spectral_normalize(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block4(self.block3(self.block2(self.block1(x))))
        return self.dense(F.relu(h).mean(dim=(2, 3)))


_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _leaves(module: nn.Module):
    """(canonical name, torch tensor, kind, output permutation or None) per converted leaf."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            yield f"{name}.kernel", sub.weight, "conv", None
            yield f"{name}.bias", sub.bias, "vec", None
        elif isinstance(sub, nn.Linear):
            perm = None
            if module.kind == "generator" and name == "dense":  # the ResNet's and the DCGAN's
                # perm[k] = torch output of canonical output k; canonical (h, w, c), torch (c, h, w)
                s = module.cfg.base_size
                c = sub.out_features // (s * s)
                perm = np.arange(c * s * s).reshape(c, s, s).transpose(1, 2, 0).reshape(-1)
            yield f"{name}.kernel", sub.weight, "dense", perm
            yield f"{name}.bias", sub.bias, "vec", perm
        elif isinstance(sub, nn.BatchNorm2d):
            for tname, leaf in _BN_LEAVES.items():
                yield f"{name}.{leaf}", getattr(sub, tname), "vec", None


def to_canonical(module: nn.Module) -> dict[str, np.ndarray]:
    spec.refuse_spectral(getattr(module, "norm", "none"), f"torch {module.kind}")
    out: dict[str, np.ndarray] = {}
    for name, t, kind, perm in _leaves(module):
        a = t.detach().cpu().numpy().astype(np.float32)
        a = a.transpose(2, 3, 1, 0) if kind == "conv" else a.T if kind == "dense" else a
        out[name] = np.ascontiguousarray(a if perm is None else a[..., perm])
    return out


def from_canonical(module: nn.Module, params: Mapping[str, np.ndarray]) -> nn.Module:
    """Copy canonical ``params`` into ``module`` in place (shapes checked first)."""
    what = f"torch {module.kind}"
    spec.refuse_spectral(getattr(module, "norm", "none"), what)
    spec.check_params(params, spec.param_table(module.kind, module.cfg), what)
    with torch.no_grad():
        for name, t, kind, perm in _leaves(module):
            a = np.asarray(params[name], dtype=np.float32)
            a = a if perm is None else a[..., np.argsort(perm)]
            a = a.transpose(3, 2, 0, 1) if kind == "conv" else a.T if kind == "dense" else a
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(t.dtype))
    return module
