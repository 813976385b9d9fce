"""Framework-native front doors to ``VALP``: a torch ``nn.Module``, a Keras 3 WGAN model and
callback, and helpers for Flax NNX critics.

Each submodule imports its framework when *it* is imported; this package imports none, so
``import valr_core`` stays framework-free. Import the one you need::

    from valr_core.frontends.torch_module import VALPModule, valp_penalty
    from valr_core.frontends.keras_wgan import WGANVALP, VALPCallback
    from valr_core.frontends.nnx import nnx_critic
"""
