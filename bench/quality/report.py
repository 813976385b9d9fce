"""Tables, verdicts, the Markdown report and the figures, all generated from the records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality.cells import CELLS, DESCRIPTIONS, EVAL_SAMPLES, PRESET, REFERENCE
from bench.quality.stats import (
    RESAMPLES,
    Estimate,
    Paired,
    bootstrap_ci,
    bootstrap_columns,
    common_span,
    interpolate,
    paired_comparison,
    time_grid,
)
from bench.quality.store import Plan

REPORT = "quality_digits.md"
CURVES_PNG = "quality_digits.png"
SAMPLES_PNG = "quality_digits_samples.png"
SAMPLES_DIR = "quality_digits_samples"  # the seed's final EMA grid of each cell
METRICS = ("fd_digits", "kid_digits", "classes", "confidence")
LOWER_IS_BETTER = {"fd_digits": True, "kid_digits": True, "classes": False, "confidence": False}
NAMES = {"valp": "VALP", "valp-half": "VALP-half", "gp": "GP", "lp": "LP", "sn": "SN", "wc": "WC",
         "none": "none (no regulariser)"}
MIN_SEEDS = 3  # paired seeds needed before a difference is called
FRAMEWORK_NAMES = {"torch": "torch", "jax": "JAX", "tf": "TF"}
Groups = dict[tuple[str, str], list[dict[str, Any]]]


def _possessive(cell: str) -> str:
    return "the unregularised critic's" if cell == "none" else f"{NAMES.get(cell, cell)}'s"


def groups(records: Sequence[dict[str, Any]], plan: Plan) -> tuple[Groups, Groups]:
    """(completed runs, failed runs) per (framework, cell) of the plan, each sorted by seed."""
    from bench.quality.store import planned_records

    done: Groups = {(fw, c): [] for fw, cells in plan.cells.items() for c in cells}
    failed: Groups = {k: [] for k in done}
    for (fw, cell, _), r in sorted(planned_records(list(records), plan).items()):
        (done if r.get("status") == "completed" else failed)[(fw, cell)].append(r)
    return done, failed


# ----------------------------------------------------------------------------- curves


def final_time(run: dict[str, Any]) -> float:
    return float(run["curve"][-1]["train_s"])


def at_time(run: dict[str, Any], metric: str, t: float) -> float:
    """``metric`` of ``run`` after ``t`` seconds of training (its curve interpolated; NaN outside it)."""
    c = run["curve"]
    return float(interpolate([p["train_s"] for p in c], [p[metric] for p in c], t))


def equal_time(runs: Sequence[dict[str, Any]]) -> float | None:
    """The latest training time every run has reached and been evaluated around: the end of
    the common span of their curves (None when a run's first point is after another's end)."""
    span = common_span([[p["train_s"] for p in r["curve"]] for r in runs])
    return None if span is None else span[1]


# ----------------------------------------------------------------------------- summary


def _estimate(values: Sequence[float], resamples: int) -> Estimate | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return bootstrap_ci(v, resamples=resamples) if v else None


def summarise(records: Sequence[dict[str, Any]], plan: Plan, *, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Equal-iteration and equal-time tables, VALP paired against each other cell, and the verdicts."""
    done, failed = groups(records, plan)
    planned = len(plan.seeds)
    iters = []
    for (fw, cell), runs in done.items():
        row: dict[str, Any] = {"framework": fw, "cell": cell, "n": len(runs), "failed": len(failed[(fw, cell)])}
        for key in (*METRICS, "train_s", "s_per_iteration", "lipschitz"):
            row[key] = _estimate([r.get(key) for r in runs], resamples)
        iters.append(row)
    times: dict[str, dict[str, Any]] = {}
    for fw in plan.cells:
        runs = [r for c in plan.cells[fw] for r in done[(fw, c)]]
        t = equal_time(runs) if runs else None
        rows = []
        for cell in plan.cells[fw]:
            row = {"framework": fw, "cell": cell, "n": len(done[(fw, cell)])}
            for key in METRICS:
                row[key] = None if t is None else _estimate([at_time(r, key, t) for r in done[(fw, cell)]], resamples)
            rows.append(row)
        times[fw] = {"t": t, "rows": rows}
    paired, verdicts = [], []
    for fw, cells in plan.cells.items():
        if REFERENCE not in cells:
            continue
        ref = done[(fw, REFERENCE)]
        for cell in cells:
            if cell == REFERENCE:
                continue
            other = done[(fw, cell)]
            if not ref or not other:
                missing = [c for c, runs in ((REFERENCE, ref), (cell, other)) if not runs]
                verdicts.append(f"{FRAMEWORK_NAMES.get(fw, fw)}: no finished {' or '.join(NAMES[c] for c in missing)} "
                                f"run yet, so VALP against {NAMES[cell]} is not compared.")
                continue
            t = equal_time(ref + other)
            for at in ("iterations", "time"):
                if at == "time" and t is None:
                    continue
                row = {"framework": fw, "baseline": cell, "at": at, "t": t}
                for key in ("fd_digits", "kid_digits"):
                    if at == "iterations":
                        a, b = ({r["seed"]: r[key] for r in runs} for runs in (ref, other))
                    else:
                        a, b = ({r["seed"]: at_time(r, key, t) for r in runs} for runs in (ref, other))  # type: ignore[arg-type]
                    row[key] = paired_comparison(a, b, lower_is_better=True, resamples=resamples)
                paired.append(row)
                verdicts.append(verdict(row, plan, planned))
    return {"iterations": iters, "time": times, "paired": paired, "verdicts": verdicts,
            "overall": overall(paired), "notes": notes(done, failed, plan)}


