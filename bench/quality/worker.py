"""One training run of the study, in its own process:
``python -m bench.quality.worker TASK.json RESULT.json``.

A process per run keeps each framework's threads, caches and signal handling to itself: the
study stops a run with SIGTERM (the training loop finishes its iteration and returns) and a
crashed run leaves no result, so it is run again next time. The runner sets the environment
(one compute thread, JAX on the CPU) before this module starts."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LIPSCHITZ_PAIRS = 256  # real and generated images each


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


def _check_critic_norm_applied(trainer: Any, cfg: Any) -> None:
    """A trainer that accepts ``critic_norm`` but builds the plain critic would make the cell a
    silent copy of ``none``: the normalised critic must score the same images differently
    from the plain one built from the same seed."""
    import numpy as np

    from bench.quality.cells import CellError
    from train import contract

    plain = contract.trainer_class(cfg.framework)(cfg.replace(critic_norm="none"))
    x = np.random.default_rng(0).uniform(-1, 1, (8, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    if np.allclose(trainer.critic_scores(x), plain.critic_scores(x), rtol=1e-6, atol=1e-7):
        raise CellError(f"the {cfg.framework} trainer accepts critic_norm={cfg.critic_norm!r} but its critic scores "
                        "images exactly as the plain critic does (not applied yet)")


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Train one cell at one seed; the result is ``{"ok": True, "record": ...}`` or
    ``{"ok": False, "stage": "setup" | "interrupted", "error": ...}``. A run that fails while
    training (e.g. diverges) is a finished run: ``ok`` with a record of status ``failed``."""
    import numpy as np

    from bench.quality.cells import CELLS, CellError, cell_config
    from bench.quality.stats import lipschitz_on_pairs
    from train import contract
    from train.loop import run_training
    from train.resume import RUN_INFO_KEY
    from train.runs.logs import read_jsonl

    fw, cell, seed = task["framework"], task["penalty"], task["seed"]
    base = {"framework": fw, "penalty": cell, "seed": seed, "iterations": task["iterations"],
            "eval_every": task["eval_every"], "settings": CELLS[cell]}
    with tempfile.TemporaryDirectory(prefix="valr-quality-") as out:
        try:
            cfg = cell_config(fw, cell, seed, task["iterations"], task["eval_every"], out)
            if fw == "torch":
                import torch

                torch.set_num_threads(1)
            trainer = contract.trainer_class(fw)(cfg)
            if CELLS[cell].get("critic_norm", "none") != "none":
                _check_critic_norm_applied(trainer, cfg)
        except (CellError, ImportError, NotImplementedError, TypeError, ValueError) as e:
            return {"ok": False, "stage": "setup", "error": str(e) if isinstance(e, CellError) else _one_line(e)}
        start = time.perf_counter()
        try:
            result = run_training(trainer, cfg, argv=["python -m bench.quality.worker", json.dumps(task)])
        except Exception as e:  # noqa: BLE001 - a failed run is a result of the study (e.g. divergence)
            return {"ok": True, "record": {**base, "status": "failed", "error": _one_line(e),
                                           "fd_digits": None, "finished": _now()}}
        wall = time.perf_counter() - start
        if result.status != "completed":
            return {"ok": False, "stage": "interrupted", "error": f"stopped at iteration {result.step}"}
        rows = read_jsonl(Path(out) / "metrics.jsonl")
        info = json.loads((Path(out) / "config.json").read_text()).get(RUN_INFO_KEY, {})
        samples = None
        if task.get("samples_dir"):
            grid = Path(out) / "samples" / f"step_{cfg.steps:07d}.png"
            dest = Path(task["samples_dir"]) / f"{fw}-{cell}-seed{seed}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, dest)
            samples = dest.name  # under the study's samples folder
    # The critic's Lipschitz constant on pairs of real and generated images (max ratio over pairs).
    from train.data import load_digits, to_model_range

    data = load_digits()
    pick = np.random.default_rng(seed).choice(len(data), LIPSCHITZ_PAIRS, replace=False)
    real = to_model_range(data[pick], None, flip=False, dequantize=False)
    z = np.random.default_rng(10_000 + seed).standard_normal((LIPSCHITZ_PAIRS, cfg.z_dim)).astype(np.float32)
    fake = trainer.sample(z).astype(np.float32) / 127.5 - 1.0
    points = np.concatenate([real, fake])
    curve = [{"iteration": r["step"], "train_s": r["time/train_s"], "fd_digits": r["eval/FD_digits"],
              "kid_digits": r["eval/KID_digits"], "classes": r["eval/classes"],
              "confidence": r["eval/confidence"]} for r in rows if "eval/FD_digits" in r]
    final = result.eval_metrics
    train_s = float(rows[-1]["time/train_s"])
    return {"ok": True, "record": {
        **base, "status": "completed", "train_s": train_s, "s_per_iteration": train_s / cfg.steps,
        "wall_s": wall, "fd_digits": final["eval/FD_digits"], "kid_digits": final["eval/KID_digits"],
        "classes": final["eval/classes"], "confidence": final["eval/confidence"],
        "wdist": rows[-1].get("critic/wdist"), "lipschitz": lipschitz_on_pairs(trainer.critic_scores(points), points),
        "eval_samples": cfg.final_eval_samples, "curve": curve, "samples_png": samples, "finished": _now(),
        "git_commit": info.get("git_commit"), "versions": info.get("versions")}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    task_path, result_path = argv if argv is not None else sys.argv[1:]
    # SIGTERM before training starts (the loop handles it during training): unwind, so the
    # temporary run directory is removed; no result means the run trains again next time.
    signal.signal(signal.SIGTERM, _stop)
    try:
        result = run(json.loads(Path(task_path).read_text()))
    except KeyboardInterrupt:
        return 130
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
