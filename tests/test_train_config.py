"""One configuration vocabulary from flag to math (no framework needed): the trainer's penalty
settings carry valr_core's names and defaults, are validated by the core once, and a bad value
exits with the flag's name; one seed policy; the shared penalty factory's choices."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train import penalties
from train.config import (
    FLAGS,
    PRESETS,
    ConfigError,
    TrainConfig,
    build_parser,
    parse_config,
    preset_config,
)
from train.seeds import PURPOSES, numpy_stream, stream_seed
from valr_core import GP, LP, VALP, ValpConfig
from valr_core.base import replica_reduction

REPO = Path(__file__).resolve().parents[1]


def test_penalty_fields_are_the_cores_with_its_defaults() -> None:
    core = ValpConfig()
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in penalties.PENALTY_FIELDS:
        assert name in fields, name
        assert name in FLAGS, name
        if name != "mode":  # None = each penalty's paper mode (tested below)
            assert fields[name] == getattr(core, name), name
    assert set(FLAGS) == set(penalties.PENALTY_FIELDS)


def test_paper_preset_is_the_papers_setting() -> None:
    cfg = preset_config("paper").validate()
    settings = cfg.penalty_settings()
    assert settings["fraction"] == 1.0 and settings["mode"] == "al" and settings["clip"] == (-1.0, 1.0)
    assert preset_config("paper", penalty="gp").penalty_settings()["mode"] == "squared"
    assert preset_config("paper", penalty="lp", mode="al").penalty_settings()["mode"] == "al"
    half = parse_config(["--valp-fraction", "0.5"])
    assert half.fraction == 0.5 and "fraction" not in PRESETS["smoke"]


def test_settings_reach_the_core_by_one_name() -> None:
    cfg = parse_config(["--preset", "smoke", "--lam", "3", "--reduction", "max", "--mode", "squared",
                        "--valp-k", "2", "--valp-xi", "5", "--valp-eps-min", "0.5",
                        "--valp-eps-max", "4", "--valp-n-power", "2", "--valp-start", "gaussian",
                        "--valp-fraction", "0.25", "--no-valp-clip"])
    pen = penalties.penalty_from_config(cfg, "jax")  # builds the core config; imports no framework
    core = pen
    assert isinstance(core, VALP)
    assert (core.lam, core.reduction, core.mode, core.rho, core.K, core.xi, core.eps_min, core.eps_max,
            core.n_power, core.start, core.fraction, core.clip) == (
        3.0, "max", "squared", ValpConfig().rho, 2.0, 5.0, 0.5, 4.0, 2, "gaussian", 0.25, None)
    assert parse_config(["--preset", "smoke", "--valp-clip"]).clip == (-1.0, 1.0)
    gp = penalties.penalty_from_config(parse_config(["--penalty", "lp", "--lam", "5", "--reduction", "sum"]), "torch")
    assert isinstance(gp, LP) and (gp.lam, gp.reduction, gp.mode) == (5.0, "sum", "squared")
    assert isinstance(penalties.make_penalty("gp", "tf"), GP)
    assert penalties.make_penalty("none", "tf") is None
    # Round trip through config.json (JSON has no tuples).
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    on = preset_config("paper")
    assert TrainConfig.from_dict(on.to_dict()).clip == (-1.0, 1.0)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--valp-eps-max", "inf"], "--valp-eps-max"),
    (["--valp-eps-min", "nan"], "--valp-eps-min"),
    (["--valp-eps-min", "5", "--valp-eps-max", "1"], "--valp-eps-min"),
    (["--rho", "inf"], "--rho"),
    (["--rho", "-1"], "--rho"),
    (["--lam", "-1"], "--lam"),
    (["--valp-fraction", "0"], "--valp-fraction"),
    (["--valp-fraction", "1.5"], "--valp-fraction"),
    (["--valp-k", "-1"], "--valp-k"),
    (["--valp-xi", "0"], "--valp-xi"),
    (["--valp-n-power", "-1"], "--valp-n-power"),
    (["--mode", "plain"], "--mode"),
    (["--reduction", "median"], "--reduction"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--data-seed", str(2**40)], "--data-seed"),
    (["--precision", "fp16"], "--precision"),
])
def test_invalid_values_exit_2_naming_the_flag(argv: list[str], flag: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(["--preset", "smoke", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_core_validation_is_the_one_rule() -> None:
    # rho = 0 is valid in the core (a fixed multiplier), so it is valid on the command line too.
    assert parse_config(["--rho", "0"]).rho == 0.0
    with pytest.raises(ConfigError, match=r"^--valp-eps-max: eps_max must be a finite number"):
        preset_config("smoke", eps_max=float("inf")).validate()


def test_help_shows_every_penalty_flag_with_its_default() -> None:
    text = " ".join(build_parser("torch").format_help().split()).split(" options: ", 1)[1]  # past the usage
    for option, _, _ in FLAGS.values():
        assert option in text, option
    for option, default in (("--rho RHO", "0.01"), ("--lam LAM", "10.0"), ("--valp-eps-max EPS_MAX", "10.0"),
                            ("--valp-fraction FRACTION", "1.0"), ("--seed SEED", "0"),
                            ("--batch-size BATCH_SIZE", "64")):
        after = text.split(option, 1)[1].split(" --", 1)[0]
        assert f"(paper: {default})" in after, (option, after)


@pytest.mark.parametrize("preset", ["smoke", "digits"])
def test_preset_help_shows_that_presets_values(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(["--help", "--preset", preset])  # --help first: the preset is still read
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]  # past the usage
    expected = preset_config(preset)
    for option, name in (("--steps STEPS", "steps"), ("--batch-size BATCH_SIZE", "batch_size"),
                         ("--critic-channels CRITIC_CHANNELS", "critic_channels")):
        after = text.split(option, 1)[1].split(" --", 1)[0]
        assert f"({preset}: {getattr(expected, name)})" in after, (option, after)


def test_print_config_prints_the_resolved_settings_and_exits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = ("import sys; from train.cli import main; "
            "sys.exit(main('none', lambda cfg: (_ for _ in ()).throw(AssertionError('built a trainer')), "
            f"['--preset', 'digits', '--steps', '7', '--valp-eps-max', '3', '--out', {str(out)!r}, '--print-config']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert (settings["preset"], settings["steps"], settings["eps_max"], settings["arch"]) == ("digits", 7, 3.0, "dcgan")
    assert not out.exists()  # printed, nothing written


def test_batch_larger_than_the_dataset_exits_2_before_training(tmp_path: Path) -> None:
    # The NumPy-free check runs before any framework is imported: a non-existent trainer module
    # would fail later, so exit 2 with the flag's name proves the order.
    code = ("import sys; from train.cli import main; "
            "sys.exit(main('none', lambda cfg: (_ for _ in ()).throw(AssertionError('built a trainer')), "
            f"['--preset', 'smoke', '--batch-size', '5000', '--out', {str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert "--batch-size" in r.stderr and "1797" in r.stderr and "Traceback" not in r.stderr


def test_seed_policy_gives_independent_reproducible_streams() -> None:
    seeds = {p: stream_seed(0, p) for p in PURPOSES}
    assert len(set(seeds.values())) == len(PURPOSES)
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert stream_seed(3, "penalty") == stream_seed(3, "penalty")
    assert stream_seed(3, "penalty", replica=0) != stream_seed(3, "penalty", replica=1)
    assert stream_seed(3, "latents") != stream_seed(4, "latents")
    a = numpy_stream(1, "sample_grid").standard_normal(4)
    np.testing.assert_array_equal(a, numpy_stream(1, "sample_grid").standard_normal(4))
    with pytest.raises(ValueError, match="purpose"):
        stream_seed(0, "weights")
    assert preset_config("smoke").effective_data_seed == stream_seed(0, "data")


def test_penalty_factory_rejects_unknown_names_and_settings() -> None:
    with pytest.raises(ValueError, match="penalty must be one of"):
        penalties.make_penalty("wc", "torch")
    with pytest.raises(TypeError, match="unknown penalty settings"):
        penalties.make_penalty("valp", "torch", eps=1.0)
    with pytest.raises(ValueError, match="mode"):
        penalties.make_penalty("gp", "torch", mode="plain")
    # Hashable (a jit static argument) and equal for equal settings.
    a = penalties.make_penalty("valp", "jax", fraction=0.5)
    assert a == penalties.make_penalty("valp", "jax", fraction=0.5) and hash(a) == hash(
        penalties.make_penalty("valp", "jax", fraction=0.5))


def test_replica_reductions_follow_the_penalty() -> None:
    keys = ["valp/penalty", "constraint", "critic/wdist", "valp/mean_violation", "valp/max_violation",
            "valp/max_quotient", "valp/mu", "gp/max_grad_norm"]
    assert {k: replica_reduction(k, "sum") for k in keys} == {
        "valp/penalty": "sum", "constraint": "sum", "critic/wdist": "mean", "valp/mean_violation": "mean",
        "valp/max_violation": "max", "valp/max_quotient": "max", "valp/mu": "mean", "gp/max_grad_norm": "max"}
    assert replica_reduction("lp/penalty", "max") == "max"


def test_precision_flag_reaches_the_config() -> None:
    assert parse_config(["--preset", "smoke"]).precision == "fp32"
    assert parse_config(["--preset", "smoke", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(ConfigError, match="--precision must be one of"):
        TrainConfig(precision="fp16").validate()


@pytest.mark.parametrize(("entry", "user_file"), [("train.plot", "models.py"), ("bench.speed", "train.py"),
                                                  ("train.sample", "bench.py")])
def test_started_outside_the_checkout_is_one_line(entry: str, user_file: str, tmp_path: Path) -> None:
    """The trainers and benchmarks run from a checkout: a user's own models.py / train.py /
    bench.py first on sys.path is refused in one line instead of being imported."""
    (tmp_path / user_file).write_text("raise SystemExit('the user file was imported')\n")
    env = {k: v for k, v in __import__("os").environ.items()}
    env["PYTHONPATH"] = str(REPO)  # the checkout is importable, but the cwd comes first
    proc = subprocess.run([sys.executable, "-m", entry, "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "valr checkout" in lines[0] and user_file.split(".")[0] in lines[0] and "user file" not in proc.stderr