def _num(x: float, ref: float | None = None) -> str:
    """Decimals by the magnitude of ``ref`` (default ``x``): 3 significant digits or more."""
    r = abs(ref if ref is not None else x)
    if not math.isfinite(x):
        return "n/a"
    digits = 0 if r >= 100 else 1 if r >= 10 else 2 if r >= 1 else 3
    return f"{x:.{digits}f}"


def _diff_text(p: Paired) -> str:
    d = p.diff
    scale = max(abs(d.lo), abs(d.hi), abs(d.mean))
    return f"paired difference {_num(d.mean, scale)} [95% CI {_num(d.lo, scale)}, {_num(d.hi, scale)}]"


def conclusion(p: Paired, cell: str) -> str:
    """What the paired FD-digits difference supports, in words. Below MIN_SEEDS a percentile
    bootstrap interval is little more than the range of the differences: no verdict."""
    if p.n < MIN_SEEDS:
        return f"{_count_words(p.n)} cannot support a difference"
    if p.diff.hi < 0:
        return "VALP is better (lower FD-digits)"
    if p.diff.lo > 0:
        return f"{NAMES[cell]} is better (lower FD-digits)"
    return "the CI includes 0: no difference is supported"


def _count_words(n: int) -> str:
    return {1: "one seed", 2: "two seeds"}.get(n, f"{n} seeds")


def verdict(row: dict[str, Any], plan: Plan, planned: int) -> str:
    fw, cell, p = row["framework"], row["baseline"], row["fd_digits"]
    where = (f"{plan.iterations} iterations" if row["at"] == "iterations"
             else f"equal wall-clock ({row['t']:.0f} s of training each, curves interpolated)")
    head = f"{FRAMEWORK_NAMES.get(fw, fw)}, {where}: "
    if p.n == 0:
        return head + f"no seed has finished both VALP and {NAMES[cell]}."
    if p.n == 1:
        return (head + f"on the one seed both have, VALP's FD-digits minus {_possessive(cell)} is "
                f"{_num(p.diff.mean)}; one seed cannot support a difference ({planned} planned).")
    other = [f"higher on {p.losses}"] + ([f"equal on {p.ties}"] if p.ties else [])
    fewer = f" (only {p.n} of {planned} planned seeds)" if p.n < planned else ""
    return (head + f"VALP's FD-digits is lower than {_possessive(cell)} on {p.wins}/{p.n} seeds "
            f"({', '.join(other)}), {_diff_text(p)}{fewer}: {conclusion(p, cell)}.")


