"""bench.quality, the quality study: its statistics against hand-computed cases, the verdicts,
resumability (finished runs never rerun, a killed study continues), cells the trainer config
cannot take, the report and figures from records only, and (per framework) that the cells of
one seed share initial weights, data order and latents.

Framework-free tests drive ``bench.quality.main`` with a fake ``run_task``: no training.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.quality import cells as cells_mod
from bench.quality import main, report
from bench.quality.stats import (
    Estimate,
    bootstrap_ci,
    bootstrap_columns,
    common_span,
    interpolate,
    paired_comparison,
    time_grid,
)
from bench.quality.store import FILE_NAME, Plan, StudyFile

REPO = Path(__file__).resolve().parents[1]
FEW = 2000  # bootstrap resamples in tests that do not check the intervals' values

# ============================================================================ statistics


def test_bootstrap_ci_of_a_constant_is_that_constant() -> None:
    for values in ([0.1] * 5, [7.0], [1e-7] * 3):
        e = bootstrap_ci(values)
        assert e == Estimate(values[0], values[0], values[0], len(values))


def test_bootstrap_ci_hand_computed() -> None:
    # Two seeds, 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == Estimate(0.5, 0.0, 1.0, 2)
    # Fixed RNG: the same interval every time; the mean is the plain mean.
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert bootstrap_ci(values) == bootstrap_ci(values)
    e = bootstrap_ci(values)
    assert e.mean == pytest.approx(2.8) and 1.0 <= e.lo < 2.8 < e.hi <= 5.0
    # Many seeds of N(0, 1): about the normal-theory interval 1.96 / sqrt(n) either side.
    x = np.random.default_rng(1).normal(size=400)
    e = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert e.hi - e.lo == pytest.approx(2 * half, rel=0.1) and e.includes(float(x.mean()))
    # Columns are resampled together: a constant column stays constant next to a varying one.
    mean, lo, hi = bootstrap_columns(np.array([[2.0, 0.0], [2.0, 1.0]]))
    np.testing.assert_array_equal(mean, [2.0, 0.5])
    np.testing.assert_array_equal(lo, [2.0, 0.0])
    np.testing.assert_array_equal(hi, [2.0, 1.0])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])


def test_paired_comparison_of_identical_cells_is_zero() -> None:
    a = {0: 10.0, 1: 12.5, 2: 9.0}
    p = paired_comparison(a, dict(a))
    assert (p.wins, p.losses, p.ties, p.n) == (0, 0, 3, 3)
    assert p.diff == Estimate(0.0, 0.0, 0.0, 3)
    assert report.conclusion(p, "gp") == "the CI includes 0: no difference is supported"


def test_paired_comparison_hand_computed() -> None:
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 2.0, 1: 3.0, 2: 5.0, 9: 0.0}  # seed 9 has no partner: ignored
    p = paired_comparison(a, b)
    assert p.seeds == (0, 1, 2) and (p.wins, p.losses, p.ties) == (3, 0, 0)
    assert p.diff.mean == pytest.approx(-4 / 3) and -2.0 <= p.diff.lo and p.diff.hi <= -1.0
    assert report.conclusion(p, "gp") == "VALP is better (lower FD-digits)"
    worse = paired_comparison(b, a)
    assert (worse.wins, worse.losses) == (0, 3) and report.conclusion(worse, "gp") == "GP is better (lower FD-digits)"
    # Higher is better (classes): the same differences count the other way.
    assert paired_comparison(a, b, lower_is_better=False).losses == 3
    mixed = paired_comparison({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0})
    assert (mixed.wins, mixed.losses) == (1, 1) and mixed.diff.includes(0.0)
    assert paired_comparison({0: 1.0}, {1: 1.0}).n == 0


def test_interpolation_against_a_known_linear_curve() -> None:
    t = [1.0, 2.0, 4.0]
    v = [3 * s + 1 for s in t]
    np.testing.assert_allclose(interpolate(t, v, [1.0, 1.5, 3.0, 4.0]), [4.0, 5.5, 10.0, 13.0])
    assert np.isnan(interpolate(t, v, [0.5, 4.5])).all()  # never extrapolated
    assert common_span([[1.0, 5.0], [2.0, 4.0, 9.0]]) == (2.0, 5.0)
    assert common_span([[1.0, 2.0], [3.0, 4.0]]) is None
    np.testing.assert_allclose(time_grid([[0.0, 10.0], [2.0, 6.0]], points=3), [2.0, 4.0, 6.0])
    with pytest.raises(ValueError):
        interpolate([2.0, 1.0], [0.0, 0.0], 1.5)


# ============================================================================ verdicts


def _record(cell: str, seed: int, fd: float, seconds: float, *, framework: str = "torch", iterations: int = 4,
            eval_every: int = 2) -> dict[str, Any]:
    """A finished run whose FD-digits falls linearly from 2 * fd to fd over ``seconds``."""
    its = list(range(eval_every, iterations + 1, eval_every))
    curve = [{"iteration": i, "train_s": seconds * i / iterations, "fd_digits": fd * (2 - i / iterations),
              "kid_digits": fd / 100, "classes": 10.0, "confidence": 0.9} for i in its]
    return {"framework": framework, "penalty": cell, "seed": seed, "iterations": iterations, "eval_every": eval_every,
            "settings": cells_mod.CELLS[cell], "status": "completed", "train_s": seconds,
            "s_per_iteration": seconds / iterations, "wall_s": seconds + 1, "fd_digits": fd, "kid_digits": fd / 100,
            "classes": 10.0, "confidence": 0.9, "wdist": 1.0, "lipschitz": 1.0, "curve": curve, "samples_png": None}


def test_summary_tables_and_verdicts() -> None:
    plan = Plan({"torch": ["valp", "gp", "lp", "none"]}, [0, 1, 2], 4, 2)
    records = ([_record("valp", s, 10.0 + s, 100.0) for s in range(3)]
               + [_record("gp", s, 20.0 + s, 50.0) for s in range(3)]
               + [_record("lp", s, 10.0 + s, 100.0) for s in range(3)]
               + [_record("none", s, 30.0, 80.0) for s in range(2)]
               + [_record("gp", 0, 1.0, 1.0, iterations=8)])  # another plan's run: not counted
    s = report.summarise(records, plan, resamples=FEW)
    rows = {r["cell"]: r for r in s["iterations"]}
    assert rows["valp"]["fd_digits"].mean == pytest.approx(11.0) and rows["gp"]["n"] == 3 and rows["none"]["n"] == 2
    assert rows["gp"]["fd_digits"].mean == pytest.approx(21.0)
    # Equal wall-clock: every run is read at 50 s (GP's end); VALP is half-way (FD 1.5 x its final).
    block = s["time"]["torch"]
    assert block["t"] == pytest.approx(50.0)
    at50 = {r["cell"]: r for r in block["rows"]}
    assert at50["valp"]["fd_digits"].mean == pytest.approx(1.5 * 11.0)
    assert at50["gp"]["fd_digits"].mean == pytest.approx(21.0)
    text = "\n".join(s["verdicts"])
    assert "torch, 4 iterations: VALP's FD-digits is lower than GP's on 3/3 seeds (higher on 0), paired " \
           "difference -10.0 [95% CI -10.0, -10.0]: VALP is better (lower FD-digits)." in text
    assert "torch, equal wall-clock (50 s of training each, curves interpolated): VALP's FD-digits is lower than " \
           "GP's on 3/3 seeds" in text
    assert "VALP's FD-digits is lower than LP's on 0/3 seeds (higher on 0, equal on 3), paired difference 0.000 " \
           "[95% CI 0.000, 0.000]: the CI includes 0: no difference is supported." in text
    # none has seeds 0 and 1 only: said, and too few for a verdict.
    assert "(only 2 of 3 planned seeds): two seeds cannot support a difference." in text
    assert any("torch none: 2 of 3 planned seeds finished" in n for n in s["notes"])
    assert "torch at equal iterations, FD-digits paired over seeds against 2 other cells: VALP is better than GP; " \
           "not distinguishable from LP." in s["overall"]


def test_verdict_with_too_few_seeds_or_a_missing_cell() -> None:
    plan = Plan({"torch": ["valp", "gp", "wc"]}, [0, 1, 2], 4, 2)
    s = report.summarise([_record("valp", 0, 10.0, 10.0), _record("gp", 0, 12.0, 10.0)], plan, resamples=FEW)
    text = "\n".join(s["verdicts"])
    assert "one seed cannot support a difference" in text
    assert "no finished WC run yet" in text


# ============================================================================ the study: resumable


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.zeros((8, 8, 3)))


class FakeRuns:
    """Stands in for training: a record per task, optionally stopping (as a kill would) after
    ``stop_after`` runs."""

    def __init__(self, stop_after: int | None = None, fail: set[tuple[str, str, int]] | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.stop_after = stop_after
        self.fail = fail or set()

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        key = (task["framework"], task["penalty"], task["seed"])
        self.calls.append(key)
        if key in self.fail:
            return {"ok": True, "record": {"framework": key[0], "penalty": key[1], "seed": key[2],
                                           "iterations": task["iterations"], "eval_every": task["eval_every"],
                                           "settings": cells_mod.CELLS[key[1]], "status": "failed",
                                           "error": "NonFiniteError: critic loss is nan", "fd_digits": None}}
        rec = _record(task["penalty"], task["seed"], 10.0 + task["seed"] + len(task["penalty"]), 40.0,
                      framework=task["framework"], iterations=task["iterations"], eval_every=task["eval_every"])
        if task["samples_dir"]:
            Path(task["samples_dir"]).mkdir(parents=True, exist_ok=True)
            rec["samples_png"] = f"{task['framework']}-{task['penalty']}-seed{task['seed']}.png"
            _png(Path(task["samples_dir"]) / rec["samples_png"])
        return {"ok": True, "record": rec}


TINY = ["--iterations", "4", "--eval-every", "2", "--seeds", "2", "--frameworks", "torch", "--cells", "valp,gp",
        "--workers", "1", "--resamples", str(FEW)]


def _records(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / FILE_NAME).read_text())["records"]


def test_finished_runs_are_never_rerun_and_a_killed_study_continues(tmp_path: Path) -> None:
    killed = FakeRuns(stop_after=3)
    assert main([*TINY, "--out", str(tmp_path)], run_task=killed) == 130
    # Written after every run: the three finished runs are on disk, seed-major order.
    assert [(r["penalty"], r["seed"]) for r in _records(tmp_path)] == [("valp", 0), ("gp", 0), ("valp", 1)]
    assert not list(tmp_path.glob(f".{FILE_NAME}.*"))  # no temporary file left behind
    # No flags: the stored plan continues; only the missing run trains.
    rest = FakeRuns()
    assert main(["--out", str(tmp_path), "--workers", "1", "--resamples", str(FEW)], run_task=rest) == 0
    assert rest.calls == [("torch", "gp", 1)]
    before = (tmp_path / FILE_NAME).read_text()
    again = FakeRuns()
    assert main(["--out", str(tmp_path), "--resamples", str(FEW)], run_task=again) == 0
    assert again.calls == [] and len(_records(tmp_path)) == 4
    assert json.loads(before)["records"] == _records(tmp_path)
    # A larger plan keeps the finished runs and adds only the new ones.
    more = FakeRuns()
    assert main([*TINY[:4], "--seeds", "3", "--out", str(tmp_path)], run_task=more) == 0
    assert sorted(more.calls) == [("torch", "gp", 2), ("torch", "valp", 2)]
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert data["plan"]["seeds"] == [0, 1, 2] and len(data["records"]) == 6
    for r in data["records"]:
        assert {"framework", "penalty", "seed", "iterations", "train_s", "fd_digits", "kid_digits", "classes",
                "confidence", "curve"} <= set(r)
        assert {"iteration", "train_s", "fd_digits"} <= set(r["curve"][0])
    # Another --iterations is another plan: none of the 4-iteration records count for it.
    other = FakeRuns()
    assert main([*TINY, "--iterations", "6", "--out", str(tmp_path)], run_task=other) == 0
    assert len(other.calls) == 4 and len(_records(tmp_path)) == 10


def test_report_only_regenerates_report_and_figures_from_records(tmp_path: Path) -> None:
    assert main([*TINY, "--out", str(tmp_path)], run_task=FakeRuns()) == 0
    records = (tmp_path / FILE_NAME).read_bytes()
    for name in (report.REPORT, report.CURVES_PNG, report.SAMPLES_PNG):
        assert (tmp_path / name).is_file()
        (tmp_path / name).unlink()
    never = FakeRuns(stop_after=0)
    assert main(["--out", str(tmp_path), "--report-only", "--resamples", str(FEW)], run_task=never) == 0
    assert (tmp_path / FILE_NAME).read_bytes() == records
    for name in (report.CURVES_PNG, report.SAMPLES_PNG):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / report.REPORT).read_text()
    assert text.startswith(f"Generated by `python -m bench.quality --out {tmp_path} --report-only")
    assert "## Equal iterations (4)" in text and "## Equal wall-clock" in text and "paired difference" in text
    assert main(["--out", str(tmp_path / "empty"), "--report-only"]) == 2


def test_readme_quality_section_is_generated_from_the_records(tmp_path: Path) -> None:
    """The README's section between the markers is rewritten from the records (headline table of
    paired differences, verdicts, figure); text outside the markers, and a README without
    markers, are left as they are."""
    plan = Plan({"torch": ["valp", "gp"]}, [0, 1, 2], 4, 2)
    records = ([_record("valp", s, 10.0 + s, 100.0) for s in range(3)]
               + [_record("gp", s, 20.0 + s, 100.0 * (1 + s)) for s in range(3)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.README_BEGIN}\nstale numbers\n{report.README_END}\n\ntail\n")
    out = tmp_path / "bench" / "results"
    report.write({"records": records, "meta": {}}, plan, out, "cmd", figures=False, resamples=FEW, readme=readme)
    text = readme.read_text()
    assert text.startswith("# title\n\n" + report.README_BEGIN) and text.endswith(report.README_END + "\n\ntail\n")
    assert "stale numbers" not in text
    assert "| torch | GP | 4 iterations | 3/3 | -10.0 [-10.0, -10.0] |" in text  # VALP 10 below GP on each seed
    assert "VALP is better than GP" in text and "(bench/results/quality_digits.png)" in text
    assert "3.0-fold" in text  # GP's seconds per iteration: 25, 50, 75
    plain = tmp_path / "other.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(plain, "x") and plain.read_text() == "no markers\n"


def test_a_cell_the_config_cannot_take_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # As before the trainers knew --critic-norm: the sn cell names a setting the config lacks.
    monkeypatch.setitem(cells_mod.CELLS, "sn", {"penalty": "none", "critic_norm_not_yet": "spectral"})
    fake = FakeRuns()
    assert main([*TINY, "--cells", "valp,sn", "--out", str(tmp_path)], run_task=fake) == 0
    assert {c[1] for c in fake.calls} == {"valp"}
    err = [ln for ln in capsys.readouterr().err.splitlines() if "sn:" in ln]
    assert len(err) == 1 and "does not know critic_norm_not_yet='spectral'" in err[0], err
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert [f["penalty"] for f in data["failures"]] == ["sn"]
    text = (tmp_path / report.REPORT).read_text()
    assert "torch sn: not run" in text and "torch sn: 0 of 2 planned seeds finished" in text


def test_a_cell_a_trainer_refuses_is_skipped_after_its_first_seed(tmp_path: Path) -> None:
    calls = []

    def refuse_sn(task: dict[str, Any]) -> dict[str, Any]:
        calls.append((task["penalty"], task["seed"]))
        if task["penalty"] == "sn":
            return {"ok": False, "stage": "setup", "error": "--critic-norm spectral: not supported by this trainer"}
        return FakeRuns()(task)

    assert main([*TINY, "--cells", "valp,sn", "--out", str(tmp_path)], run_task=refuse_sn) == 0
    assert calls == [("valp", 0), ("sn", 0), ("valp", 1)]
    assert "not supported by this trainer" in (tmp_path / report.REPORT).read_text()


def test_failed_runs_are_reported_and_rerun_only_on_request(tmp_path: Path) -> None:
    assert main([*TINY, "--out", str(tmp_path)], run_task=FakeRuns(fail={("torch", "gp", 1)})) == 0
    text = (tmp_path / report.REPORT).read_text()
    assert "torch gp: 1 of 2 planned seeds finished; 1 failed (NonFiniteError" in text
    again = FakeRuns()
    assert main(["--out", str(tmp_path)], run_task=again) == 0 and again.calls == []
    assert main(["--out", str(tmp_path), "--retry-failed"], run_task=again) == 0
    assert again.calls == [("torch", "gp", 1)]
    assert all(r["status"] == "completed" for r in _records(tmp_path))


def test_one_study_per_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--out", str(tmp_path)], run_task=FakeRuns()) == 0
    with StudyFile(tmp_path).locked():
        assert main(["--out", str(tmp_path)], run_task=FakeRuns()) == 2
        assert "another bench.quality is training" in capsys.readouterr().err
        assert main(["--out", str(tmp_path), "--report-only", "--resamples", str(FEW)]) == 0


def test_a_critic_norm_the_trainer_ignores_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer that takes --critic-norm spectral but builds the plain critic would turn the sn
    cell into a silent copy of none."""
    from bench.quality.cells import CellError
    from bench.quality.worker import _check_critic_norm_applied
    from train import contract

    class Fake:
        applies = False

        def __init__(self, cfg: Any) -> None:
            self.cfg = cfg

        def critic_scores(self, x: np.ndarray) -> np.ndarray:
            scale = 0.5 if self.applies and self.cfg.critic_norm == "spectral" else 1.0
            return scale * x.reshape(len(x), -1).mean(axis=1)

    monkeypatch.setattr(contract, "trainer_class", lambda fw: Fake)
    cfg = cells_mod.cell_config("torch", "sn", 0, 4, 2, "/tmp/unused")
    with pytest.raises(CellError, match="scores images exactly as the plain critic"):
        _check_critic_norm_applied(Fake(cfg), cfg)
    Fake.applies = True
    _check_critic_norm_applied(Fake(cfg), cfg)


