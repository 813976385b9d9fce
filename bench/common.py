"""Framework-free helpers: quiet imports, interleaved timing, tables, results files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FRAMEWORKS = ("torch", "tf", "jax")


def quiet_env() -> None:
    """Environment set before any framework import: quiet TF, Keras on TF, POT without TF/JAX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("KERAS_HOME", str(pathlib.Path(tempfile.gettempdir()) / "valr-keras-home"))
    # ``import ot`` otherwise imports every installed framework (slow, noisy).
    for fw in ("TENSORFLOW", "JAX", "CUPY", "PYTORCH"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{fw}", "1")


@dataclass(frozen=True)
class Method:
    """One critic-step variant. kind: none | gp | lp | valp | native (hand-written VALP)."""

    name: str
    kind: str
    fraction: float = 1.0
    n_power: int = 1
    batch: int | None = None  # per side (real and fake); None = the run's batch
    check_finite: bool = True  # valr_core's eager NaN/Inf check of the input (a sync on GPU)

    @property
    def is_valp(self) -> bool:
        return self.kind in ("valp", "native")


SPEED_METHODS = (
    Method("none", "none"),
    Method("gp", "gp"),
    Method("lp", "lp"),
    Method("valp", "valp"),
    Method("valp_half", "valp", fraction=0.5),
    Method("valp_n2", "valp", n_power=2),
)
OVERHEAD_METHODS = (Method("valp", "valp"), Method("valp_native", "native"))
DESCRIPTIONS = {
    "none": "no penalty",
    "gp": "GP (WGAN-GP, double backward)",
    "lp": "LP (one-sided GP)",
    "valp": "VALP full batch (128)",
    "valp_half": "VALP half batch (64 of 128)",
    "valp_n2": "VALP, 2 power iterations",
    "valp_native": "hand-written VALP (no valr_core)",
    "valp_nocheck": "VALP full batch, check_finite=False",
}


def interleaved(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each step, measured round-robin in one process.

    Every step is called ``warmup`` times first (tracing/compiling, allocator warm-up); then
    ``repeats`` rounds call each step once, the starting step rotating between rounds so
    that no method always follows the same one. Each step must synchronise its device
    before returning (the clock stops when it returns).
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of time[method] / time[base] within the same round (drift-robust)."""
    out = {}
    for name, ts in times.items():
        out[name] = statistics.median(t / b for t, b in zip(ts, times[base], strict=True))
    return out


def median(v: Sequence[float]) -> float:
    return statistics.median(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:
            return "nan"
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2 of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return slope, intercept, r2


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_results(path: str | None, markdown: str, payload: dict[str, Any]) -> None:
    """``path`` ending in .json gets the payload, anything else the markdown."""
    if not path:
        return
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json":
        p.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        p.write_text(markdown + "\n")
