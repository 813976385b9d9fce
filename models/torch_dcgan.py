"""PyTorch (NCHW) DCGAN generator and critic for 32x32 images (``--arch dcgan``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ResNetConfig, check_norm
from .torch_resnet import _bn, _conv, _dense, _up, spectral_normalize


class Generator(nn.Module):
    """z (N, latent) -> images (N, 3, 32, 32) in [-1, 1]."""

    kind = "generator"

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, s = cfg.gen_channels, cfg.base_size
        self.dense, self.bn0 = _dense(cfg.latent_dim, s * s * 4 * c), _bn(4 * c)
        self.conv1, self.bn1 = _conv(4 * c, 2 * c, 3, he=True), _bn(2 * c)
        self.conv2, self.bn2 = _conv(2 * c, c, 3, he=True), _bn(c)
        self.out_conv = _conv(c, cfg.image_channels, 3, he=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.gen_channels, self.cfg.base_size
        h = F.relu(self.bn0(self.dense(z).view(-1, 4 * c, s, s)))
        h = F.relu(self.bn1(self.conv1(_up(h))))
        h = F.relu(self.bn2(self.conv2(_up(h))))
        return torch.tanh(self.out_conv(_up(h)))


class Critic(nn.Module):
    """images (N, 3, 32, 32) -> scores (N, 1)."""

    kind = "critic"

    def __init__(self, cfg: ResNetConfig, norm: str = "none") -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = check_norm(norm)
        c = cfg.critic_channels
        self.conv1 = nn.Conv2d(cfg.image_channels, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2, self.conv3):
            ref = _conv(conv.in_channels, conv.out_channels, 3, he=True)  # the ResNet's init
            conv.weight.data.copy_(ref.weight.data)
            nn.init.zeros_(conv.bias)
        self.dense = _dense(cfg.base_size**2 * 4 * c, 1)
        if norm == "spectral":
            spectral_normalize(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in (self.conv1, self.conv2, self.conv3):
            h = F.leaky_relu(conv(h), 0.2)
        return self.dense(h.permute(0, 2, 3, 1).flatten(1))  # (h, w, c) order, as in NHWC
