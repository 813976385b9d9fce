"""Draw a run's ``metrics.csv`` to one PNG, a panel per group of metrics:
``python -m train.plot RUN_DIR [--out FILE]`` (needs matplotlib, the train extra)."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from train.runs.checkpoint import atomic_open, file_above

# Penalty statistics carry the core's names (valp/..., gp/..., lp/...): listed once per family.
_FAMILIES = ("valp", "gp", "lp")
PANELS = (
    ("losses", ("critic/loss", "gen/loss")),
    ("Wasserstein estimate", ("critic/wdist",)),
    ("Lipschitz violations", tuple(f"{p}/{s}" for p in _FAMILIES for s in (
        "mean_violation", "max_violation", "violating_fraction", "mean_quotient", "max_quotient", "mean_grad_norm"))),
    ("AL multiplier mu", tuple(f"{p}/mu" for p in _FAMILIES)),
    ("penalty", tuple(f"{p}/penalty" for p in _FAMILIES)),
)
QUALITY_PREFIX = "eval/"


class PlotError(ValueError):
    """A run directory, metrics file or --out that cannot be used: one line naming it."""


def read_metrics(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """column -> [(step, value)] for every numeric cell of ``metrics.csv``; PlotError names
    the file (and line) when it is not a metrics table."""
    path = run_dir / "metrics.csv"
    if run_dir.is_file():
        raise PlotError(f"{run_dir} is a file; expected a run directory holding metrics.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (is {run_dir} a run directory?)")
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise PlotError(f"{path} is empty; expected a header line with a 'step' column")
            if "step" not in reader.fieldnames:
                shown = ", ".join(repr(c) for c in reader.fieldnames[:6])
                raise PlotError(f"{path} has no 'step' column (its columns: {shown}"
                                f"{', ...' if len(reader.fieldnames) > 6 else ''}); expected the metrics.csv a run writes")
            for row in reader:
                try:
                    step = float(row["step"])
                except (TypeError, ValueError):
                    raise PlotError(f"{path} line {reader.line_num}: step {row['step']!r} is not a number") from None
                for key, value in row.items():
                    if key in (None, "step") or value in (None, ""):
                        continue  # None: cells beyond the header (a torn or foreign line)
                    try:
                        v = float(value)
                    except (TypeError, ValueError):
                        continue
                    if math.isfinite(v) and math.isfinite(step):
                        series.setdefault(key, []).append((step, v))
    except (csv.Error, UnicodeDecodeError) as e:
        raise PlotError(f"{path} is not a readable CSV file ({type(e).__name__}: {e})") from e
    return series


# matplotlib writes these; any other --out suffix (or none) would be silently rewritten.
OUT_SUFFIXES = (".png", ".pdf", ".svg")


def resolve_out(run_dir: Path, out: Path | None) -> Path:
    """The file ``--out`` names: RUN_DIR/metrics.png by default, DIR/metrics.png for an existing
    directory DIR, else a .png/.pdf/.svg path whose folder can be made; PlotError otherwise."""
    if out is None:
        return run_dir / "metrics.png"
    if out.is_dir():
        return out / "metrics.png"
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise PlotError(f"--out {out}: expected an existing directory or a file ending in {', '.join(OUT_SUFFIXES)}")
    if (blocker := file_above(out)) is not None:
        raise PlotError(f"--out {out}: {blocker} is a file, not a directory")
    return out


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw ``run_dir``'s metrics.csv; returns the file written (see :func:`resolve_out`)."""
    target = resolve_out(run_dir, out)
    series = read_metrics(run_dir)
    panels = [(title, [k for k in keys if k in series]) for title, keys in PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    quality = sorted(k for k in series if k.startswith(QUALITY_PREFIX) and not k.endswith("_std"))
    panels += [(k[len(QUALITY_PREFIX):], [k]) for k in quality]
    if not panels:
        raise PlotError(f"{run_dir / 'metrics.csv'} holds no plottable metrics")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    try:
        for ax, (title, keys) in zip(axes.flat, panels, strict=False):
            for k in keys:
                steps, values = zip(*series[k], strict=True)
                ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, label=k)
            ax.set(title=title, xlabel="generator iteration")
            if len(keys) > 1:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(str(run_dir))
        fig.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: an existing picture is replaced only by a complete one.
        with atomic_open(target, "wb") as f:
            fig.savefig(f, dpi=100, format=target.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run's --out directory (holds metrics.csv)")
    p.add_argument("--out", type=Path, default=None,
                   help="file to write (.png, .pdf or .svg), or an existing directory to write metrics.png into "
                        "(default: RUN_DIR/metrics.png)")
    args = p.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except ImportError as e:
        print(f"error: train.plot needs matplotlib (pip install matplotlib): {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # PlotError is a ValueError; OSError: unreadable or unwritable
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
