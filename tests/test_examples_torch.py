"""examples/torch_wgan_valp.py runs, and its critic's estimate moves towards the exact W1."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.framework("torch")

TOLERANCE = 0.35  # |estimate / exact W1 - 1| after 30 generator steps (150 critic steps)


def test_torch_example_estimates_w1() -> None:
    from examples import torch_wgan_valp

    # 64-unit MLPs gain nothing from threads, and on a loaded machine spinning threads cost ~3x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = torch_wgan_valp.main(["--steps", "30", "--eval-every", "10"])
    finally:
        torch.set_num_threads(threads)
    first, last = abs(history[0]["rel_error"]), abs(history[-1]["rel_error"])
    assert first > 0.5  # an untrained critic is far off
    assert last < first and last < TOLERANCE, history
