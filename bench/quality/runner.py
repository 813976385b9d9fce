"""Runs the study's tasks, ``workers`` at a time, one process per run (``bench.quality.worker``)
with one compute thread each, so every run's seconds include the same contention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
Task = dict[str, Any]
Result = dict[str, Any]
STOP_GRACE_S = 120  # a stopped run finishes its iteration first


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
                "TF_CPP_MIN_LOG_LEVEL": "2"})
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


def _stderr_tail(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"


def execute(tasks: list[Task], workers: int, on_result: Callable[[Task, Result], None], *,
            run_task: Callable[[Task], Result] | None = None,
            should_run: Callable[[Task], bool] = lambda t: True) -> None:
    """Run ``tasks`` in order and call ``on_result`` as each finishes. ``run_task`` runs them in
    this process instead, one at a time (tests). ``should_run`` is asked just before a task
    starts (a cell found broken skips its remaining tasks). On KeyboardInterrupt the running
    workers are stopped (SIGTERM: the training loop ends its iteration) and it re-raises."""
    if run_task is not None:
        for task in tasks:
            if should_run(task):
                on_result(task, run_task(task))
        return
    pending = list(tasks)
    running: list[tuple[Task, subprocess.Popen[bytes], Path]] = []
    with tempfile.TemporaryDirectory(prefix="valr-quality-tasks-") as tmp:
        try:
            while pending or running:
                while pending and len(running) < workers:
                    task = pending.pop(0)
                    if not should_run(task):
                        continue
                    d = Path(tmp) / f"{task['framework']}-{task['penalty']}-{task['seed']}"
                    d.mkdir()
                    (d / "task.json").write_text(json.dumps(task))
                    with (d / "log.txt").open("wb") as log:
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "bench.quality.worker", str(d / "task.json"), str(d / "result.json")],
                            cwd=REPO, env=worker_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                    running.append((task, proc, d))
                time.sleep(0.5)
                for item in [r for r in running if r[1].poll() is not None]:
                    running.remove(item)
                    task, proc, d = item
                    if (d / "result.json").is_file():
                        result = json.loads((d / "result.json").read_text())
                    else:
                        result = {"ok": False, "stage": "crashed",
                                  "error": f"worker exited with {proc.returncode}: {_stderr_tail(d / 'log.txt')}"}
                    on_result(task, result)
        except BaseException:
            _stop(running)
            raise


def _stop(running: list[tuple[Task, subprocess.Popen[bytes], Path]]) -> None:
    for _, proc, _ in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for _, proc, _ in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
