"""``python -m bench.quality``: train what the plan still lacks, then write the report."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.quality import report
from bench.quality.cells import (
    CELLS,
    DEFAULT_CELLS,
    DEFAULT_SEEDS,
    CellError,
    cell_config,
    default_iterations,
)
from bench.quality.stats import RESAMPLES
from bench.quality.store import Plan, StudyBusy, StudyFile, planned_records, run_key

RESULTS = Path(__file__).resolve().parents[1] / "results"
README = RESULTS.parents[1] / "README.md"  # its quality section is generated (report.readme_section)


def _readme(out: Path) -> Path | None:
    """The README whose quality section the report rewrites: only for the project's own results."""
    return README if out.resolve() == RESULTS else None
DEFAULT_EVAL_EVERY = 50


def _list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _seeds(text: str) -> list[int]:
    """``5``: seeds 0-4; ``0,3,7``: those seeds."""
    try:
        if "," in text:
            seeds = [int(s) for s in _list(text)]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma list of seeds, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected at least one distinct seed >= 0, got {text!r}")
    return seeds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description="VALP against GP, LP, spectral normalisation, weight clipping and no regulariser on the "
                    "trainers' digits preset, several paired seeds per cell, compared at equal iterations and at "
                    "equal wall-clock with bootstrap CIs. Resumable: finished runs (records in quality_digits.json) "
                    "are never rerun; with no flags it continues the stored plan (the default study the first time).")
    p.add_argument("--iterations", "--steps", dest="iterations", type=_positive, default=None,
                   help="generator iterations per run (default: the digits preset's, 800)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help=f"a count (seeds 0..N-1) or a comma list (default: {DEFAULT_SEEDS})")
    p.add_argument("--frameworks", type=_list, default=None,
                   help=f"comma list of torch, jax, tf (default: {', '.join(DEFAULT_CELLS)})")
    p.add_argument("--cells", "--penalties", dest="cells", type=_list, default=None,
                   help=f"comma list of {', '.join(CELLS)} for every framework (default: torch all, jax valp,gp)")
    p.add_argument("--eval-every", type=_positive, default=None,
                   help=f"iterations between curve points (default: {DEFAULT_EVAL_EVERY})")
    p.add_argument("--workers", type=_positive, default=2, help="runs at a time, one thread each (default: 2)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="directory of quality_digits.json, .md and the figures (default: bench/results)")
    p.add_argument("--report-only", action="store_true", help="regenerate the report and figures; train nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the runs recorded as failed (e.g. diverged) instead of reporting them")
    p.add_argument("--resamples", type=_positive, default=RESAMPLES, help=argparse.SUPPRESS)
    p.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)  # records always merge now
    return p


def resolve_plan(args: argparse.Namespace, stored: dict[str, Any] | None) -> Plan:
    """The stored plan (or the default study), with what the flags change."""
    base = Plan.from_dict(stored) if stored else Plan({fw: list(c) for fw, c in DEFAULT_CELLS.items()},
                                                      list(range(DEFAULT_SEEDS)), default_iterations(),
                                                      DEFAULT_EVAL_EVERY)
    cells = base.cells
    if args.frameworks is not None or args.cells is not None:
        frameworks = args.frameworks if args.frameworks is not None else list(cells)
        cells = {fw: list(args.cells) if args.cells is not None else list(cells.get(fw, DEFAULT_CELLS.get(fw, CELLS)))
                 for fw in frameworks}
    return Plan(cells, args.seeds if args.seeds is not None else base.seeds,
                args.iterations if args.iterations is not None else base.iterations,
                args.eval_every if args.eval_every is not None else base.eval_every)


def _check(p: argparse.ArgumentParser, plan: Plan) -> None:
    from train.contract import FRAMEWORKS

    for fw, cells in plan.cells.items():
        if fw not in FRAMEWORKS:
            p.error(f"--frameworks: {fw!r} is not one of {', '.join(FRAMEWORKS)}")
        unknown = [c for c in cells if c not in CELLS]
        if unknown:
            p.error(f"--cells: unknown {', '.join(unknown)} (one of {', '.join(CELLS)})")


def _line(r: dict[str, Any]) -> str:
    head = f"{r['framework']:5s} {r['penalty']:9s} seed {r['seed']}"
    if r.get("status") != "completed":
        return f"{head}: failed: {r.get('error')}"
    return (f"{head}: FD-digits {r['fd_digits']:8.3f}  KID {r['kid_digits']:.4f}  classes {r['classes']:.0f}  "
            f"confidence {r['confidence']:.2f}  {r['train_s']:.0f} s ({r['s_per_iteration']:.2f} s/it)")


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None, *, run_task: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """``run_task`` (tests): run the tasks in this process with it instead of worker processes."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    command = shlex.join(["python", "-m", "bench.quality", *args_list])
    study = StudyFile(args.out)
    try:
        data = study.load()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = resolve_plan(args, data["plan"])
    _check(parser, plan)
    if args.report_only:
        if not data["records"]:
            print(f"error: no records in {study.path}; run python -m bench.quality first", file=sys.stderr)
            return 2
        print(report.write(data, plan, args.out, command, resamples=args.resamples, readme=_readme(args.out)))
        return 0
    try:
        with study.locked():
            return _train(args, plan, study, command, run_task)
    except StudyBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, plan: Plan, study: StudyFile, command: str,
           run_task: Callable[[dict[str, Any]], dict[str, Any]] | None) -> int:
    from tqdm import tqdm

    data = study.load()  # again, now that no other study can write it
    started = time.monotonic()
    if args.retry_failed:
        data["records"] = [r for r in data["records"] if not (plan.matches(r) and r.get("status") != "completed")]
    data["plan"] = plan.to_dict()
    data["failures"] = []
    broken: dict[tuple[str, str], str] = {}
    for fw, cells in plan.cells.items():  # settings the trainer config cannot take: one line per cell
        for cell in cells:
            try:
                cell_config(fw, cell, plan.seeds[0], plan.iterations, plan.eval_every, "unused")
            except CellError as e:
                broken[(fw, cell)] = str(e)
    for (fw, cell), error in broken.items():
        print(f"{fw} {cell}: not run: {error}", file=sys.stderr)
        data["failures"].append({"framework": fw, "penalty": cell, "error": error})
    done = planned_records(data["records"], plan)
    tasks = [{"framework": fw, "penalty": cell, "seed": seed, "iterations": plan.iterations,
              "eval_every": plan.eval_every,
              "samples_dir": str(args.out / report.SAMPLES_DIR) if seed == plan.seeds[0] else None}
             for fw, cell, seed in plan.tasks() if (fw, cell, seed) not in done and (fw, cell) not in broken]
    if tasks:  # the commands that trained, for the report's header
        data["meta"]["workers"] = args.workers
        data["meta"]["commands"].append({
            "command": command, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"})
    study.save(data)
    print(f"bench.quality: {len(done)} of {len(plan.tasks())} planned runs recorded in {study.path}; "
          f"{len(tasks)} to run ({plan.iterations} iterations, seeds {plan.seeds}, {args.workers} at a time)",
          file=sys.stderr)
    bar = tqdm(total=len(plan.tasks()), initial=len(done), desc="bench.quality", unit="run", file=sys.stderr,
               dynamic_ncols=True)

    def on_result(task: dict[str, Any], result: dict[str, Any]) -> None:
        if result["ok"]:
            record = result["record"]
            data["records"] = [r for r in data["records"] if not (plan.matches(r) and run_key(r) == run_key(record))]
            data["records"].append(record)
            study.save(data)
            bar.write(_line(record), file=sys.stderr)
            bar.update(1)
            try:  # the Markdown stays current while the study runs (figures at the end)
                report.write(data, plan, args.out, command, figures=False, resamples=args.resamples)
            except Exception as e:  # noqa: BLE001 - a report bug must not stop the training
                bar.write(f"warning: report not updated: {type(e).__name__}: {e}", file=sys.stderr)
        elif result["stage"] == "setup":
            key = (task["framework"], task["penalty"])
            if key not in broken:
                broken[key] = result["error"]
                data["failures"].append({"framework": key[0], "penalty": key[1], "error": result["error"]})
                study.save(data)
                bar.write(f"{key[0]} {key[1]}: not run: {result['error']}", file=sys.stderr)
        else:
            bar.write(f"{task['framework']} {task['penalty']} seed {task['seed']}: {result['stage']}: "
                      f"{result['error']} (not recorded; runs again next time)", file=sys.stderr)

    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    interrupted = False
    try:
        from bench.quality.runner import execute

        execute(tasks, args.workers, on_result, run_task=run_task,
                should_run=lambda t: (t["framework"], t["penalty"]) not in broken)
    except KeyboardInterrupt:
        interrupted = True
        bar.write("bench.quality: stopped; python -m bench.quality continues where it left off", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        data["meta"]["study_s"] = float(data["meta"].get("study_s", 0.0)) + time.monotonic() - started
        study.save(data)
    if data["records"]:
        print(report.write(data, plan, args.out, command, resamples=args.resamples, readme=_readme(args.out)))
    return 130 if interrupted else 0
