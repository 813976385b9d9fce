"""The digits main job, timed and recorded: the README's main-job figures come from here.

    python -m bench.main_job --framework torch        # writes bench/results/main_job_torch.{json,md,png}

Runs ``python -m train.<framework>_wgan --preset digits`` (plus any ``--`` trainer flags) as a
subprocess with the trainer's default threads, and records the wall-clock of the whole command,
the training seconds, the FD-digits/KID/classes/confidence curve, the classifier's confidence on
the real digits (the level the samples' confidence is compared with) and the final EMA grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FRAMEWORKS = ("torch", "tf", "jax")
BUDGET_S = 300.0  # the main job's target: 5 minutes on 2 CPU cores


def real_confidence() -> float:
    """The digits classifier's mean top probability on all 1797 real digits."""
    from train.evaluation.digits import class_coverage, labelled_digits, load_classifier

    return class_coverage(load_classifier()(labelled_digits()[0])[1])[1]


def run(framework: str, flags: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "digits"
        cmd = [sys.executable, "-m", f"train.{framework}_wgan", "--preset", "digits", "--no-progress",
               "--no-tensorboard", "--out", str(out), *flags]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench.main_job: the trainer failed ({proc.returncode}): {proc.stderr[-600:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        grids = sorted((out / "samples").glob("step_*.png"))
        png = RESULTS / f"main_job_{framework}.png"
        shutil.copyfile(grids[-1], png)
    curve = [{"iteration": r["step"], **{k[5:]: r[k] for k in r if k.startswith("eval/")}}
             for r in rows if any(k.startswith("eval/") for k in r)]
    shown = ["python", "-m", f"train.{framework}_wgan", "--preset", "digits", "--no-progress", "--no-tensorboard", *flags]
    return {"command": shlex.join(shown),  # exactly what ran, the temporary --out aside
            "framework": framework, "wall_s": wall, "train_s": rows[-1]["time/train_s"],
            "iterations": rows[-1]["step"], "final": curve[-1], "curve": curve,
            "real_confidence": real_confidence(), "grid": png.name, "budget_s": BUDGET_S,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_before": os.getloadavg()[0]}


def markdown(r: dict[str, Any]) -> str:
    f = r["final"]
    within = "within" if r["wall_s"] <= r["budget_s"] else "over"
    return "\n".join([
        f"Written by `python -m bench.main_job --framework {r['framework']}` from one run of `{r['command']}` "
        f"({r['machine']}; load average {r['load_before']:.1f} when it started).", "",
        f"- wall-clock of the whole command: **{r['wall_s']:.0f} s** ({within} the {r['budget_s']:.0f} s budget); "
        f"{r['train_s']:.0f} s in training iterations; {r['iterations']} iterations",
        f"- final EMA samples: FD-digits **{f['FD_digits']:.2f}**, KID-digits {f['KID_digits']:.3f}, "
        f"{f['classes']:.0f} of 10 classes, classifier confidence {f['confidence']:.3f} "
        f"(on the real digits: {r['real_confidence']:.3f})", "",
        "| iteration | FD-digits | KID-digits | classes | confidence |", "|---|---|---|---|---|",
        *[f"| {c['iteration']} | {c['FD_digits']:.2f} | {c['KID_digits']:.3f} | {c['classes']:.0f} | "
          f"{c['confidence']:.3f} |" for c in r["curve"]], "",
        f"![final EMA samples]({r['grid']})", ""])


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.main_job", description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    p.add_argument("--timeout", type=_seconds, default=3600.0, help="seconds before the run is stopped")
    p.add_argument("trainer_flags", nargs="*", help="extra trainer flags, after --")
    args = p.parse_args(argv)
    record = run(args.framework, args.trainer_flags, args.timeout)
    stem = RESULTS / f"main_job_{args.framework}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
