"""The examples' settings (examples/common.py): every bad value is refused in one line naming
its flag, with exit status 2, before any framework is loaded."""

from __future__ import annotations

import pytest

from examples.common import parse_args

BAD = [
    (["--batch", "0"], "--batch"),
    (["--batch", "-3"], "--batch"),
    (["--batch", "abc"], "--batch"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--n-critic", "0"], "--n-critic"),
    (["--eval-every", "0"], "--eval-every"),
    (["--eps-max", "0"], "--eps-max"),
    (["--eps-max", "-1"], "--eps-max"),
    (["--eps-max", "inf"], "--eps-max"),
    (["--eps-min", "0"], "--eps-min"),
    (["--eps-min", "-0.5"], "--eps-min"),
    (["--eps-min", "2", "--eps-max", "1"], "--eps-min"),
    (["--lr-critic", "0"], "--lr-critic"),
    (["--lr-gen", "-1e-4"], "--lr-gen"),
    (["--rho", "-1"], "--rho"),
    (["--rho", "nan"], "--rho"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_refused_in_one_line(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args("doc", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and f"argument {flag}" in err[0], err


def test_good_values_pass() -> None:
    args = parse_args("doc", ["--batch", "1", "--steps", "1", "--eps-min", "0.5", "--eps-max", "0.5", "--rho", "0", "--seed", "0"])
    assert (args.batch, args.steps, args.eps_min, args.eps_max, args.rho, args.seed) == (1, 1, 0.5, 0.5, 0.0, 0)
    defaults = parse_args("doc", [])
    assert 0 < defaults.eps_min <= defaults.eps_max
