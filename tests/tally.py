"""Counts of the bad-input and fault suite (tests/test_bad_inputs.py, tests/test_faults.py),
printed as one line at the end of a pytest session: the figures the README reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

COUNTS: Counter[str] = Counter()
KINDS = ("bad inputs", "fuzzed files", "faults injected", "runs resumed",
         # Image modes and bit depths loaded to checked values; misuses of the run tools and
         # benchmarks (train.plot, train.sample, bench.*); checkpoints refused for NaN/Inf
         # weights; zip/gzip bombs refused with bounded memory.
         "image modes checked", "tool misuses", "NaN checkpoints refused", "bombs refused",
         # Run directories and resumes refused without touching a file (tests/test_run_dirs.py);
         # --config values fuzzed per key (each loads or is refused naming its key).
         "run directories protected", "config values fuzzed")
_reported: list[bool] = []


def record(kind: str, n: int = 1) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown tally kind {kind!r}; expected one of {KINDS}")
    COUNTS[kind] += n


@pytest.fixture(scope="session", autouse=True)
def reliability_tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if COUNTS and not _reported:
        _reported.append(True)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        ok = "all passed, nothing lost" if request.session.testsfailed == 0 else "SOME FAILED"
        line = "reliability tally: " + ", ".join(f"{k}: {COUNTS[k]}" for k in KINDS) + f" ({ok})"
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
                reporter.write_line("\n" + line)
