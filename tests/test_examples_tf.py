"""examples/keras_wgan_valp.py runs (as a script and as a module), its critic's estimate moves towards
the exact W1, it reports VALP's statistics under the core's names, and it refuses bad arguments."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.framework("tf")

from tests.examples_cli import SMALL, STAT_NAMES, check_refused, check_trained_run, run_example  # noqa: E402

TOLERANCE = 0.35  # |estimate / exact W1 - 1| after 30 generator steps (150 critic steps)


def test_tf_example_estimates_w1() -> None:
    from examples import keras_wgan_valp

    history = keras_wgan_valp.main(["--steps", "30", "--eval-every", "10"])
    first, last = abs(history[0]["rel_error"]), abs(history[-1]["rel_error"])
    assert first > 0.5  # an untrained critic is far off
    assert last < first and last < TOLERANCE, history
    assert set(STAT_NAMES) <= set(history[-1]) and "mu" not in history[-1]


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_tf_example_runs_as_script_and_as_module(as_module: bool) -> None:
    check_trained_run(run_example("keras_wgan_valp", *SMALL, as_module=as_module))


@pytest.mark.parametrize(("argv", "flag"), [(["--batch", "0"], "--batch"), (["--eps-max", "-1"], "--eps-max"),
                                            (["--eps-min", "0"], "--eps-min"), (["--steps", "-2"], "--steps")])
def test_tf_example_refuses_bad_arguments(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    from examples import keras_wgan_valp

    with pytest.raises(SystemExit) as exit_info:
        keras_wgan_valp.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and flag in err[0], err


def test_tf_example_script_refuses_bad_arguments_in_one_line() -> None:
    check_refused(run_example("keras_wgan_valp", "--batch", "0", as_module=False), "--batch")