def test_default_plan_is_the_main_job() -> None:
    from bench.quality.cli import build_parser, resolve_plan
    from train.config import PRESETS

    plan = resolve_plan(build_parser().parse_args([]), None)
    assert plan.iterations == PRESETS["digits"]["steps"] >= 800
    assert plan.cells == {"torch": ["valp", "valp-half", "gp", "lp", "sn", "wc", "none"], "jax": ["valp", "gp"]}
    assert len(plan.seeds) >= 5
    assert cells_mod.CELLS["valp"]["fraction"] == 1.0 and cells_mod.CELLS["valp-half"]["fraction"] == 0.5
    assert cells_mod.CELLS["wc"] == {"penalty": "none", "clip_weights": 0.01}
    assert cells_mod.CELLS["sn"] == {"penalty": "none", "critic_norm": "spectral"}
    cfg = cells_mod.cell_config("torch", "gp", 3, 10, 5, "/tmp/unused")
    assert (cfg.preset, cfg.seed, cfg.steps, cfg.penalty, cfg.arch) == ("digits", 3, 10, "gp", "dcgan")


# ============================================================================ per framework


def _first_batch(cfg: Any) -> np.ndarray:
    from train.data import BatchIterator, load_dataset

    return next(BatchIterator(load_dataset(cfg.data, None), cfg.batch_size, seed=cfg.effective_data_seed,
                              flip=cfg.flip, dequantize=cfg.dequantize))


