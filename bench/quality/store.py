"""The study's records file: the plan, one record per finished run, written atomically.

A run is finished when its record is in the file; a record counts for the current plan only
when it was trained with the plan's iterations and evaluation cadence and its cell's settings
are still the cell's definition (records of other settings stay in the file, unused)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.quality.cells import CELLS

FILE_NAME = "quality_digits.json"
FORMAT = 1


@dataclass(frozen=True)
class Plan:
    cells: dict[str, list[str]]  # framework -> cell names
    seeds: list[int]
    iterations: int
    eval_every: int

    def tasks(self) -> list[tuple[str, str, int]]:
        """(framework, cell, seed), seed-major: a study stopped half-way has the same seeds in
        every cell, which keeps the comparisons paired."""
        return [(fw, cell, seed) for seed in self.seeds for fw, cells in self.cells.items() for cell in cells]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls({fw: list(c) for fw, c in d["cells"].items()}, [int(s) for s in d["seeds"]],
                   int(d["iterations"]), int(d["eval_every"]))

    def matches(self, record: dict[str, Any]) -> bool:
        return (record.get("iterations") == self.iterations and record.get("eval_every") == self.eval_every
                and record.get("penalty") in self.cells.get(record.get("framework", ""), ())
                and record.get("seed") in self.seeds and record.get("settings") == CELLS.get(record["penalty"]))


def run_key(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["framework"], record["penalty"], int(record["seed"])


def planned_records(records: list[dict[str, Any]], plan: Plan) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The records of ``plan``'s runs, by (framework, cell, seed); the latest one of a run wins."""
    return {run_key(r): r for r in records if plan.matches(r)}


class StudyBusy(RuntimeError):
    """Another ``bench.quality`` holds the study's directory."""


class StudyFile:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILE_NAME

    def load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"format": FORMAT, "plan": None, "meta": {"commands": [], "study_s": 0.0},
                    "failures": [], "records": []}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{self.path}: not a bench.quality records file of format {FORMAT} "
                             f"(format {data.get('format')!r}); move it away to start a new study")
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Write to a temporary file beside it, fsync, then rename over: a reader (or a study
        killed mid-write) sees the old file or the new one, never a torn one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the records from other users
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One training study per directory (an flock on the directory: it is released when the
        process dies, so a killed study never leaves a stale lock)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyBusy(f"another bench.quality is training into {self.dir}; "
                                "--report-only shows its progress") from None
            yield
        finally:
            os.close(fd)
