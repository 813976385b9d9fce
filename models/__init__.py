"""WGAN-GP CIFAR-10 ResNet generator/critic for torch, tf (Keras 3) and jax (flax); importing
``models`` imports no framework (submodules load on first attribute access)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_SUBMODULES = ("spec", "convert", "torch_resnet", "tf_resnet", "jax_resnet")
__all__ = [*_SUBMODULES, "critic_fn"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def critic_fn(framework: str, model_or_variables: Any) -> Callable[[Any], Any]:
    """A callable ``x -> (N, 1)`` scores in the framework's layout, from an ``nn.Module``, a
    ``keras.Model`` or jax ``(module, variables)`` / variables; only the torch one (the module
    itself) advances a spectrally normalised critic's power iteration (in training mode)."""
    if framework == "torch":
        return model_or_variables
    if framework == "tf":
        return lambda x: model_or_variables(x, training=False)
    if framework == "jax":
        if isinstance(model_or_variables, tuple):
            module, variables = model_or_variables
        else:  # a ResNet critic; its width is read from the kernels
            from . import jax_resnet, spec

            variables = model_or_variables
            cin, c = variables["params"]["block1"]["conv1"]["kernel"].shape[-2:]
            cfg = spec.ResNetConfig(critic_channels=c, image_channels=cin)
            # A critic has batch_stats only from spectral normalisation (SpectralNorm's u, sigma).
            norm = "spectral" if variables.get("batch_stats") else "none"
            module = jax_resnet.Critic(cfg, norm=norm)
        return lambda x: module.apply(variables, x)  # train=False: SN's u, sigma are not updated
    raise ValueError(f"unknown framework {framework!r}; expected torch, tf or jax")
