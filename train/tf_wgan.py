"""``python -m train.tf_wgan``: the TensorFlow trainer (``train.tf_trainer``), started with TF's
start-up notices kept out of stderr. Its names (``TfWGAN``, ``make_trainer``, ...) resolve here
on first use; nothing is imported, filtered or set when this module is imported."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

# Start-up notices TF's C++ runtime writes straight to fd 2 at import, ignoring
# TF_CPP_MIN_LOG_LEVEL (oneDNN, absl, CPU features). Nothing else is filtered.
_TF_NOISE = re.compile(r"oneDNN custom operations are on|All log messages before absl::InitializeLog"
                       r"|cpu_feature_guard|To enable the following instructions:")


@contextlib.contextmanager
def tf_noise_filtered() -> Iterator[None]:
    """Capture fd 2 for the block, then write back every line except TF's start-up notices.
    Only for short blocks that cannot crash the process (a hard abort would lose what was captured)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): filter nothing
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _TF_NOISE.search(ln)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":  # told, not switched: the variable is the user's
        print(f"error: the TF trainer needs Keras' TensorFlow backend, but KERAS_BACKEND is {backend!r}: "
              "unset it or set KERAS_BACKEND=tensorflow", file=sys.stderr)
        return 2
    try:
        with tf_noise_filtered():
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
