"""Critic-step speed of VALP against GP/LP, abstraction overhead, scaling and peak memory.

    python -m bench.speed --framework all --device cpu --repeats 5 --out bench/results/speed_cpu.md

Suites (``--suite``, comma separated, default ``speed``):

* speed: no penalty, GP, LP, VALP full batch, VALP half batch, VALP with 2 power iterations
  and a hand-written native VALP (overhead), interleaved round-robin in one process; each
  reported as the median over rounds of its time divided by the no-penalty step's time in
  the same round. Absolute times are medians too (noisy on a shared machine: the ratios,
  measured interleaved, are what count).
* scaling: step time against the batch size (none/GP/VALP) and against the number of power
  iterations (VALP), with least-squares lines and R^2.
* memory: peak memory of one step per method. GPU: torch ``max_memory_allocated`` above the
  bytes allocated before the step; JAX: XLA's compiled ``memory_analysis`` temp bytes; TF:
  its allocator's ``get_memory_info`` peak above the bytes in use before the step (also on
  CPU). CPU, torch and JAX: the peak resident set size (RSS, sampled every 0.5 ms) during
  two steps above the RSS just before them, in a fresh process per method with glibc forced
  to mmap (and so return) every block above 64 KiB; JAX also gets XLA's temp bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import (
    DESCRIPTIONS,
    FRAMEWORKS,
    SPEED_METHODS,
    Method,
    interleaved,
    linear_fit,
    machine,
    median,
    quiet_env,
    ratios,
    table,
    write_results,
)

SPEED_ORDER = ("none", "gp", "lp", "valp", "valp_native", "valp_half", "valp_n2")
MEMORY_METHODS = ("none", "gp", "lp", "valp", "valp_half", "valp_n2")
CPU_MEMORY_METHODS = ("none", "gp", "valp", "valp_half")


def all_methods() -> dict[str, Method]:
    found = {m.name: m for m in SPEED_METHODS}
    found["valp_native"] = Method("valp_native", "native")
    found["valp_nocheck"] = Method("valp_nocheck", "valp", check_finite=False)
    return found


def _env_for(device: str) -> None:
    quiet_env()
    if device == "gpu":
        # Several frameworks may share the GPU in one process: no preallocation.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


_STEPS: dict[tuple[str, str, int, int, int], Any] = {}


def _steps(framework: str, args: argparse.Namespace) -> Any:
    """One steps object per framework and setting, shared by the suites (JAX keeps compiled steps)."""
    from bench.critic_steps import steps_for

    key = (framework, args.device, args.width, args.batch, args.seed)
    if key not in _STEPS:
        _STEPS[key] = steps_for(framework, device=args.device, width=args.width, batch=args.batch, seed=args.seed)
    return _STEPS[key]


def _pair_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return median([x / y for x, y in zip(times[a], times[b], strict=True)])


# ----------------------------------------------------------------------------- speed
def run_speed(framework: str, args: argparse.Namespace) -> dict[str, Any]:
    methods = all_methods()
    steps = _steps(framework, args)
    order = SPEED_ORDER + (("valp_nocheck",) if args.device == "gpu" else ())
    runs = {name: steps.step(methods[name]) for name in order}
    t0 = time.perf_counter()
    times = interleaved(runs, args.repeats, warmup=args.warmup)
    wall = time.perf_counter() - t0
    r = ratios(times, "none")
    rows = [[name, DESCRIPTIONS[name], 1000 * median(times[name]), r[name]] for name in order]
    summary = {
        "valp_over_gp": _pair_ratio(times, "valp", "gp"),
        "valp_half_over_gp": _pair_ratio(times, "valp_half", "gp"),
        "valp_half_over_valp": _pair_ratio(times, "valp_half", "valp"),
        "valp_n2_over_valp": _pair_ratio(times, "valp_n2", "valp"),
        "overhead_pct": 100 * (_pair_ratio(times, "valp", "valp_native") - 1),
    }
    if "valp_nocheck" in times:
        summary["overhead_nocheck_pct"] = 100 * (_pair_ratio(times, "valp_nocheck", "valp_native") - 1)
    text = table(["method", "what", "median ms", "x no-penalty"], rows)
    text += (
        f"\n\nVALP/GP {summary['valp_over_gp']:.2f}, VALP-half/GP {summary['valp_half_over_gp']:.2f}, "
        f"VALP-half/VALP {summary['valp_half_over_valp']:.2f}, VALP-n2/VALP {summary['valp_n2_over_valp']:.2f}; "
        f"valr_core VALP vs hand-written: {summary['overhead_pct']:+.1f}% "
        f"(per-round ratio medians; {args.repeats} rounds, {wall:.0f} s)"
    )
    if "overhead_nocheck_pct" in summary:
        text += f"; with check_finite=False: {summary['overhead_nocheck_pct']:+.1f}%"
    return {"times_s": times, "ratios": r, "summary": summary, "wall_s": wall, "text": text}


# ----------------------------------------------------------------------------- scaling
def run_scaling(framework: str, args: argparse.Namespace) -> dict[str, Any]:
    steps = _steps(framework, args)
    batches = [int(b) for b in args.batches.split(",")]
    powers = [int(p) for p in args.powers.split(",")]
    runs: dict[str, Any] = {}
    for kind in ("none", "gp", "valp"):
        for b in batches:
            runs[f"{kind}@{b}"] = steps.step(Method(f"{kind}@{b}", kind, batch=b))
    for p in powers:
        runs[f"valp_n{p}"] = steps.step(Method(f"valp_n{p}", "valp", n_power=p))
    t0 = time.perf_counter()
    times = interleaved(runs, args.repeats, warmup=args.warmup)
    wall = time.perf_counter() - t0
    ms = {k: 1000 * median(v) for k, v in times.items()}

    rows = [[b, 2 * b] + [ms[f"{k}@{b}"] for k in ("none", "gp", "valp")] for b in batches]
    fits = {}
    for kind in ("none", "gp", "valp"):
        fits[kind] = linear_fit([2 * b for b in batches], [ms[f"{kind}@{b}"] for b in batches])
    text = "Time (ms) against batch size (per side; VALP regularises all 2b samples, GP b interpolates):\n\n"
    text += table(["batch/side", "samples", "none ms", "GP ms", "VALP ms"], rows)
    text += "\n\nLinear fit over samples: " + "; ".join(
        f"{k}: {fits[k][0]:.2f} ms/sample + {fits[k][1]:.0f} ms, R^2 {fits[k][2]:.3f}" for k in fits
    )
    base = f"none@{args.batch}" if f"none@{args.batch}" in ms else None
    prow = [[p, ms[f"valp_n{p}"], ms[f"valp_n{p}"] / ms[base] if base else float("nan")] for p in powers]
    pfit = linear_fit(powers, [ms[f"valp_n{p}"] for p in powers])
    text += f"\n\nVALP time against power iterations (batch {args.batch}+{args.batch}):\n\n"
    text += table(["power iterations", "VALP ms", "x no-penalty"], prow)
    text += f"\n\nLinear fit: {pfit[0]:.0f} ms per power iteration + {pfit[1]:.0f} ms, R^2 {pfit[2]:.3f} ({args.repeats} rounds, {wall:.0f} s)"
    return {"ms": ms, "batch_fits": fits, "power_fit": pfit, "wall_s": wall, "text": text}


# ----------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(framework: str, method_name: str, args: argparse.Namespace) -> dict[str, float]:
    """In a fresh process: peak RSS during two steps above the RSS just before them."""
    steps = _steps(framework, args)
    run = steps.step(all_methods()[method_name])
    for _ in range(2):  # compile and warm the allocator
        run()
    before = _rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(2):
        run()
    stop.set()
    thread.join()
    return {"rss_peak_mib": (peak[0] - before) / 2**20}


def run_memory(framework: str, args: argparse.Namespace) -> dict[str, Any]:
    methods = all_methods()
    results: dict[str, dict[str, float]] = {}
    names = MEMORY_METHODS if args.device == "gpu" else CPU_MEMORY_METHODS
    if args.device == "gpu" or framework in ("jax", "tf"):
        steps = _steps(framework, args)
        for name in names:
            results[name] = dict(steps.peak_memory(methods[name]))
    # TF's CPU allocator keeps freed memory (RSS does not fall between steps): its own
    # statistics above are the measure there; torch and JAX also get the RSS measure.
    if args.device == "cpu" and framework != "tf":
        for name in names:
            cmd = [sys.executable, "-m", "bench.speed", "--memory-child", f"{framework}:{name}",
                   "--width", str(args.width), "--batch", str(args.batch), "--seed", str(args.seed)]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            results.setdefault(name, {}).update(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = sorted({k for v in results.values() for k in v})
    rows = []
    for name in names:
        row: list[Any] = [name]
        for k in keys:
            row += [results[name].get(k, float("nan")), results[name].get(k, float("nan")) / results["gp"][k]]
        rows.append(row)
    headers = ["method"] + [h for k in keys for h in (f"{k}", f"{k} / GP")]
    return {"mib": results, "text": table(headers, rows)}


# ----------------------------------------------------------------------------- main
SUITES = {"speed": run_speed, "scaling": run_scaling, "memory": run_memory}


def _int_at_least(low: int) -> Any:
    def parse_int(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse_int


def _int_list_at_least(low: int) -> Any:
    """A comma list of integers >= ``low``, kept as the text given (it is echoed in the results)."""

    def parse_list(text: str) -> str:
        parts = [t.strip() for t in text.split(",")]
        try:
            values = [int(t) for t in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of integers >= {low}, got {text!r}") from None
        if any(v < low for v in values):
            raise argparse.ArgumentTypeError(f"every value must be >= {low}, got {text!r}")
        return ",".join(parts)

    return parse_list


def _suites(text: str) -> str:
    names = [t.strip() for t in text.split(",")]
    unknown = [n for n in names if n not in SUITES and n != "all"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown suite(s) {unknown}; expected a comma list of {sorted(SUITES)} or all")
    return ",".join(names)


def _memory_child(text: str) -> str:
    framework, _, method = text.partition(":")
    if framework not in FRAMEWORKS or method not in all_methods():
        raise argparse.ArgumentTypeError(f"expected FRAMEWORK:METHOD, got {text!r}")
    return text


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags; a bad value is an argparse error naming its flag (exit status 2)."""
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", default="all", choices=[*FRAMEWORKS, "all"])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--suite", default="speed", type=_suites, help="comma list of speed, scaling, memory (or all)")
    p.add_argument("--repeats", type=_int_at_least(1), default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=_int_at_least(0), default=1, help="untimed calls of every step first")
    p.add_argument("--width", type=_int_at_least(1), default=128, help="critic channels (the paper's 128)")
    p.add_argument("--batch", type=_int_at_least(1), default=64, help="real (and fake) samples per step")
    p.add_argument("--batches", type=_int_list_at_least(1), default="16,32,64,128", help="scaling: batch sizes per side")
    p.add_argument("--powers", type=_int_list_at_least(0), default="0,1,2,3", help="scaling: power iterations")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--out", action="append", default=[], help="write markdown (.md) or JSON (.json) results here (repeatable)")
    p.add_argument("--memory-child", type=_memory_child, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    _env_for(args.device)
    if args.memory_child:
        framework, name = args.memory_child.split(":")
        print(json.dumps(memory_child(framework, name, args)))
        return {}
    suites = list(SUITES) if "all" in args.suite.split(",") else args.suite.split(",")
    frameworks = FRAMEWORKS if args.framework == "all" else (args.framework,)
    command = "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Command: `{command}`\n\nDevice: {args.device} ({_device_name(args.device)}), "
              f"critic width {args.width}, batch {args.batch} real + {args.batch} fake, float32.")
    print(header, flush=True)
    payload: dict[str, Any] = {"command": command, "args": vars(args), "machine": machine(), "results": {}}
    sections = [header]
    for framework in frameworks:
        for suite in suites:
            result = SUITES[suite](framework, args)
            title = f"### {framework}: {suite}"
            print(f"\n{title}\n\n{result['text']}", flush=True)
            sections.append(f"{title}\n\n{result['text']}")
            payload["results"].setdefault(framework, {})[suite] = {k: v for k, v in result.items() if k != "text"}
    if "speed" in suites and len(frameworks) > 1:
        text = _summary(payload["results"], frameworks)
        print(f"\n### summary (ratio to the no-penalty step)\n\n{text}")
        sections.append(f"### summary (ratio to the no-penalty step)\n\n{text}")
    for path in args.out:
        write_results(path, "\n\n".join(sections), payload)
    return payload


def _summary(results: dict[str, Any], frameworks: tuple[str, ...]) -> str:
    rows = [[name] + [results[fw]["speed"]["ratios"][name] for fw in frameworks] for name in SPEED_ORDER]
    for key, label in (("valp_over_gp", "VALP / GP"), ("valp_half_over_gp", "VALP half / GP"), ("overhead_pct", "valr_core overhead %")):
        rows.append([label] + [results[fw]["speed"]["summary"][key] for fw in frameworks])
    return table(["method", *frameworks], rows)


def _device_name(device: str) -> str:
    if device == "gpu":
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a name for the header only
            return "gpu"
    return f"{os.cpu_count()} CPU cores"


if __name__ == "__main__":
    main()
