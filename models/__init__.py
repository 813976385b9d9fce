"""WGAN-GP CIFAR-10 ResNet generator/critic for torch, tf (Keras 3) and jax (flax).

Importing ``models`` imports no framework: submodules load on first attribute access
(``models.torch_resnet``, ``models.tf_resnet``, ``models.jax_resnet``, ``models.spec``,
``models.convert``).
"""

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
    """A callable ``x -> (N, 1)`` scores in the framework's own layout.

    torch: an ``nn.Module`` (NCHW input); tf: a ``keras.Model`` (NHWC); jax: ``(module,
    variables)`` or just the variables dict (NHWC; the width is read from the kernels). The
    JAX callable is pure: it closes over the variables and is safe under jit/grad. The tf and jax
    callables never advance a spectrally normalised critic's power iteration (``training=False``,
    ``train=False``); the torch one is the module itself, which does in training mode.
    """
    if framework == "torch":
        return model_or_variables
    if framework == "tf":
        model = model_or_variables
        return lambda x: model(x, training=False)
    if framework == "jax":
        jr = importlib.import_module(f"{__name__}.jax_resnet")
        if isinstance(model_or_variables, tuple):
            module, variables = model_or_variables
        else:
            variables = model_or_variables
            kernel = variables["params"]["block1"]["conv1"]["kernel"]
            spec = importlib.import_module(f"{__name__}.spec")
            cfg = spec.ResNetConfig(
                critic_channels=kernel.shape[-1], image_channels=kernel.shape[-2]
            )
            # A critic has batch_stats only from spectral normalisation (flax SpectralNorm's u, sigma).
            module = jr.Critic(cfg, norm="spectral" if variables.get("batch_stats") else "none")
        return lambda x: module.apply(variables, x)  # train=False: SN's u, sigma are not updated
    raise ValueError(f"unknown framework {framework!r}; expected torch, tf or jax")
