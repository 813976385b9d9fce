"""Each framework's example (examples/<name>.py) runs as a script and as a module, moves its
critic's estimate towards the exact W1, reports VALP's statistics under the core's names and
refuses bad arguments in one line: one contract, parametrised over the frameworks under test."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from tests.examples_cli import SMALL, STAT_NAMES, check_refused, check_trained_run, run_example

EXAMPLES = {"torch": "torch_wgan_valp", "tf": "keras_wgan_valp", "jax": "jax_wgan_valp"}
TOLERANCE = 0.35  # |estimate / exact W1 - 1| after 30 generator steps (150 critic steps)


def _main(framework: str) -> Callable[[list[str]], list[dict]]:
    return importlib.import_module(f"examples.{EXAMPLES[framework]}").main


def test_example_estimates_w1(framework: str, one_torch_thread: None) -> None:
    history = _main(framework)(["--steps", "30", "--eval-every", "10"])
    first, last = abs(history[0]["rel_error"]), abs(history[-1]["rel_error"])
    assert first > 0.5  # an untrained critic is far off
    assert last < first and last < TOLERANCE, history
    assert set(STAT_NAMES) <= set(history[-1]) and "mu" not in history[-1]


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_example_runs_as_script_and_as_module(framework: str, as_module: bool) -> None:
    check_trained_run(run_example(EXAMPLES[framework], *SMALL, as_module=as_module))


@pytest.mark.parametrize(("argv", "flag"), [(["--batch", "0"], "--batch"), (["--eps-max", "-1"], "--eps-max"),
                                            (["--eps-min", "0"], "--eps-min"), (["--steps", "-2"], "--steps")])
def test_example_refuses_bad_arguments(framework: str, argv: list[str], flag: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _main(framework)(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and flag in err[0], err


def test_example_script_refuses_bad_arguments_in_one_line(framework: str) -> None:
    check_refused(run_example(EXAMPLES[framework], "--batch", "0", as_module=False), "--batch")
