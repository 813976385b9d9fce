"""What only the JAX trainer does (the shared contract is tests/test_trainer_contract.py): one
float32 pytree of state, jitted steps that do not recompile as the learning rate decays."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from tests.test_trainer_contract import real_batch, tiny_cfg  # noqa: E402
from train import jax_wgan  # noqa: E402
from train.config import ConfigError  # noqa: E402
from train.jax_wgan import JaxWGAN, resolve_device  # noqa: E402

pytestmark = pytest.mark.framework("jax")


def test_state_is_float32_and_steps_compile_once() -> None:
    trainer = JaxWGAN(tiny_cfg())
    state = trainer.state_arrays()
    floats = {k: v.dtype for k, v in state.items() if v.dtype.kind == "f"}
    assert set(floats.values()) == {np.dtype(np.float32)}, "state must be float32 (x64 mode is on in tests)"
    assert state["rng/latents"].dtype == np.uint32 and state["rng/penalty"].shape == (2,)
    trainer.critic_step(real_batch(), 0)
    compiled = jax_wgan._critic_step._cache_size()
    for step in (1, 2):  # a new learning rate each step: an argument, not a recompilation
        trainer.critic_step(real_batch(seed=step), step)
    assert jax_wgan._critic_step._cache_size() == compiled


def test_device_flag_is_validated() -> None:
    assert resolve_device("auto") is None
    assert resolve_device("cpu") == jax.devices("cpu")[0]
    with pytest.raises(ConfigError, match="--device cpu:7"):
        resolve_device("cpu:7")
