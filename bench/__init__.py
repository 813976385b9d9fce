"""Benchmarks and scientific validation for valr.

* ``python -m bench.speed``: critic-step time of no penalty, GP, LP and VALP variants on the
  WGAN-GP CIFAR-10 ResNet critic per framework (ratios to the no-penalty step, interleaved),
  abstraction overhead against a hand-written VALP, scaling and peak memory.
* ``python -m bench.exactness``: critics trained between fixed 2-D sample sets against the
  exact Wasserstein-1 distance (POT), with empirical Lipschitz constants and a PNG.

Importing ``bench`` imports no framework.
"""

import importlib.util
import sys
from pathlib import Path

# The trainers' checkout check (train/__init__.py) covers bench too, once train is ours.
_train = importlib.util.find_spec("train")
if _train is None or _train.origin is None or Path(_train.origin).resolve() != Path(__file__).resolve().parent.parent / "train" / "__init__.py":
    print(f"valr: the benchmarks run from a valr checkout (python -m bench.speed in its root), but 'train' resolves "
          f"to {_train and _train.origin}", file=sys.stderr)
    raise SystemExit(2)
importlib.import_module("train")  # its checkout check covers models and bench
