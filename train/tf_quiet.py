"""TensorFlow start-up notices kept out of users' logs (what importing TF forces).

TF's C++ runtime writes oneDNN/absl/CPU-feature notices straight to fd 2 at import, ignoring
TF_CPP_MIN_LOG_LEVEL; these helpers filter exactly those lines and keep every other one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Start-up notices TF's C++ runtime writes straight to fd 2, ignoring TF_CPP_MIN_LOG_LEVEL
# (oneDNN, absl, CPU features). Nothing else is filtered.
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
