"""``python -m train.tf_wgan``: the TensorFlow trainer (``train.tf_trainer``), started with TF's
start-up notices kept out of stderr. Its names (``TfWGAN``, ``make_trainer``, ...) resolve here
on first use; nothing is imported, filtered or set when this module is imported."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    from train.tf_quiet import tf_noise_filtered

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":  # told, not switched: the variable is the user's
        print(f"error: the TF trainer needs Keras' TensorFlow backend, but KERAS_BACKEND is {backend!r}: "
              "unset it or set KERAS_BACKEND=tensorflow", file=sys.stderr)
        return 2

    try:
        with tf_noise_filtered():  # TF's C++ runtime writes its notices to fd 2 at import
            from train import tf_trainer
    except ImportError as e:  # Keras set to another backend (models.tf_resnet says which)
        if "KERAS_BACKEND" not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return tf_trainer.main(argv)


def __getattr__(name: str) -> Any:
    from train import tf_trainer

    return getattr(tf_trainer, name)


if __name__ == "__main__":
    sys.exit(main())
