"""Running the examples the two ways a user does, from the repository root: as a script
(``python examples/x.py``) and as a module (``python -m examples.x``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ("--steps", "1", "--eval-every", "1", "--n-critic", "1", "--batch", "16")
# What every report line of a trained step shows: the core's statistic names, nothing renamed.
STAT_NAMES = ("valp/mean_violation", "valp/max_violation", "valp/violating_fraction", "valp/mu")


def run_example(name: str, *args: str, as_module: bool, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the repository root must not be what makes `examples` importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", f"examples.{name}"] if as_module else [sys.executable, os.path.join("examples", f"{name}.py")]
    return subprocess.run([*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def check_trained_run(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2, result.stdout  # step 0 and step 1
    assert "valp/mu" in lines[0]
    for name in STAT_NAMES:
        assert f"  {name} " in lines[1], (name, lines[1])
    assert " mu " not in result.stdout  # only the prefixed name


def check_refused(result: subprocess.CompletedProcess[str], flag: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert "error:" in err[0] and flag in err[0], err[0]
    assert "Traceback" not in result.stderr and not result.stdout.strip()
