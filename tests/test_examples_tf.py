"""examples/keras_wgan_valp.py runs, and its critic's estimate moves towards the exact W1."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.framework("tf")

TOLERANCE = 0.35  # |estimate / exact W1 - 1| after 30 generator steps (150 critic steps)


def test_tf_example_estimates_w1() -> None:
    from examples import keras_wgan_valp

    history = keras_wgan_valp.main(["--steps", "30", "--eval-every", "10"])
    first, last = abs(history[0]["rel_error"]), abs(history[-1]["rel_error"])
    assert first > 0.5  # an untrained critic is far off
    assert last < first and last < TOLERANCE, history
