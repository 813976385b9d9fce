"""Framework-neutral training infrastructure shared by the torch, TF and JAX WGAN trainers.

Nothing in this package imports torch, TensorFlow or JAX at import time: the trainers
(``train/torch_wgan.py``, ``train/tf_wgan.py``, ``train/jax_wgan.py``) bring their framework and
talk to :mod:`train.loop` through NumPy arrays only.
"""
