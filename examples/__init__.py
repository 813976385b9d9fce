"""Runnable WGAN-VALP examples, one per framework (``python -m examples.torch_wgan_valp --steps 300``)."""
