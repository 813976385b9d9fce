"""The digits quality metric, the run tools and saved-run configs.

Framework-free tests run in the ``core`` env: the digits classifier's determinism and accuracy,
FD/KID against independent computations, class coverage, ``train.plot`` on a metrics file,
``--config`` and the resume refusal. The ``framework`` tests train a tiny digits run per
framework and use ``train.plot`` / ``train.sample`` / ``--resume`` on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.config import (
    RUN_INFO_KEY,
    ConfigError,
    build_parser,
    parse_config,
    preset_config,
)
from train.evaluation import digits as dq
from train.resume import resumed_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def classifier() -> dq.DigitsClassifier:
    return dq.train_classifier()


# ============================================================================ the classifier


def test_classifier_is_deterministic_accurate_and_cached(classifier: dq.DigitsClassifier, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert classifier.accuracy >= 0.97  # held-out 25% of the bundled digits
    again = dq.train_classifier()
    assert again.checksum() == classifier.checksum()
    for a, b in zip((classifier.w1, classifier.b1, classifier.w2, classifier.b2),
                    (again.w1, again.b1, again.w2, again.b2), strict=True):
        np.testing.assert_array_equal(a, b)
    # The held-out accuracy is recomputed from the stored NumPy weights alone.
    images, labels = dq.labelled_digits()
    _, test = dq._split(labels)
    assert np.mean(classifier(images[test])[1].argmax(axis=1) == labels[test]) == classifier.accuracy
    # First use trains and caches; the cache loads to the same weights; a corrupt cache retrains.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(dq, "_LOADED", None)
    first = dq.load_classifier()
    assert dq._cache_path().is_file() and first.checksum() == classifier.checksum()
    monkeypatch.setattr(dq, "_LOADED", None)
    assert dq.load_classifier().checksum() == classifier.checksum()
    dq._cache_path().write_bytes(b"not an npz")
    monkeypatch.setattr(dq, "_LOADED", None)
    assert dq.load_classifier().checksum() == classifier.checksum()


def _independent_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance via the symmetric form Tr sqrt(S1^1/2 S2 S1^1/2) (eigendecompositions)."""
    from scipy import linalg

    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def _independent_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics.pairwise import polynomial_kernel

    kw = {"degree": 3, "gamma": 1.0 / x.shape[1], "coef0": 1.0}
    kxx, kyy, kxy = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def test_fd_and_kid_digits_match_independent_computations(classifier: dq.DigitsClassifier) -> None:
    images, labels = dq.labelled_digits()
    rng = np.random.default_rng(0)
    # "Generated": a class-skewed subset with noise, so FD and KID are clearly positive.
    fake = images[labels < 6][:400].astype(np.int16) + rng.integers(-40, 40, (400, 32, 32, 1))
    fake = np.clip(fake, 0, 255).astype(np.uint8).repeat(1, axis=3)
    ev = dq.DigitsEvaluator(classifier)
    out = ev.evaluate(fake)
    feats, ref = classifier.features(fake), classifier.features(images)
    assert out["FD_digits"] == pytest.approx(_independent_fd(feats, ref), rel=1e-6)
    assert out["FD_digits"] > 1.0
    # KID with one subset as large as the smaller set is the unbiased MMD^2 of all of it.
    from train.evaluation.inception import kernel_inception_distance

    kid, _ = kernel_inception_distance(feats, ref[:400], num_subsets=1, subset_size=400)
    assert kid == pytest.approx(_independent_mmd2(feats, ref[:400]), rel=1e-9)
    assert out["KID_digits"] > 0
    assert out["classes"] <= 7  # only 0-5 were given (plus noise)
    # The real digits themselves: FD ~ 0, all 10 classes, confident.
    real = ev.evaluate(images)
    assert real["FD_digits"] < 1e-6 and real["classes"] == 10 and real["confidence"] > 0.9


def test_class_coverage() -> None:
    logits = np.full((100, 10), -10.0)
    logits[np.arange(100), np.arange(100) % 3] = 10.0
    assert dq.class_coverage(logits) == (3, pytest.approx(1.0))
    logits[0] = 0.0  # one uniform sample: 1% of 100 counts as covered, confidence drops
    classes, conf = dq.class_coverage(logits)
    assert classes == 3 and conf < 1.0


# ============================================================================ train.plot


def test_plot_draws_a_metrics_csv(tmp_path: Path) -> None:
    from train.runs import plot

    rows = [{"step": s, "critic/loss": -s / 10, "gen/loss": s / 5, "critic/wdist": 1 + s / 100, "valp/mu": s / 50,
             "valp/mean_violation": 0.1, "eval/FD_digits": 100 / s if s % 2 == 0 else ""} for s in range(1, 9)]
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert plot.main([str(tmp_path)]) == 0
    png = tmp_path / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.main([str(tmp_path / "missing")]) == 2


# ============================================================================ --config, --resume