def overall(paired: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per framework and comparison point: how many baselines VALP beats, loses to,
    or cannot be told apart from."""
    out = []
    for fw in dict.fromkeys(r["framework"] for r in paired):
        for at in ("iterations", "time"):
            rows = [r for r in paired if r["framework"] == fw and r["at"] == at and r["fd_digits"].n >= MIN_SEEDS]
            if not rows:
                continue
            better = [NAMES[r["baseline"]] for r in rows if r["fd_digits"].diff.hi < 0]
            worse = [NAMES[r["baseline"]] for r in rows if r["fd_digits"].diff.lo > 0]
            same = [NAMES[r["baseline"]] for r in rows if NAMES[r["baseline"]] not in better + worse]
            when = "at equal iterations" if at == "iterations" else "at equal wall-clock"
            parts = [f"better than {', '.join(better)}" if better else "",
                     f"worse than {', '.join(worse)}" if worse else "",
                     f"not distinguishable from {', '.join(same)}" if same else ""]
            out.append(f"{FRAMEWORK_NAMES.get(fw, fw)} {when}, FD-digits paired over seeds against "
                       f"{len(rows)} other cell{'s' if len(rows) > 1 else ''}: VALP is "
                       + "; ".join(p for p in parts if p) + ".")
    return out


def notes(done: Groups, failed: Groups, plan: Plan) -> list[str]:
    out = []
    planned = len(plan.seeds)
    for (fw, cell), runs in done.items():
        bad = failed[(fw, cell)]
        if len(runs) < planned:
            what = f"{len(runs)} of {planned} planned seeds finished"
            if bad:
                what += f"; {len(bad)} failed ({bad[0].get('error', '?')})"
            out.append(f"{FRAMEWORK_NAMES.get(fw, fw)} {cell}: {what}" +
                       ("; its statistics are over fewer seeds than planned." if runs else "; no statistics."))
    return out


# ----------------------------------------------------------------------------- markdown


def _ci(e: Estimate | None, scale: float = 1.0) -> str:
    if e is None:
        return "n/a"
    m, lo, hi = e.mean * scale, e.lo * scale, e.hi * scale
    ref = max(abs(m), abs(lo), abs(hi))
    return f"{_num(m, ref)} [{_num(lo, ref)}, {_num(hi, ref)}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(r) + " |" for r in rows]]


def markdown(summary: dict[str, Any], plan: Plan, data: dict[str, Any], command: str) -> str:
    from bench.quality.store import FILE_NAME

    meta = data.get("meta", {})
    trained = list(dict.fromkeys(c["command"] for c in meta.get("commands", []) if "--report-only" not in c["command"]))
    machines = list(dict.fromkeys(c.get("machine", "") for c in meta.get("commands", []) if c.get("machine")))
    n_records = sum(r["n"] + r["failed"] for r in summary["iterations"])
    run_h = sum(float(r.get("wall_s") or 0.0) for r in data["records"]) / 3600
    workers = int(meta.get("workers") or 1)
    planned = len(plan.seeds) * sum(len(c) for c in plan.cells.values())
    seeds = f"{plan.seeds[0]}-{plan.seeds[-1]}" if plan.seeds == list(range(plan.seeds[0], plan.seeds[-1] + 1)) \
        else ", ".join(map(str, plan.seeds))
    lines = [
        f"Generated by `{command}` from the {n_records} of {planned} planned runs recorded in "
        f"[`{FILE_NAME}`]({FILE_NAME}) (training: {', '.join(f'`{c}`' for c in trained) or 'none yet'}).",
        "",
        "# Quality study on digits: VALP against other Lipschitz regularisers",
        "",
        f"Every run is the trainers' `{PRESET}` preset (`python -m train.<framework>_wgan --preset {PRESET}`: the "
        f"small DCGAN on scikit-learn's digits) for {plan.iterations} generator iterations; only the regulariser "
        f"changes. Seeds {seeds} are paired: a seed gives every cell the same initial weights, data order and "
        "latents (`train.seeds`). Every "
        f"{plan.eval_every} iterations and at the end, FD-digits, KID-digits, classes covered (of 10) and the "
        f"classifier's confidence of {EVAL_SAMPLES} EMA samples (`train.evaluation.digits`; lower FD/KID is better). "
        "Training seconds count iterations only, measured with the study's runs side by side "
        f"({meta.get('workers', '?')} at a time, one thread each; {', '.join(machines) or 'machine not recorded'}); "
        f"the runs took {run_h:.1f} h in all (sum of their wall-clock; about {run_h / workers:.1f} h at "
        f"{workers} at a time). Intervals: 95% percentile bootstrap over seeds "
        f"({RESAMPLES:,} resamples, fixed RNG); with few seeds they are coarse and tend to be narrow.",
        "",
        "Cells: " + "; ".join(f"`{c}` {DESCRIPTIONS[c]}" for c in CELLS) + ".",
        "",
        "## Verdict",
        "",
        *[f"- {v}" for v in summary["overall"]],
        *[f"- {v}" for v in summary["verdicts"]],
        *[f"- {n}" for n in summary["notes"]],
        *[f"- {f['framework']} {f['penalty']}: not run: {f['error']}" for f in data.get("failures", [])],
        "",
        f"## Equal iterations ({plan.iterations})",
        "",
        *_table(["framework", "cell", "seeds", "FD-digits", "KID-digits", "classes", "confidence", "train s",
                 "s / iteration", "Lipschitz on pairs"],
                [[FRAMEWORK_NAMES.get(r["framework"], r["framework"]), r["cell"], f"{r['n']}/{len(plan.seeds)}",
                  _ci(r["fd_digits"]), _ci(r["kid_digits"]), _ci(r["classes"]), _ci(r["confidence"]),
                  _ci(r["train_s"]), _ci(r["s_per_iteration"]), _ci(r["lipschitz"])]
                 for r in summary["iterations"]]),
        "",
        "## Equal wall-clock",
        "",
        "Each run's curve read at the same training time: the latest time every run of the framework reached "
        "(the fastest run's end), linearly interpolated between evaluations.",
        "",
    ]
    for fw, block in summary["time"].items():
        if block["t"] is None:
            lines += [f"{FRAMEWORK_NAMES.get(fw, fw)}: no common training time yet.", ""]
            continue
        lines += [f"{FRAMEWORK_NAMES.get(fw, fw)}, at {block['t']:.0f} s of training:", "",
                  *_table(["cell", "seeds", "FD-digits", "KID-digits", "classes", "confidence"],
                          [[r["cell"], str(r["n"]), _ci(r["fd_digits"]), _ci(r["kid_digits"]), _ci(r["classes"]),
                            _ci(r["confidence"])] for r in block["rows"]]), ""]
    lines += ["## VALP paired against each cell",
              "",
              "Per seed, VALP minus the other cell (negative: VALP lower, i.e. better); at equal wall-clock both "
              "cells are read at the latest time all their runs reached.",
              "",
              *_table(["framework", "against", "at", "seeds", "VALP lower FD on", "FD-digits difference [95% CI]",
                       "KID-digits difference [95% CI]", "conclusion"],
                      [[FRAMEWORK_NAMES.get(r["framework"], r["framework"]), r["baseline"],
                        f"{plan.iterations} it" if r["at"] == "iterations" else f"{r['t']:.0f} s",
                        str(r["fd_digits"].n), f"{r['fd_digits'].wins}/{r['fd_digits'].n}",
                        _ci(r["fd_digits"].diff) if r["fd_digits"].n else "n/a",
                        _ci(r["kid_digits"].diff) if r["kid_digits"].n else "n/a",
                        conclusion(r["fd_digits"], r["baseline"]) if r["fd_digits"].n else "n/a"]
                       for r in summary["paired"]]),
              "",
              "## Figures",
              "",
              f"![FD-digits against iterations and training seconds, mean over seeds with 95% CI bands]({CURVES_PNG})",
              "",
              f"![The final EMA samples of seed {plan.seeds[0]} of each cell]({SAMPLES_PNG})",
              ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def plot_curves(summary: dict[str, Any], records: Sequence[dict[str, Any]], plan: Plan, path: Path,
                resamples: int = RESAMPLES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    done, _ = groups(records, plan)
    frameworks = [fw for fw in plan.cells if any(done[(fw, c)] for c in plan.cells[fw])] or list(plan.cells)
    fig, axes = plt.subplots(len(frameworks), 2, figsize=(12, 4.2 * len(frameworks)), squeeze=False)
    colours = dict(zip(CELLS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for row, fw in zip(axes, frameworks, strict=True):
        for cell in plan.cells[fw]:
            runs = done[(fw, cell)]
            if not runs:
                continue
            label = f"{cell} ({len(runs)} seeds)"
            # Against iterations: the evaluation points all runs share.
            its = sorted(set.intersection(*({p["iteration"] for p in r["curve"]} for r in runs)))
            fd = np.array([[next(p["fd_digits"] for p in r["curve"] if p["iteration"] == i) for i in its] for r in runs])
            mean, lo, hi = bootstrap_columns(fd, resamples=resamples)
            row[0].plot(its, mean, color=colours[cell], label=label)
            row[0].fill_between(its, lo, hi, color=colours[cell], alpha=0.2)
            # Against seconds: each run interpolated onto the times all of this cell's runs cover.
            grid = time_grid([[p["train_s"] for p in r["curve"]] for r in runs])
            if len(grid):
                fd = np.array([[at_time(r, "fd_digits", t) for t in grid] for r in runs])
                mean, lo, hi = bootstrap_columns(fd, resamples=resamples)
                row[1].plot(grid, mean, color=colours[cell], label=label)
                row[1].fill_between(grid, lo, hi, color=colours[cell], alpha=0.2)
        t = summary["time"].get(fw, {}).get("t")
        if t is not None:
            row[1].axvline(t, color="grey", linestyle="--", linewidth=1, label=f"equal wall-clock ({t:.0f} s)")
        name = FRAMEWORK_NAMES.get(fw, fw)
        row[0].set(title=f"{name}: FD-digits against iterations", xlabel="generator iteration", ylabel="FD-digits",
                   yscale="log")
        row[1].set(title=f"{name}: FD-digits against training seconds", xlabel="training seconds (iterations only)",
                   ylabel="FD-digits", yscale="log")
        for ax in row:
            ax.grid(alpha=0.3)
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(FuncFormatter(lambda v, _: f"{v:g}"))
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle(f"{PRESET} preset, {plan.iterations} iterations: mean over seeds, 95% bootstrap CI bands")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(records: Sequence[dict[str, Any]], plan: Plan, samples_dir: Path, path: Path) -> bool:
    """The final EMA sample grid of the first seed of every cell, side by side; False if none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, _ = groups(records, plan)
    seed = plan.seeds[0]
    panels = {fw: [(c, samples_dir / r["samples_png"]) for c in plan.cells[fw] for r in done[(fw, c)]
                   if r["seed"] == seed and r.get("samples_png") and (samples_dir / r["samples_png"]).is_file()]
              for fw in plan.cells}
    panels = {fw: p for fw, p in panels.items() if p}
    if not panels:
        return False
    cols = max(len(p) for p in panels.values())
    fig, axes = plt.subplots(len(panels), cols, figsize=(2.6 * cols, 2.9 * len(panels)), squeeze=False)
    for row, (fw, items) in zip(axes, panels.items(), strict=True):
        for ax in row:
            ax.axis("off")
        for ax, (cell, png) in zip(row, items, strict=False):
            ax.imshow(plt.imread(png))
            ax.set_title(f"{FRAMEWORK_NAMES.get(fw, fw)} {cell}", fontsize=10)
    fig.suptitle(f"final EMA samples, seed {seed}, {plan.iterations} iterations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# The README's quality section lies between these markers; the report rewrites it.
README_BEGIN = "<!-- quality: generated by `python -m bench.quality --report-only` from quality_digits.json -->"
README_END = "<!-- quality: end -->"


def timing_spread(records: Sequence[dict[str, Any]]) -> float:
    """The largest ratio of seconds per iteration between two seeds of one cell: 1 on a quiet
    machine, more when other load slowed some runs (which blurs the equal-time comparison)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.get("status") == "completed" and r.get("s_per_iteration"):
            cells.setdefault((r["framework"], r["penalty"]), []).append(float(r["s_per_iteration"]))
    return max((max(v) / min(v) for v in cells.values()), default=1.0)


def readme_section(summary: dict[str, Any], plan: Plan, results: str, spread: float = 1.0) -> str:
    """The README's quality section: VALP paired against each baseline per seed (the headline
    table), the overall verdicts and the curves; ``results``: the results folder from the README."""
    rows = [[FRAMEWORK_NAMES.get(r["framework"], r["framework"]), NAMES[r["baseline"]],
             f"{plan.iterations} iterations" if r["at"] == "iterations" else f"{r['t']:.0f} s of training",
             f"{r['fd_digits'].wins}/{r['fd_digits'].n}", _ci(r["fd_digits"].diff), _ci(r["kid_digits"].diff),
             conclusion(r["fd_digits"], r["baseline"])]
            for r in summary["paired"] if r["fd_digits"].n]
    finals = {(r["framework"], r["cell"]): r["fd_digits"] for r in summary["iterations"]}
    means = "; ".join(f"{FRAMEWORK_NAMES.get(fw, fw)} " + ", ".join(
        f"{NAMES[c].split(' ')[0]} {_ci(finals[(fw, c)])}" for c in cells if finals.get((fw, c)))
        for fw, cells in plan.cells.items())
    return "\n".join([
        README_BEGIN, "",
        f"The `digits` preset with only the regulariser changed, {plan.iterations} iterations, {len(plan.seeds)} "
        "paired seeds a cell (same initial weights, data order and latents). FD-digits of the final EMA samples, "
        "mean [95% bootstrap CI]: "
        f"{means}. Per seed, VALP minus each baseline (negative: VALP better), at equal iterations and at "
        "equal training time (curves interpolated; the cheaper methods get more iterations there):", "",
        *_table(["framework", "VALP against", "at", "VALP lower on", "FD-digits difference [95% CI]",
                 "KID-digits difference [95% CI]", "conclusion"], rows), "",
        *[f"- {v}" for v in summary["overall"]], "",
        *([f"Seconds per iteration of one cell varied up to {spread:.1f}-fold between its seeds (other load on "
           "the machine during the study), so the equal-time rows are indicative; the equal-iteration rows do "
           "not depend on timing.", ""] if spread > 1.25 else []),
        f"![FD-digits against iterations and training seconds]({results}/{CURVES_PNG})", "",
        f"Report: [`{REPORT}`]({results}/{REPORT}); records: [`quality_digits.json`]({results}/quality_digits.json); "
        f"samples: [`{SAMPLES_PNG}`]({results}/{SAMPLES_PNG}).", "",
        README_END])


def update_readme(readme: Path, section: str) -> bool:
    """Replace the marked quality section of ``readme``; False when it has no markers."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return False
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(text[:begin] + section + text[end + len(README_END):], encoding="utf-8")
    tmp.replace(readme)
    return True


def write(data: dict[str, Any], plan: Plan, out: Path, command: str, *, figures: bool = True,
          resamples: int = RESAMPLES, readme: Path | None = None) -> str:
    """The Markdown report (and, with ``figures``, the PNGs) under ``out``, and the quality
    section of ``readme`` (linking ``out``); returns the Markdown."""
    summary = summarise(data["records"], plan, resamples=resamples)
    text = markdown(summary, plan, data, command)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{REPORT}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / REPORT)
    if readme is not None:
        rel = out.resolve().relative_to(readme.resolve().parent).as_posix()
        update_readme(readme, readme_section(summary, plan, rel, timing_spread(data["records"])))
    if figures:
        plot_curves(summary, data["records"], plan, out / CURVES_PNG, resamples=resamples)
        plot_samples(data["records"], plan, out / SAMPLES_DIR, out / SAMPLES_PNG)
    return text
