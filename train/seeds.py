"""One seed policy for the three trainers: every random stream is seeded from
``stream_seed(cfg.seed, purpose, replica)``, so changing the penalty (which consumes penalty
randomness) never changes the latents, the initialisation or the data order, in any framework.
Replica 0 is the single-process stream; other replicas get their own penalty streams."""

from __future__ import annotations

import numpy as np

# Purposes, each its own stream. Fixed sample grids and evaluation latents belong to the loop.
PURPOSES = ("init", "data", "latents", "penalty", "sample_grid", "eval")
MAX_SEED = 2**32 - 1  # what every framework's seeding accepts (JAX keys without x64 included)


def stream_seed(seed: int, purpose: str, replica: int = 0) -> int:
    """A 31-bit seed for ``purpose`` derived from the run's ``seed`` (SeedSequence hashing)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    entropy = [seed, PURPOSES.index(purpose)] + ([replica] if replica else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0] >> 1)


def numpy_stream(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    """A NumPy generator for loop-side draws (data order, fixed grids, evaluation latents)."""
    return np.random.default_rng([stream_seed(seed, purpose), *extra])
