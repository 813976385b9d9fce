"""Does VALP train a better GAN than GP? The small-scale test, on 2 CPU cores: WGANs on the
bundled digits (the ``digits`` preset) with each Lipschitz regulariser, several seeds, equal
iterations, scored offline by ``train.evaluation.digits`` (FD-digits, KID, classes covered).

    python -m bench.quality                      # torch and JAX, 3 seeds, 200 iterations each
    python -m bench.quality --frameworks torch --seeds 0 --steps 20 --out /tmp/q   # a quick look

Penalties: ``valp`` (augmented Lagrangian, full batch), ``valp-half`` (``--valp-fraction 0.5``),
``gp``, ``lp`` (the paper's fixed-weight modes), ``none``, and ``wc`` (no penalty, weight
clipping at 0.01, the original WGAN). Every run is the same preset and schedule; only the
regulariser changes. Runs execute in ``--workers`` processes (one thread each), so their
seconds include the same contention. Per run: the final FD-digits / KID / classes of 2000 EMA
samples, the critic's last logged Wasserstein estimate, a Lipschitz estimate of the critic on
sample pairs (the largest |f(x) - f(y)| / ||x - y||_2 over all pairs of 256 real and 256
generated images), and the training seconds (iterations only, ``time/train_s``). Writes
``quality_cpu.{json,md,png}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PENALTIES = {
    "valp": {"penalty": "valp"},
    "valp-half": {"penalty": "valp", "fraction": 0.5},
    "gp": {"penalty": "gp"},
    "lp": {"penalty": "lp"},
    "none": {"penalty": "none"},
    "wc": {"penalty": "none", "clip_weights": 0.01},
}
RESULTS = Path(__file__).resolve().parent / "results"


def _one_thread() -> None:
    """Before any framework import: one compute thread per worker process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def lipschitz_on_pairs(scores: Any, points: Any) -> float:
    """max over pairs i < j of |f_i - f_j| / ||x_i - x_j||_2 (flattened points)."""
    import numpy as np

    f = np.asarray(scores, np.float64).reshape(-1)
    x = np.asarray(points, np.float64).reshape(len(f), -1)
    sq = (x * x).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    iu = np.triu_indices(len(f), k=1)
    ok = dist[iu] > 1e-6
    return float((np.abs(f[:, None] - f[None, :])[iu][ok] / dist[iu][ok]).max())


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a worker process); returns its row."""
    _one_thread()
    import numpy as np

    if task["framework"] == "torch":
        import torch

        torch.set_num_threads(1)
    from train import contract
    from train.config import preset_config
    from train.data import load_digits, to_model_range
    from train.loop import run_training
    from train.runs.logs import read_jsonl

    settings = PENALTIES[task["penalty"]]
    with tempfile.TemporaryDirectory() as out:
        cfg = preset_config(
            "digits", out=out, seed=task["seed"], steps=task["steps"], device="cpu", progress=False,
            tensorboard=False, log_every=task["eval_every"], eval_every=task["eval_every"], sample_every=0,
            checkpoint_every=0, eval_samples=1000, final_eval_samples=2000, framework=task["framework"],
            **settings).validate()
        trainer = contract.trainer_class(task["framework"])(cfg)
        start = time.perf_counter()
        result = run_training(trainer, cfg)
        wall = time.perf_counter() - start
        rows = read_jsonl(Path(out) / "metrics.jsonl")
    data = load_digits()
    pick = np.random.default_rng(task["seed"]).choice(len(data), 256, replace=False)
    real = to_model_range(data[pick], None, flip=False, dequantize=False)
    z = np.random.default_rng(10_000 + task["seed"]).standard_normal((256, cfg.z_dim)).astype(np.float32)
    fake = trainer.sample(z).astype(np.float32) / 127.5 - 1.0
    points = np.concatenate([real, fake])
    lipschitz = lipschitz_on_pairs(trainer.critic_scores(points), points)
    curve = [{"step": r["step"], "train_s": r["time/train_s"], "FD_digits": r["eval/FD_digits"],
              "KID_digits": r["eval/KID_digits"], "classes": r["eval/classes"]}
             for r in rows if "eval/FD_digits" in r]
    final = result.eval_metrics
    return {**task, "FD_digits": final["eval/FD_digits"], "KID_digits": final["eval/KID_digits"],
            "classes": final["eval/classes"], "confidence": final["eval/confidence"],
            "wdist": rows[-1]["critic/wdist"], "lipschitz": lipschitz, "train_s": rows[-1]["time/train_s"],
            "wall_s": wall, "curve": curve}


# ----------------------------------------------------------------------------- reporting


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _interp(curve: list[dict[str, Any]], t: float) -> float:
    import numpy as np

    return float(np.interp(t, [c["train_s"] for c in curve], [c["FD_digits"] for c in curve]))


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per (framework, penalty): mean and spread over seeds; and the VALP-vs-GP verdicts."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["framework"], r["penalty"]), []).append(r)
    table = []
    for (fw, pen), rs in groups.items():
        row: dict[str, Any] = {"framework": fw, "penalty": pen, "seeds": len(rs)}
        for key in ("FD_digits", "KID_digits", "classes", "confidence", "wdist", "lipschitz", "train_s"):
            row[key] = _mean_sd([r[key] for r in rs])
        table.append(row)
    verdicts = []
    for fw in sorted({r["framework"] for r in runs}):
        valp, gp = groups.get((fw, "valp")), groups.get((fw, "gp"))
        if not valp or not gp:
            continue
        (v, vs), (g, gs) = _mean_sd([r["FD_digits"] for r in valp]), _mean_sd([r["FD_digits"] for r in gp])
        verdicts.append(f"{fw}, equal iterations: FD-digits VALP {v:.1f} ± {vs:.1f} vs GP {g:.1f} ± {gs:.1f} "
                        f"(mean ± sd over {len(valp)}/{len(gp)} seeds): VALP {'lower (better)' if v < g else 'not lower'}"
                        f"{'; the gap is within one sd' if abs(v - g) < max(vs, gs) else ''}.")
        t = min(min(r["train_s"] for r in valp), min(r["train_s"] for r in gp))
        (v, vs), (g, gs) = _mean_sd([_interp(r["curve"], t) for r in valp]), _mean_sd([_interp(r["curve"], t) for r in gp])
        verdicts.append(f"{fw}, equal wall-clock ({t:.0f} s of training, curves interpolated): FD-digits VALP "
                        f"{v:.1f} ± {vs:.1f} vs GP {g:.1f} ± {gs:.1f}: VALP {'lower (better)' if v < g else 'not lower'}"
                        f"{'; the gap is within one sd' if abs(v - g) < max(vs, gs) else ''}.")
    return table, verdicts


def markdown(table: list[dict[str, Any]], verdicts: list[str], meta: dict[str, Any]) -> str:
    def ms(v: tuple[float, float], fmt: str = ".1f") -> str:
        return f"{v[0]:{fmt}} ± {v[1]:{fmt}}"

    lines = [" && ".join(f"`{c}`" for c in meta["commands"]) + f": {meta['steps']} iterations per run, seeds {meta['seeds']}, "
             f"{meta['workers']} worker processes of one thread each, {meta['machine']}; "
             f"{meta['total_s']:.0f} s in all. Mean ± sd over seeds; FD-digits, KID-digits (x1000) and classes "
             "of 2000 EMA samples at the end (lower FD/KID is better; 10 classes is full coverage).", "",
             "| framework | penalty | FD-digits | KID-digits x1000 | classes (of 10) | confidence | final W estimate | Lipschitz on pairs | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        kid = (r["KID_digits"][0] * 1000, r["KID_digits"][1] * 1000)
        lines.append(f"| {r['framework']} | {r['penalty']} | {ms(r['FD_digits'])} | {ms(kid)} | {ms(r['classes'])} | "
                     f"{ms(r['confidence'], '.2f')} | {ms(r['wdist'], '.2f')} | {ms(r['lipschitz'], '.2f')} | "
                     f"{ms(r['train_s'], '.0f')} |")
    return "\n".join(lines + ["", *[f"- {v}" for v in verdicts], ""])


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frameworks = sorted({r["framework"] for r in runs})
    fig, axes = plt.subplots(len(frameworks), 2, figsize=(11, 4 * len(frameworks)), squeeze=False)
    colours = dict(zip(PENALTIES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for row, fw in zip(axes, frameworks, strict=True):
        for pen in PENALTIES:
            rs = [r for r in runs if r["framework"] == fw and r["penalty"] == pen]
            if not rs:
                continue
            steps = np.array([c["step"] for c in rs[0]["curve"]])
            fd = np.array([[c["FD_digits"] for c in r["curve"]] for r in rs])
            secs = np.array([[c["train_s"] for c in r["curve"]] for r in rs])
            for ax, x in ((row[0], steps), (row[1], secs.mean(axis=0))):
                ax.plot(x, fd.mean(axis=0), label=f"{pen} ({len(rs)} seeds)", color=colours[pen])
                ax.fill_between(x, fd.min(axis=0), fd.max(axis=0), alpha=0.2, color=colours[pen])
        row[0].set(title=f"{fw}: FD-digits vs iterations", xlabel="generator iteration", ylabel="FD-digits", yscale="log")
        row[1].set(title=f"{fw}: FD-digits vs training seconds", xlabel="seconds (mean over seeds)", yscale="log")
        row[0].legend(fontsize=8)
    fig.suptitle("mean over seeds (line) and min-max (band)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default="torch,jax", help="comma list of torch, jax, tf")
    p.add_argument("--penalties", default=",".join(PENALTIES), help=f"comma list of {', '.join(PENALTIES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--steps", type=int, default=200, help="generator iterations per run")
    p.add_argument("--eval-every", type=int, default=25, help="iterations between FD-digits points")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for quality_cpu.{json,md,png}")
    p.add_argument("--merge", action="store_true",
                   help="keep the runs of other frameworks from the existing quality_cpu.json (one env per framework)")
    args = p.parse_args(argv)
    tasks = [{"framework": fw, "penalty": pen, "seed": int(seed), "steps": args.steps, "eval_every": args.eval_every}
             for fw in args.frameworks.split(",") for pen in args.penalties.split(",")
             for seed in args.seeds.split(",")]
    unknown = sorted({t["penalty"] for t in tasks} - set(PENALTIES))
    if unknown:
        p.error(f"--penalties: unknown {unknown}")
    from tqdm import tqdm

    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    # spawn: JAX and TF must not be forked; each worker imports its framework once.
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=None) as pool, \
            tqdm(total=len(tasks), desc="bench.quality", unit="run", file=sys.stderr) as bar:
        for r in pool.imap_unordered(run_one, tasks):
            runs.append(r)
            bar.write(f"{r['framework']:5s} {r['penalty']:9s} seed {r['seed']}: FD-digits {r['FD_digits']:7.2f}  "
                      f"classes {r['classes']:.0f}  W {r['wdist']:7.3f}  Lipschitz {r['lipschitz']:6.2f}  "
                      f"{r['train_s']:5.0f} s", file=sys.stderr)
            bar.update(1)
    total = time.perf_counter() - start
    commands = []
    if args.merge and (args.out / "quality_cpu.json").is_file():
        old = json.loads((args.out / "quality_cpu.json").read_text())
        mine = set(args.frameworks.split(","))
        runs += [r for r in old["runs"] if r["framework"] not in mine]
        commands, total = old["meta"]["commands"], total + old["meta"]["total_s"]
    runs.sort(key=lambda r: (r["framework"], list(PENALTIES).index(r["penalty"]), r["seed"]))
    import platform

    command = " ".join(["python -m bench.quality", *(argv if argv is not None else sys.argv[1:])])
    meta = {"commands": [*commands, command],
            "steps": args.steps, "seeds": args.seeds, "workers": args.workers,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "total_s": total}
    table, verdicts = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality_cpu.json").write_text(json.dumps({"meta": meta, "table": table, "verdicts": verdicts,
                                                           "runs": runs}, indent=1) + "\n")
    text = markdown(table, verdicts, meta)
    (args.out / "quality_cpu.md").write_text(text)
    plot(runs, args.out / "quality_cpu.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
