"""Framework-neutral training infrastructure shared by the torch, TF and JAX WGAN trainers; it
imports no framework itself: the trainers bring theirs and talk to :mod:`train.loop` in NumPy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
REPOSITORY_PACKAGES = ("train", "models", "bench")  # run from a checkout; never installed


def require_checkout() -> None:
    """Exit in one line unless ``train``, ``models`` and ``bench`` are this checkout's: started
    elsewhere, a user's own ``models.py`` (say) would otherwise be imported as the models."""
    for name in REPOSITORY_PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin != CHECKOUT / name / "__init__.py":
            print(f"valr: the trainers and benchmarks run from a valr checkout (cd {CHECKOUT} && python -m "
                  f"train.torch_wgan ...), but '{name}' resolves to {origin or 'nothing'}", file=sys.stderr)
            raise SystemExit(2)


require_checkout()
