"""Framework-native front doors to ``VALP`` (``torch_module``, ``keras_wgan``, ``nnx``); each
submodule imports its framework, this package none."""
