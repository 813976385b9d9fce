"""Seconds per training iteration (n_critic critic steps + 1 generator step) of the reference
trainers, per framework and penalty, from each run's own metrics log.

    python -m bench.trainer_timing --frameworks torch,tf,jax --penalties valp,valp-half,gp,lp,none \
        --preset smoke --steps 30 --rounds 2 --out bench/results/trainers_cpu.md

Each run is a subprocess of ``python -m train.<fw>_wgan`` on the bundled ``digits`` data (the
timing does not depend on the images) with exactly the flags its row shows; the figure is the
last logged ``time/sec_per_it``, i.e. after compilation and warm-up. With ``--rounds R`` every
row runs R times, the rows of a framework in rotating order, and the fastest run counts (the
least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Each row's own flags on top of the preset: "valp" is the preset's VALP (paper: both batches).
PENALTY_FLAGS = {
    "valp": ["--penalty", "valp", "--valp-fraction", "1.0"],
    "valp-half": ["--penalty", "valp", "--valp-fraction", "0.5"],
    "gp": ["--penalty", "gp"],
    "lp": ["--penalty", "lp"],
    "none": ["--penalty", "none"],
}


def run_one(framework: str, penalty: str, preset: str, steps: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", f"train.{framework}_wgan", "--preset", preset, "--data", "digits",
               "--steps", str(steps), "--log-every", str(max(1, steps // 4)), "--no-progress",
               "--no-tensorboard", "--sample-every", str(10 * steps), "--checkpoint-every", str(10 * steps),
               "--out", out, *PENALTY_FLAGS[penalty]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (Path(out) / "metrics.jsonl").exists() else []
    if proc.returncode != 0 or not rows:
        return {"framework": framework, "penalty": penalty, "error": (proc.stderr or proc.stdout)[-400:]}
    return {"framework": framework, "penalty": penalty, "sec_per_it": rows[-1]["time/sec_per_it"], "wall_s": wall, "steps": rows[-1]["step"]}


def fastest(framework: str, penalties: list[str], preset: str, steps: int, timeout: float,
            rounds: int) -> list[dict]:
    """Every row ``rounds`` times in rotating order; per row the fastest successful run."""
    runs: dict[str, list[dict]] = {pen: [] for pen in penalties}
    for k in range(rounds):
        shift = k % len(penalties)
        for pen in penalties[shift:] + penalties[:shift]:
            runs[pen].append(run_one(framework, pen, preset, steps, timeout))
    best = []
    for pen in penalties:
        ok = [r for r in runs[pen] if "error" not in r]
        best.append(min(ok, key=lambda r: r["sec_per_it"]) if ok else runs[pen][-1])
    return best


FRAMEWORKS = ("torch", "tf", "jax")


def _choices_list(allowed: tuple[str, ...]) -> Any:
    """A comma list of names from ``allowed``, as a list; an unknown name is an argparse error."""

    def parse_list(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",")]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown name(s) {unknown}; expected a comma list of {list(allowed)}")
        return names

    return parse_list


def _number_at_least(kind: type, low: float) -> Any:
    def parse_number(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {text!r}") from None
        if not value >= low:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse_number


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trainer_timing", description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", type=_choices_list(FRAMEWORKS), default="torch,tf,jax")
    p.add_argument("--penalties", type=_choices_list(tuple(PENALTY_FLAGS)), default="valp,valp-half,gp")
    p.add_argument("--preset", default="paper", choices=["paper", "smoke"])
    p.add_argument("--steps", type=_number_at_least(int, 1), default=40)
    p.add_argument("--rounds", type=_number_at_least(int, 1), default=1, help="runs per row; the fastest counts")
    p.add_argument("--timeout", type=_number_at_least(float, 1.0), default=300.0, help="seconds per run")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.out is not None and args.out.is_dir():
        p.error(f"argument --out: {args.out} is a directory; expected a markdown file")
    penalties = list(args.penalties)
    lines = [f"| framework | penalty | flags (preset {args.preset}) | sec / iteration | vs valp "
             f"| wall s ({args.steps} its, incl. start-up) |", "|---|---|---|---|---|---|"]
    for fw in args.frameworks:
        results = fastest(fw, penalties, args.preset, args.steps, args.timeout, args.rounds)
        base = next((r["sec_per_it"] for r in results if r["penalty"] == "valp" and "sec_per_it" in r), None)
        for r in results:
            flags = "`" + " ".join(PENALTY_FLAGS[r["penalty"]]) + "`"
            if "error" in r:
                last = r["error"].splitlines()[-1] if r["error"] else "?"
                lines.append(f"| {fw} | {r['penalty']} | {flags} | failed: {last} | | |")
                continue
            ratio = f"{r['sec_per_it'] / base:.2f}" if base else "-"
            lines.append(f"| {fw} | {r['penalty']} | {flags} | {r['sec_per_it']:.4f} | {ratio} | {r['wall_s']:.0f} |")
        print("\n".join(lines), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
