"""Writes tests/fixtures/*.npz once: fixed critic weights, inputs and VALP draws.

Run `python tests/make_fixtures.py` only to regenerate on purpose; the files are committed so
every framework and the reference read exactly the same numbers (npz, no pickle).
"""

from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).parent / "fixtures"


def _draws(rng: np.random.Generator, x: np.ndarray, m: int) -> dict:
    return {
        "d0": rng.uniform(-0.5, 0.5, size=(m,) + x.shape[1:]),
        "eps": rng.uniform(0.1, 10.0, size=m),
        "index": np.sort(rng.permutation(len(x))[:m]).astype(np.int64),
    }


def main() -> None:
    HERE.mkdir(exist_ok=True)
    rng = np.random.default_rng(20261127)
    n, dim, hidden = 8, 6, 16
    x = rng.normal(size=(n, dim))
    mlp = {
        "w1": rng.normal(size=(dim, hidden)) * 1.2,
        "b1": rng.normal(size=hidden) * 0.1,
        "w2": rng.normal(size=(hidden, 1)) * 1.6,
        "b2": rng.normal(size=1) * 0.1,
        "w2_cls": rng.normal(size=(hidden, 3)),
        "b2_cls": rng.normal(size=3) * 0.1,
        "x": x,
    }
    full, half = _draws(rng, x, n), _draws(rng, x, n // 2)
    np.savez(HERE / "mlp.npz", **mlp, **full, **{f"half_{k}": v for k, v in half.items()})

    n, c, hw, f = 4, 3, 6, 5
    x = rng.uniform(-1, 1, size=(n, c, hw, hw))
    conv = {
        "c1": rng.normal(size=(f, c, 3, 3)) * 0.4,
        "c1b": rng.normal(size=f) * 0.1,
        "c2": rng.normal(size=(f, f, 3, 3)) * 0.3,
        "c2b": rng.normal(size=f) * 0.1,
        "w": rng.normal(size=(f, 1)) * 7.0,
        "b": rng.normal(size=1) * 0.1,
        "x": x,
    }
    np.savez(HERE / "conv.npz", **conv, **_draws(rng, x, n))


if __name__ == "__main__":
    main()
