"""A run directory belongs to one run, and no setting is silently ignored or re-read wrongly
(audit items 1-6): resume into another run's directory, a fresh run into a user's directory,
flags the chosen penalty or mode ignores, --config types, false resume warnings, and the
learning rate of a longer resume."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tally import record, reliability_tally  # noqa: F401 - the session fixture printing the counts
from tests.test_train_infra import _TOY_DATA, ToyTrainer, _toy_cfg
from train.config import ConfigError, TrainConfig, parse_config, preset_config
from train.loop import run_training
from train.resume import RunDirError


def _run(out: Path, **kw: object):
    cfg = _toy_cfg(out, **{"steps": 4, "checkpoint_every": 2, **kw})
    return run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. another run's directory


def test_resume_into_another_runs_directory_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "runA", tmp_path / "runB"
    ckpt_a = _run(a).checkpoint
    _run(b)
    before = _snapshot(b)
    with pytest.raises(RunDirError, match=r"--out .*runB holds another run than the checkpoint"):
        _run(b, resume=str(ckpt_a), steps=6)
    assert _snapshot(b) == before
    record("run directories protected")


def test_resume_from_a_checkpoint_into_its_own_or_a_new_directory_works(tmp_path: Path) -> None:
    a = tmp_path / "runA"
    first = _run(a, steps=2)
    cfg = _toy_cfg(tmp_path / "forked", steps=4, checkpoint_every=2, resume=str(first.checkpoint))
    assert run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA).status == "completed"
    cfg = _toy_cfg(a, steps=4, checkpoint_every=2, resume=str(first.checkpoint))
    assert run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA).step == 4
    ids = {json.loads((d / "config.json").read_text())["run"]["run_id"] for d in (a, tmp_path / "forked")}
    assert len(ids) == 1  # the fork continues the same run


# ----------------------------------------------------------------------------- 2. a user's directory


def test_fresh_run_into_a_users_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "metrics.csv").write_text("a,b\n1,2\n")
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"--out .*mine is not empty and holds no valr run \(config.json, metrics.csv\)"):
        _run(out)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv"]
    # The explicit flag still never overwrites a file the run did not write.
    with pytest.raises(RunDirError, match="config.json is already there and was not written by this run"):
        _run(out, out_exists_ok=True)
    assert _snapshot(out) == before
    record("run directories protected", 2)


def test_out_exists_ok_writes_beside_other_files(tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    with pytest.raises(RunDirError, match=r"README.txt"):
        _run(out)
    assert _run(out, out_exists_ok=True).status == "completed"
    assert (out / "README.txt").read_text() == "my notes" and (out / "config.json").is_file()


def test_cli_refusal_is_one_line_with_exit_status_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("x\n")
    code = ("import sys; from train.cli import main; "
            "sys.exit(main('none', lambda cfg: (_ for _ in ()).throw(AssertionError('built a trainer')), "
            f"['--preset', 'smoke', '--steps', '1', '--out', {str(out)!r}, '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "metrics.csv" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and (out / "metrics.csv").read_text() == "x\n"


# ----------------------------------------------------------------------------- 3. ignored settings


@pytest.mark.parametrize(("argv", "flag", "instead"), [
    (["--lam", "1000"], "--lam", "--rho"),
    (["--mode", "al", "--lam", "10"], "--lam", "--rho"),
    (["--mode", "squared", "--rho", "2"], "--rho", "--lam"),
    (["--penalty", "gp", "--rho", "2"], "--rho", "--lam"),
    (["--penalty", "gp", "--valp-xi", "3"], "--valp-xi", "--lam"),
    (["--penalty", "lp", "--valp-fraction", "0.5"], "--valp-fraction", "--lam"),
    (["--penalty", "none", "--lam", "5"], "--lam", "--clip-weights"),
])
def test_a_flag_the_penalty_or_mode_ignores_is_refused(argv: list[str], flag: str, instead: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_config(["--preset", "smoke", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{flag} has no effect" in err and instead in err, err


@pytest.mark.parametrize("argv", [["--penalty", "gp", "--lam", "5"], ["--mode", "squared", "--lam", "5"],
                                  ["--rho", "0.5"], ["--penalty", "valp", "--valp-xi", "2"]])
def test_flags_the_penalty_reads_are_accepted(argv: list[str]) -> None:
    cfg = parse_config(["--preset", "smoke", *argv])
    value = float(argv[-1])
    assert value in (cfg.lam, cfg.rho, cfg.xi)


# ----------------------------------------------------------------------------- 4. --config types


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("n_critic", True, "an integer"), ("steps", 2.5, "an integer"), ("lr_g", "0.001", "a number"),
    ("lr_d", None, "a number"), ("extra", "oops", "a JSON object"), ("flip", 1, "true or false"),
    ("clip", [True, 1.0], "a list of two numbers"), ("mode", 3, "a string"), ("data_path", 7, "a string"),
])
def test_config_file_values_are_type_checked_by_key(tmp_path: Path, key: str, value: object, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    settings = {**preset_config("smoke").to_dict(), key: value}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(SystemExit) as e:
        parse_config(["--config", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(path) in err and repr(key) in err and expected in err, err
    with pytest.raises(ConfigError, match=repr(key)):
        TrainConfig.from_dict(settings)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=int(__import__("os").environ.get("VALR_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(key=st.sampled_from(sorted(preset_config("smoke").to_dict())), value=_JSON)
def test_fuzz_config_values(key: str, value: object) -> None:
    """Any JSON value for any key of --config: it loads, or it is refused with a ConfigError
    that names the key (or, for a valid type with a bad value, the key's flag); nothing else."""
    settings_ = {**preset_config("smoke").to_dict(), key: value}
    try:
        cfg = TrainConfig.from_dict(settings_)
    except ConfigError as e:
        from train.settings import BY_NAME

        assert repr(key) in str(e) or BY_NAME[key].option in str(e), (key, value, str(e))
    else:
        assert getattr(cfg, key) == (tuple(value) if key == "clip" and isinstance(value, list) else value)
    record("config values fuzzed")


def test_config_file_accepts_ints_for_floats_and_null_for_optional() -> None:
    settings = {**preset_config("smoke").to_dict(), "lr_g": 1, "data_seed": None, "clip": [-1, 1]}
    assert TrainConfig.from_dict(settings).lr_g == 1


# ----------------------------------------------------------------------------- 5, 6. resume messages


def test_plain_resume_warns_about_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    _run(out, steps=2)
    caplog.set_level(logging.INFO, logger="valr.train")
    _run(out, steps=2, resume="auto")  # complete: restored, then stops
    cfg = _toy_cfg(out, steps=2, checkpoint_every=2, resume="auto")
    run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_longer_resume_says_how_the_learning_rate_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    _run(out, steps=4)  # lr_g = lr_d = 1e-2, linear decay: at iteration 4 of 4, 0
    caplog.set_level(logging.INFO, logger="valr.train")
    cfg = _toy_cfg(out, steps=8, checkpoint_every=2, resume="auto")
    run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)
    lines = [r.getMessage() for r in caplog.records if "learning-rate" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert "--steps 8 (was 4)" in lines[0] and "iteration 4" in lines[0] and "lr_g 0 -> 0.005" in lines[0], lines[0]


# ----------------------------------------------------------------------------- checkpoints of other releases


def test_checkpoint_records_its_release_and_an_older_one_is_refused_naming_it(tmp_path: Path) -> None:
    import valr_core
    from train.loop import ResumeError
    from train.runs import checkpoint as ckpt

    path = _run(tmp_path / "run", steps=2).checkpoint
    found = ckpt.load_checkpoint(path)
    assert found.metadata["valr_version"] == valr_core.__version__
    # A 0.1.x checkpoint: no version recorded, and a key of today's trainer state missing.
    meta = {k: v for k, v in found.metadata.items() if k != "valr_version"}
    arrays = {k: v for k, v in found.arrays.items() if not k.endswith("/ema")}
    old = tmp_path / "old" / "ckpt-000000002.npz"
    old.parent.mkdir()
    ckpt.save_checkpoint(old, arrays, {**meta, "valr_version": None})
    with pytest.raises(ResumeError, match=r"written by valr 0\.1\.x .*missing array"):
        _run(tmp_path / "new", resume=str(old))
    bumped = tmp_path / "bumped.npz"
    ckpt.save_checkpoint(bumped, found.arrays, {**found.metadata, "format_version": 99, "valr_version": "9.0.0"})
    with pytest.raises(ckpt.CheckpointError, match=r"written by valr 9\.0\.0 \(format_version 99\)"):
        ckpt.load_checkpoint(bumped)
