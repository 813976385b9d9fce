"""What only the torch trainer does (the shared contract is tests/test_trainer_contract.py):
explicit generators only, generator states across device types, the --device flag."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.test_trainer_contract import tiny_cfg  # noqa: E402
from train import contract  # noqa: E402
from train.config import ConfigError  # noqa: E402
from train.penalties import make_penalty  # noqa: E402
from train.torch_wgan import TorchWGAN, resolve_device  # noqa: E402

pytestmark = pytest.mark.framework("torch")


def test_penalties_use_only_the_explicit_generator() -> None:
    critic = torch.nn.Linear(48, 1).double()
    x = torch.rand((4, 3, 4, 4), dtype=torch.float64)
    flat = lambda v: critic(v.flatten(1))  # noqa: E731
    for name in ("gp", "lp", "valp"):
        pen = make_penalty(name, "torch", fraction=0.5)
        torch.manual_seed(0)
        global_before = torch.random.get_rng_state()
        a = pen.pair_loss(flat, x, -x, torch.Generator().manual_seed(5), pen.init_state(x))[0]
        b = pen.pair_loss(flat, x, -x, torch.Generator().manual_seed(5), pen.init_state(x))[0]
        assert float(a.detach()) == float(b.detach())
        assert torch.equal(torch.random.get_rng_state(), global_before), name
        assert all(p.grad is None for p in critic.parameters())  # the penalty never writes .grad


def test_rng_state_from_another_device_type_reseeds(caplog: pytest.LogCaptureFixture) -> None:
    tr = TorchWGAN(tiny_cfg())
    state = tr.state_arrays()
    state[contract.RNG_LATENTS_KEY] = np.arange(16, dtype=np.uint8)  # a CUDA generator's state is 16 bytes
    draws = []
    for _ in range(2):
        with caplog.at_level("WARNING", logger="valr.train"):
            tr.load_state_arrays(state)
        draws.append(tr._latents(3))
    assert f"{contract.RNG_LATENTS_KEY} was saved on another device type" in caplog.text
    assert torch.equal(draws[0], draws[1])  # deterministic in the saved state


def test_device_flag_is_validated() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
