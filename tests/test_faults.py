"""Crash safety of the training loop: a run SIGKILLed at random moments, several times, always
resumes from its last complete checkpoint, never sees a half-written one, and ends exactly where
an uninterrupted run ends. Uses the loop's pure-NumPy toy trainer (tests/test_train_infra.py),
so it runs in every env; the framework trainers share this loop and checkpoint code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.tally import record, reliability_tally  # noqa: F401 - the session fixture printing the counts
from train.runs import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
RUN = """
import sys
import numpy as np
from tests.test_train_infra import ToyTrainer
from train.loop import main
sys.exit(main("numpy", ToyTrainer, sys.argv[1:]))
"""


def _argv(out: Path, resume: bool) -> list[str]:
    # A checkpoint every iteration makes kills during a write likely.
    argv = ["--preset", "smoke", "--out", str(out), "--steps", "400", "--n-critic", "1", "--batch-size", "8",
            "--gen-batch-size", "8", "--z-dim", "4", "--checkpoint-every", "1", "--keep-checkpoints", "3",
            "--sample-every", "1000", "--log-every", "5", "--no-progress", "--no-tensorboard"]
    return argv + (["--resume"] if resume else [])


def _start(out: Path, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", RUN, *_argv(out, resume)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _complete_checkpoints(out: Path) -> list[int]:
    """Every checkpoint under its final name must load: atomic writes leave none half-written."""
    steps = []
    for step, path in ckpt.list_checkpoints(out / "checkpoints"):
        loaded = ckpt.load_checkpoint(path)
        assert loaded.step == step
        steps.append(step)
    return steps


def _made_progress(out: Path, step: int) -> bool:
    latest = out / "checkpoints" / "latest"
    try:
        name = latest.read_text().strip()
    except OSError:
        return False
    return name.startswith("ckpt-") and int(name[5:14]) >= step


def test_random_sigkills_never_corrupt_and_resume_exactly(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = _start(reference, resume=False)
    assert done.wait(timeout=300) == 0, done.stderr.read()

    out = tmp_path / "killed"
    rng = np.random.default_rng(20261127)
    last_step = 0
    for attempt in range(4):
        proc = _start(out, resume=attempt > 0)
        # Kill at a random moment once the run has made progress (20+ new checkpoints), so the
        # kill lands mid-training, often mid-write, however fast or loaded the machine is.
        deadline = time.monotonic() + 120
        while not _made_progress(out, last_step + 20):
            assert proc.poll() is None, f"run ended early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        record("faults injected")
        record("runs resumed", attempt > 0)
        steps = _complete_checkpoints(out)
        assert steps and steps[-1] >= last_step + 20  # progress is never lost
        last_step = steps[-1]
    final = _start(out, resume=True)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    record("runs resumed")

    a = ckpt.load_latest(reference / "checkpoints")
    b = ckpt.load_latest(out / "checkpoints")
    assert a is not None and b is not None and a.step == b.step == 400
    assert set(a.arrays) == set(b.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)
    assert not list((out / "checkpoints").glob(".*.tmp*")), "stale temp files are cleaned on resume"
