"""Draw a run's ``metrics.csv`` to one PNG: ``python -m train.plot RUN_DIR [--out FILE]``.

Panels (those with data): losses, the critic's Wasserstein estimate, Lipschitz violations,
the AL multiplier mu, and the quality metrics (FD-digits / KID / classes on digits, IS / FID /
KID on CIFAR-10). Writes ``RUN_DIR/metrics.png`` by default. Needs matplotlib (train extra).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

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


def read_metrics(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """column -> [(step, value)] for every numeric cell of ``metrics.csv``."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (is {run_dir} a run directory?)")
    series: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = float(row["step"])
            for key, value in row.items():
                if key == "step" or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    series.setdefault(key, []).append((step, v))
    return series


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    panels = [(title, [k for k in keys if k in series]) for title, keys in PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    quality = sorted(k for k in series if k.startswith(QUALITY_PREFIX) and not k.endswith("_std"))
    panels += [(k[len(QUALITY_PREFIX):], [k]) for k in quality]
    if not panels:
        raise ValueError(f"{run_dir / 'metrics.csv'} holds no plottable metrics")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
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
    out = out or run_dir / "metrics.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run's --out directory (holds metrics.csv)")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/metrics.png)")
    args = p.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
