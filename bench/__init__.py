"""Benchmarks and scientific validation for valr.

* ``python -m bench.speed``: critic-step time of no penalty, GP, LP and VALP variants on the
  WGAN-GP CIFAR-10 ResNet critic per framework (ratios to the no-penalty step, interleaved),
  abstraction overhead against a hand-written VALP, scaling and peak memory.
* ``python -m bench.exactness``: critics trained between fixed 2-D sample sets against the
  exact Wasserstein-1 distance (POT), with empirical Lipschitz constants and a PNG.

Importing ``bench`` imports no framework.
"""
