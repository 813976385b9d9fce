"""What only the TF trainer does (the shared contract is tests/test_trainer_contract.py): graphs
traced once while the learning rate decays, TF's start-up notices kept out of the logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.framework("tf")

tf = pytest.importorskip("tensorflow")

from tests.test_trainer_contract import real_batch, tiny_cfg  # noqa: E402
from train.config import ConfigError  # noqa: E402
from train.tf_wgan import TfWGAN, _device_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_steps_trace_once_as_the_learning_rate_decays() -> None:
    trainer = TfWGAN(tiny_cfg(penalty="gp"))
    for step in range(3):
        trainer.critic_step(real_batch(seed=step), step)
        trainer.generator_step(step)
    assert trainer._critic_fn.experimental_get_tracing_count() == 1
    assert trainer._gen_fn.experimental_get_tracing_count() == 1


def test_tf_startup_notices_stay_out_of_the_logs() -> None:
    """The entry point filters TF's start-up notices; importing ``train.tf_wgan`` changes nothing."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "train.tf_wgan", "--preset", "smoke", "--print-config"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"framework": "tf"' in r.stdout and "oneDNN custom operations" not in r.stderr
    code = "import os, sys, train.tf_wgan; print('tensorflow' in sys.modules, os.environ.get('KERAS_BACKEND'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={k: v for k, v in env.items() if k != "KERAS_BACKEND"},
                       capture_output=True, text=True, timeout=300, check=True)
    assert r.stdout.split() == ["False", "None"]  # no import-time side effects


def test_keras_on_another_backend_is_one_line_not_switched() -> None:
    env = {**os.environ, "KERAS_BACKEND": "numpy"}  # always installed with Keras
    r = subprocess.run([sys.executable, "-m", "train.tf_wgan", "--preset", "smoke", "--print-config"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300, check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "KERAS_BACKEND" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_device_flag_is_validated() -> None:
    assert _device_name("auto") is None and _device_name("cpu") == "/CPU:0"
    with pytest.raises(ConfigError, match="--device tpu"):
        _device_name("tpu")