def test_paired_seeds_share_init_data_and_latents(framework: str, one_torch_thread: None, tmp_path: Path) -> None:
    """Cells at one seed start from the same weights, see the same first batch and draw the same
    latents (train.seeds: one stream per purpose); another seed starts elsewhere."""
    from train import contract

    def build(cell: str, seed: int = 3) -> tuple[Any, Any]:
        cfg = cells_mod.cell_config(framework, cell, seed, 4, 2, str(tmp_path / cell))
        return cfg, contract.trainer_class(framework)(cfg)

    shared = ("gen/", "critic/", "ema/", contract.RNG_LATENTS_KEY, contract.RNG_PENALTY_KEY)
    ref_cfg, ref = build("valp")
    ref_state = {k: v for k, v in ref.state_arrays().items() if k.startswith(shared)}
    batch = _first_batch(ref_cfg)
    for cell in ("gp", "wc", "none", "valp-half"):
        cfg, trainer = build(cell)
        state = trainer.state_arrays()
        assert set(ref_state) <= set(state)
        for key, value in ref_state.items():
            np.testing.assert_array_equal(state[key], value, err_msg=f"{cell}: {key}")
        np.testing.assert_array_equal(_first_batch(cfg), batch)
        # One critic step on the same batch: the penalties differ, the latent stream does not.
        trainer.critic_step(batch, 0)
        if cell == "gp":
            ref.critic_step(batch, 0)
            np.testing.assert_array_equal(trainer.state_arrays()[contract.RNG_LATENTS_KEY],
                                          ref.state_arrays()[contract.RNG_LATENTS_KEY])
    _, other = build("valp", seed=4)
    moved = other.state_arrays()
    assert any(not np.array_equal(moved[k], v) for k, v in ref_state.items() if k.startswith("gen/"))


@pytest.mark.slow
def test_bench_quality_trains_a_tiny_study(framework: str, tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "bench.quality", "--iterations", "2", "--eval-every", "1", "--seeds", "1",
           "--frameworks", framework, "--cells", "valp,gp", "--workers", "2", "--resamples", str(FEW),
           "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    records = _records(tmp_path)
    assert sorted(rec["penalty"] for rec in records) == ["gp", "valp"]
    for rec in records:
        assert rec["status"] == "completed" and rec["iterations"] == 2 and rec["framework"] == framework
        assert [p["iteration"] for p in rec["curve"]] == [1, 2] and rec["curve"][-1]["train_s"] == rec["train_s"]
        assert math.isfinite(rec["fd_digits"]) and 0 <= rec["classes"] <= 10
        assert (tmp_path / report.SAMPLES_DIR / rec["samples_png"]).is_file()
    assert f"{framework:5s} valp      seed 0: FD-digits" in r.stderr  # one line per finished run
    assert "one seed cannot support a difference" in (tmp_path / report.REPORT).read_text()
    assert (tmp_path / report.SAMPLES_PNG).is_file() and (tmp_path / report.CURVES_PNG).is_file()