def test_config_reruns_a_saved_run(tmp_path: Path) -> None:
    cfg = preset_config("digits", seed=5, lr_d=3e-4, penalty="gp", out=str(tmp_path / "a"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg.to_dict(), RUN_INFO_KEY: {"argv": ["x"], "git_commit": None}}))
    again = parse_config(["--config", str(path), "--out", str(tmp_path / "b")])
    assert again.replace(out=cfg.out) == cfg.replace(framework="")
    assert parse_config(["--config", str(tmp_path), "--steps", "7"]).steps == 7  # a run dir works too
    with pytest.raises(SystemExit):
        parse_config(["--config", str(tmp_path / "nope.json")])


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_resume_keeps_the_saved_settings_and_refuses_a_changed_one() -> None:
    saved = {**preset_config("digits", lr_d=3e-4, out="runs/x").to_dict(), RUN_INFO_KEY: {}}
    # Flags not given keep the saved values (not the default preset's); --steps may change.
    argv = ["--out", "runs/x", "--resume", "--steps", "900"]
    cfg = resumed_config(saved, _args(argv), parse_config(argv))
    assert (cfg.preset, cfg.arch, cfg.lr_d, cfg.steps, cfg.resume) == ("digits", "dcgan", 3e-4, 900, "auto")
    # The same value again is fine; a different one is refused by its flag.
    argv = ["--out", "runs/x", "--resume", "--lr-d", "3e-4"]
    assert resumed_config(saved, _args(argv), parse_config(argv)).lr_d == 3e-4
    for argv, name in ((["--resume", "--lr-d", "1e-3"], "--lr-d"), (["--resume", "--penalty", "gp"], "--penalty"),
                       (["--resume", "--valp-fraction", "0.25"], "--valp-fraction"),
                       (["--resume", "--clip-weights", "0.01"], "--clip-weights")):
        with pytest.raises(ConfigError, match=name):
            resumed_config(saved, _args(argv), parse_config(argv))


# ============================================================================ per framework


def _cli(framework: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", f"train.{framework}_wgan", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


TINY = ["--preset", "digits", "--steps", "2", "--n-critic", "1", "--batch-size", "8", "--gen-batch-size", "8",
        "--gen-channels", "4", "--critic-channels", "4", "--z-dim", "8", "--eval-every", "1", "--eval-samples",
        "20", "--final-eval-samples", "20", "--n-sample-grid", "4", "--no-progress", "--no-tensorboard",
        "--device", "cpu", "--log-every", "1"]


@pytest.mark.slow
def test_digits_run_tools_and_resume_refusal(framework: str, tmp_path: Path) -> None:
    from train.runs import logs, plot, sample

    out = tmp_path / "run"
    r = _cli(framework, *TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    # Quality on digits every --eval-every; the launch record in config.json.
    last = logs.read_jsonl(out / "metrics.jsonl")[-1]
    assert {"eval/FD_digits", "eval/KID_digits", "eval/classes", "eval/confidence", "time/train_s"} <= set(last)
    saved = json.loads((out / "config.json").read_text())
    info = saved[RUN_INFO_KEY]
    assert info["argv"][1:] == [*TINY, "--out", str(out)] and info["world_size"] == 1
    assert "numpy" in info["versions"] and saved["arch"] == "dcgan"
    # train.plot and train.sample on the run.
    assert plot.main([str(out)]) == 0 and (out / "metrics.png").is_file()
    assert sample.main([str(out), "--n", "5", "--out", str(tmp_path / "png")]) == 0
    pngs = sorted((tmp_path / "png").glob("sample_*.png"))
    assert len(pngs) == 5
    ckpt_file = out / "checkpoints" / "ckpt-000000002.npz"
    assert sample.main([str(ckpt_file), "--n", "5", "--out", str(tmp_path / "npz"), "--format", "npz"]) == 0
    with np.load(tmp_path / "npz" / "samples.npz") as z:
        images = z["images"]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(pngs[0])), images[0])  # same seed, same samples
    # --resume uses the saved settings (no --preset here) and refuses a changed one by name.
    r = _cli(framework, "--out", str(out), "--resume", "--lr-d", "0.1", "--no-progress")
    assert r.returncode == 2 and "--lr-d" in r.stderr, r.stderr[-2000:]
    r = _cli(framework, "--out", str(out), "--resume", "--steps", "3", "--no-progress", "--no-tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    assert logs.read_jsonl(out / "metrics.jsonl")[-1]["step"] == 3


# ============================================================================ bench.quality


def test_bench_quality_lipschitz_on_pairs() -> None:
    from bench import quality

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 3))
    a = rng.normal(size=6)
    lip = quality.lipschitz_on_pairs(x.reshape(40, -1) @ a, x)
    assert 0.5 * np.linalg.norm(a) < lip <= np.linalg.norm(a) + 1e-9  # a linear critic: at most ||a||
    # The study itself (statistics, verdicts, resumability, report): tests/test_quality_study.py.
