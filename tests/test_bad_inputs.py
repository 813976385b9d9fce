"""Bad inputs and injected faults: every one is a clear error (exit status 2 for a flag or file
to fix, 1 for a run-time failure; one line naming the flag or file; a traceback only with
--debug) and nothing on disk is lost or left behind. Cases run through the CLI of the toy
trainer (framework-free, the `core` env) and of each framework's trainer in its own env.

Add a case here for every bug found. The counts of inputs, faults and resumes are printed at
the end of the session (tests/tally.py) and reported in the README.
"""

from __future__ import annotations

import builtins
import errno
import functools
import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import SELECTED
from tests.tally import record, reliability_tally  # noqa: F401 - the session fixture printing the counts
from tests.test_train_infra import ToyTrainer
from train import cli, loop
from train import data as tdata
from train.loop import NonFiniteError, run_training
from train.runs import checkpoint as ckpt

# The toy trainer runs in the framework-free env; each framework env runs its own trainer.
RUNNERS = ["numpy"] if os.environ.get("VALR_BACKENDS", "") in ("", "none") else []
RUNNERS += list(SELECTED)
FUZZ_EXAMPLES = int(os.environ.get("VALR_FUZZ_EXAMPLES", "150"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "runner" in metafunc.fixturenames:
        metafunc.parametrize("runner", RUNNERS)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread on the shared 2-core machines."""
    torch = __import__("torch") if "torch" in SELECTED else None
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    yield
    if torch is not None:
        torch.set_num_threads(before)


# ============================================================================ helpers


def _cli(runner: str, wrap: Callable | None = None) -> Callable[[Sequence[str]], int]:
    """argv -> exit status of that trainer's command line, run in this process; ``wrap``
    decorates the trainer factory (to inject faults)."""
    wrap = wrap or (lambda make: make)
    if runner == "numpy":
        return functools.partial(cli.main, "numpy", wrap(ToyTrainer))
    mod = importlib.import_module(f"train.{runner}_wgan")
    return functools.partial(cli.main, runner, wrap(mod.make_trainer), parser=getattr(mod, f"build_{runner}_parser")())


def _argv(out: Path | str, *extra: str, steps: int = 2) -> list[str]:
    return ["--preset", "smoke", "--out", str(out), "--steps", str(steps), "--batch-size", "8",
            "--log-every", "1", "--sample-every", "0", "--checkpoint-every", "1", "--keep-checkpoints", "2",
            "--no-progress", "--no-tensorboard", *extra]


def _run(runner: str, argv: Sequence[str], capsys: pytest.CaptureFixture[str],
         wrap: Callable | None = None) -> tuple[int, str]:
    capsys.readouterr()
    code = _cli(runner, wrap)(list(argv))
    return code, capsys.readouterr().err


def _assert_one_line(err: str, *needles: str) -> str:
    """Exactly one `error:` line, holding every needle, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_temp_files(root: Path) -> None:
    left = [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".preflight")]
    assert not left, left


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Makes a directory read-only. chmod does not stop root, so as root every way this code
    creates or writes files (open, os.open, os.mkdir, os.replace) is refused there instead,
    with the PermissionError a read-only directory gives."""
    chmodded: list[Path] = []
    denied: list[str] = []

    def inside(path: object) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        p = os.path.realpath(os.fsdecode(path))
        return any(p == d or p.startswith(d + os.sep) for d in denied)

    def refuse(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]

    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace

    def guarded_open(file: object, mode: str = "r", *a: object, **k: object) -> object:
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *a, **k)  # type: ignore[call-overload]

    def guarded_os_open(path: object, flags: int, *a: object, **k: object) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *a, **k)  # type: ignore[arg-type]

    def guarded_mkdir(path: object, *a: object, **k: object) -> None:
        if inside(path) and not os.path.isdir(os.fsdecode(path)):  # type: ignore[arg-type]
            refuse(path)
        real_mkdir(path, *a, **k)  # type: ignore[arg-type]

    def guarded_replace(src: object, dst: object, *a: object, **k: object) -> None:
        if inside(dst):
            refuse(dst)
        real_replace(src, dst, *a, **k)  # type: ignore[arg-type]

    def make(path: Path) -> None:
        if not IS_ROOT:
            path.chmod(0o555)
            chmodded.append(path)
            return
        if not denied:
            monkeypatch.setattr(builtins, "open", guarded_open)
            monkeypatch.setattr(os, "open", guarded_os_open)
            monkeypatch.setattr(os, "mkdir", guarded_mkdir)
            monkeypatch.setattr(os, "replace", guarded_replace)
        denied.append(os.path.realpath(path))

    yield make
    for path in chmodded:
        path.chmod(0o755)


class _FullDisk(io.RawIOBase):
    """A real file that takes ``room`` bytes, then fails every write with ENOSPC, as a full
    disk does (so the buffered close() fails again)."""

    def __init__(self, path: str | os.PathLike[str], room: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.room = room

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def fileno(self) -> int:
        return self.fd

    def write(self, b: object) -> int:
        data = bytes(memoryview(b))  # type: ignore[arg-type]
        n = min(len(data), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return os.write(self.fd, data[:n])

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def _fill_disk_for(monkeypatch: pytest.MonkeyPatch, prefix: str, room: int = 2000) -> list[str]:
    """Temp files of atomic_open whose name starts with ``prefix`` hit a full disk."""
    hit: list[str] = []
    real_open = builtins.open

    def fake_open(file: object, mode: str = "r", *a: object, **k: object) -> object:
        name = os.path.basename(os.fsdecode(file))  # type: ignore[arg-type]
        if name.startswith(prefix) and "b" in mode:
            hit.append(name)
            return io.BufferedWriter(_FullDisk(file, room))  # type: ignore[arg-type]
        return real_open(file, mode, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    return hit


# ============================================================================ output directory


def test_out_is_a_file_or_under_a_file(runner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("user data\n")
    for out in (blocker, blocker / "run"):
        code, err = _run(runner, _argv(out), capsys)
        assert code == 2
        _assert_one_line(err, "--out", str(blocker), "expected a directory")
        record("bad inputs")
    assert _snapshot(tmp_path) == {"taken": b"user data\n"}


@pytest.mark.parametrize("where", ["out", "checkpoints"])
def test_read_only_output_is_found_before_training(runner: str, where: str, tmp_path: Path, read_only,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    target = out / "checkpoints" if where == "checkpoints" else out
    target.mkdir(parents=True)
    read_only(target)
    code, err = _run(runner, _argv(out, steps=50), capsys)
    assert code == 2
    _assert_one_line(err, "--out", str(target), "not writable")
    record("bad inputs")
    # Found by the preflight: nothing trained, nothing written.
    assert not any(p.is_file() for p in out.rglob("*")), list(out.rglob("*"))


def test_too_little_disk_space_is_found_before_training(runner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    real = loop.shutil.disk_usage
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    out = tmp_path / "new" / "run"
    code, err = _run(runner, _argv(out), capsys)
    assert code == 2
    _assert_one_line(err, "--out", str(out), "not enough free disk space", "MiB")
    record("faults injected")
    assert not (tmp_path / "new").exists()  # the directories it created for the check are gone


# ============================================================================ faults during a run


def _first_run(runner: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, bytes]:
    code, err = _run(runner, _argv(out, steps=1), capsys)
    assert code == 0, err
    return _snapshot(out / "checkpoints")


@pytest.mark.parametrize("member", [".ckpt-", ".latest"])
def test_full_disk_while_checkpointing(runner: str, member: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    before = _first_run(runner, out, capsys)
    hit = _fill_disk_for(monkeypatch, member, room=2000 if member == ".ckpt-" else 0)
    code, err = _run(runner, _argv(out, "--resume", steps=3), capsys)
    record("faults injected")
    record("runs resumed")
    assert hit and code == 1
    name = "ckpt-000000002.npz" if member == ".ckpt-" else "latest"
    _assert_one_line(err, str(out / "checkpoints" / name), "No space left on device")
    # Nothing lost: the step-1 checkpoint and the pointer to it are untouched; no temp file left.
    after = _snapshot(out / "checkpoints")
    for key, value in before.items():
        assert after[key] == value, key
    assert (out / "checkpoints" / "latest").read_text().strip() == "ckpt-000000001.npz"
    _no_temp_files(out)
    json.loads((out / "config.json").read_text())
    # Room again: the run resumes from the kept checkpoint and completes.
    monkeypatch.undo()
    code, err = _run(runner, _argv(out, "--resume", steps=3), capsys)
    record("runs resumed")
    assert code == 0, err
    assert ckpt.load_latest(out / "checkpoints").step == 3


def _poison_after_generator_steps(make: Callable) -> Callable:
    """The trainer's first float state array turns NaN after every generator step, through the
    Trainer protocol only: the losses of that iteration are finite, so the NaN is first seen
    when the checkpoint after it is written (the audit hit this with --lr-g inf)."""

    def make_poisoned(cfg: object) -> object:
        trainer = make(cfg)
        real_step = trainer.generator_step

        def generator_step(step: int) -> object:
            out = real_step(step)
            state = {k: np.asarray(v) for k, v in trainer.state_arrays().items()}
            key = sorted(k for k, v in state.items() if v.dtype.kind == "f" and v.size)[0]
            trainer.load_state_arrays({**state, key: np.full_like(state[key], np.nan)})
            return out

        trainer.generator_step = generator_step
        return trainer

    return make_poisoned


def test_nan_found_at_checkpoint_honours_skip_nonfinite(runner: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    before = _first_run(runner, out, capsys)
    code, err = _run(runner, _argv(out, "--resume", "--skip-nonfinite", "2", steps=4), capsys,
                     wrap=_poison_after_generator_steps)
    record("faults injected", 3)  # three divergences: two rolled back, the third stops the run
    record("runs resumed")
    assert code == 1
    _assert_one_line(err, "trainer state array", "contains NaN/Inf", "ckpt-000000001.npz")
    rolled = [line for line in err.splitlines() if "rolled back to" in line]
    assert len(rolled) == 2 and "(2 of 2 allowed)" in rolled[-1], err
    assert _snapshot(out / "checkpoints") == before  # no NaN was ever checkpointed
    _no_temp_files(out)


class _PoisonsStateOnce(ToyTrainer):
    """Sets the generator to NaN at the end of generator step ``poison_at``, once: only the
    checkpoint after it can see the NaN (the losses of that iteration are finite)."""

    def __init__(self, cfg, *, poison_at: int, **kw) -> None:
        super().__init__(cfg, **kw)
        self.poison_at = poison_at

    def generator_step(self, step: int) -> dict[str, float]:
        out = super().generator_step(step)
        if step == self.poison_at:
            self.poison_at = -1
            self.g = np.full_like(self.g, np.nan)
        return out


@pytest.mark.parametrize("when", ["periodic", "sigterm", "final"])
def test_nan_at_each_kind_of_checkpoint_is_rolled_back(when: str, tmp_path: Path) -> None:
    from tests.test_train_infra import _TOY_DATA, _toy_cfg

    cfg = _toy_cfg(tmp_path, steps=12, checkpoint_every=5, skip_nonfinite=1)
    # Iteration i runs generator step i - 1; the checkpoint after iteration 10 (periodic), the
    # SIGTERM checkpoint after iteration 8, the final one after iteration 12.
    poison_at, signal_at = {"periodic": (9, None), "sigterm": (7, 7), "final": (11, None)}[when]
    result = run_training(_PoisonsStateOnce(cfg, poison_at=poison_at, signal_at=signal_at), cfg, data=_TOY_DATA)
    record("faults injected")
    if when == "sigterm":
        assert result.status == "interrupted" and result.step == 5
        assert result.checkpoint == tmp_path / "checkpoints" / "ckpt-000000005.npz"
        cfg = cfg.replace(resume="auto")
        result = run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)
        record("runs resumed")
    assert result.status == "completed" and result.step == 12
    for step, path in ckpt.list_checkpoints(tmp_path / "checkpoints"):
        state = ckpt.load_checkpoint(path).arrays
        assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f"), step
    # Without --skip-nonfinite the same NaN stops the run with the message, keeping the checkpoint.
    cfg = _toy_cfg(tmp_path / "strict", steps=12, checkpoint_every=5)
    with pytest.raises(NonFiniteError, match=r"trainer state array 'g' contains NaN/Inf"):
        run_training(_PoisonsStateOnce(cfg, poison_at=poison_at, signal_at=signal_at), cfg, data=_TOY_DATA)
    record("faults injected")


def test_junk_checkpoint_name_does_not_prune_real_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _first_run("numpy", out, capsys)
    junk = out / "checkpoints" / "ckpt-000000099.npz"
    junk.write_bytes(b"PK\x03\x04 not a checkpoint")
    code, err = _run("numpy", _argv(out, "--resume", steps=4), capsys)  # --keep-checkpoints 2
    record("bad inputs")
    record("runs resumed")
    assert code == 0, err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt-000000003.npz", "ckpt-000000004.npz", "ckpt-000000099.npz", "latest"]
    assert junk.read_bytes() == b"PK\x03\x04 not a checkpoint"  # left for the user, untouched
    assert not ckpt.is_checkpoint(junk) and ckpt.is_checkpoint(out / "checkpoints" / "ckpt-000000004.npz", 4)


def test_raw_pickle_member_in_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _first_run("numpy", out, capsys)
    path = out / "checkpoints" / "ckpt-000000001.npz"
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("trainer/evil.npy", pickle.dumps({"x": 1}))
    tampered = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError, match=r"member 'trainer/evil' is not a NumPy .npy array"):
        ckpt.load_checkpoint(path)
    code, err = _run("numpy", _argv(out, "--resume", steps=2), capsys)
    record("bad inputs")
    assert code == 2
    _assert_one_line(err, str(path), "'trainer/evil'")
    assert path.read_bytes() == tampered


def test_debug_flag_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run("numpy", [*_argv(blocker), "--debug"], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "PreflightError" in err
    _assert_one_line(err.split("PreflightError:")[-1], "--out")
    code, err = _run("numpy", _argv(blocker), capsys)
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "file" / "checkpoints").exists()
    # An unexpected error is one line too, with its type and a pointer to --debug.
    assert cli.describe_error(ZeroDivisionError("division by zero\nmore")) == (
        1, "ZeroDivisionError: division by zero more (run with --debug for the traceback)")


# ============================================================================ non-finite checkpoints


def _poison_checkpoint(path: Path, wanted: str) -> str:
    """Rewrites checkpoint ``path`` with NaN in the first non-empty float array whose key holds
    ``wanted``; returns that key."""
    found = ckpt.load_checkpoint(path)
    key = next(k for k, v in found.arrays.items() if wanted in k and v.dtype.kind == "f" and v.size)
    ckpt.save_checkpoint(path, {**found.arrays, key: np.full_like(found.arrays[key], np.nan)}, found.metadata)
    return key


def test_nonfinite_checkpoint_is_refused_at_load(tmp_path: Path) -> None:
    m = ckpt.CheckpointManager(tmp_path, keep=3)
    m.save(1, {"trainer/w": np.ones(4, np.float32), "data/perm": np.arange(3)}, {"framework": "numpy"})
    m.save(2, {"trainer/w": np.array([1, np.inf, np.nan, 2], np.float32), "data/perm": np.arange(3)},
           {"framework": "numpy"})
    path = tmp_path / "ckpt-000000002.npz"
    before = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(path)
    assert str(path) in str(e.value) and "'trainer/w' contains NaN/Inf (2 of 4 values)" in str(e.value)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_latest(tmp_path)
    # The refusal names the file and the older checkpoints; it is never "the last good" one.
    assert str(path) in str(e.value) and "ckpt-000000001.npz" in str(e.value) and "good" not in str(e.value)
    record("NaN checkpoints refused", 2)
    assert np.isnan(ckpt.load_checkpoint(path, allow_nonfinite=True).arrays["trainer/w"]).sum() == 1  # to inspect it
    assert path.read_bytes() == before


def test_resume_from_a_nan_checkpoint_is_refused(runner: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _first_run(runner, out, capsys)
    path = out / "checkpoints" / "ckpt-000000001.npz"
    key = _poison_checkpoint(path, "trainer/")
    poisoned = _snapshot(out / "checkpoints")
    code, err = _run(runner, _argv(out, "--resume", steps=3), capsys)
    record("NaN checkpoints refused")
    assert code == 2
    _assert_one_line(err, str(path), repr(key), "NaN/Inf")
    assert "good" not in err, err
    assert _snapshot(out / "checkpoints") == poisoned  # left untouched, nothing trained on it
    _no_temp_files(out)


# ============================================================================ run tools: train.sample, train.plot


def _sample(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from train.runs import sample

    capsys.readouterr()
    code = sample.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_refuses_nan_ema_weights(runner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _first_run(runner, out, capsys)
    path = out / "checkpoints" / "ckpt-000000001.npz"
    key = _poison_checkpoint(path, "ema")
    before = _snapshot(tmp_path)
    for checkpoint in (path, out):  # the file, and the run directory (its latest checkpoint)
        for fmt in ("png", "npz"):
            code, stdout, err = _sample([str(checkpoint), "--n", "4", "--out", str(tmp_path / "samples"),
                                         "--format", fmt], capsys)
            record("NaN checkpoints refused")
            assert code == 2 and stdout == ""
            _assert_one_line(err, str(path), repr(key), "NaN/Inf")
    assert _snapshot(tmp_path) == before and not (tmp_path / "samples").exists()  # no file written


def _synthetic_checkpoint(path: Path, **meta: object) -> Path:
    """A checkpoint with a torch run's metadata and one EMA array: enough for every refusal of
    train.sample, which all come before a trainer (and its framework) is built."""
    from train.config import preset_config

    fields = {"framework": "torch", "config": preset_config("smoke").to_dict(), "step": 1, **meta}
    return ckpt.save_checkpoint(path, {"trainer/ema/w": np.zeros(3, np.float32)},
                                {k: v for k, v in fields.items() if v is not None})


SAMPLE_MISUSES = {
    # case: (extra metadata, argv after the checkpoint, what the one line must name)
    "no config in the metadata": ({"config": None}, [], ["{ckpt}", "'config'"]),
    "config of the wrong type": ({"config": {"z_dim": "eight"}}, [], ["{ckpt}", "'z_dim'"]),
    "unknown framework": ({"framework": "numpy"}, [], ["{ckpt}", "framework 'numpy'"]),
    "--n 1000000000": ({}, ["--n", "1000000000"], ["--n 1000000000"]),
    "--n 0": ({}, ["--n", "0"], ["--n 0"]),
    "--n beyond the free memory": ({}, ["--n", "1000"], ["--n 1000", "memory"]),
    "--seed -1": ({}, ["--seed", "-1"], ["--seed"]),
    "--out is a file": ({}, ["--out", "{file}"], ["--out {file}", "existing file"]),
    "--out under a file": ({}, ["--out", "{file}/sub"], ["--out {file}/sub", "is a file"]),
    "--out holds samples": ({}, ["--out", "{samples}"], ["--out {samples}", "--overwrite"]),
    "missing checkpoint": ({}, [], ["{tmp}/nothing.npz"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_MISUSES))
def test_sample_misuse_is_one_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    meta, extra, needles = SAMPLE_MISUSES[case]
    path = _synthetic_checkpoint(tmp_path / "ckpt.npz", **meta)
    (tmp_path / "notes.txt").write_text("user data\n")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "sample_00000.png").write_bytes(b"an earlier sample")
    names = {"ckpt": str(path), "file": str(tmp_path / "notes.txt"), "samples": str(tmp_path / "kept"),
             "tmp": str(tmp_path)}
    checkpoint = str(tmp_path / "nothing.npz") if case == "missing checkpoint" else str(path)
    argv = [checkpoint, "--out", str(tmp_path / "new"), *(a.format(**names) for a in extra)]
    if case == "--n beyond the free memory":
        monkeypatch.setattr(ckpt, "available_memory", lambda: 1 << 20)
    before = _snapshot(tmp_path)
    code, stdout, err = _sample(argv, capsys)
    record("tool misuses")
    assert code == 2 and stdout == "", err
    _assert_one_line(err, *(n.format(**names) for n in needles))
    assert _snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def _write_metrics(run: Path, text: str | bytes) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "metrics.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


_METRICS = "step,critic/loss,gen/loss,valp/mu\n1,-0.5,0.2,0.1\n2,-0.4,0.3,0.2\n3,-0.3,,0.3\n"


def _plot(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from train.runs import plot

    capsys.readouterr()
    code = plot.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plot_out_directory_gets_metrics_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _write_metrics(run, _METRICS)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for out, written in ((None, run / "metrics.png"), (pictures, pictures / "metrics.png"),
                         (tmp_path / "new" / "m.png", tmp_path / "new" / "m.png")):
        code, stdout, err = _plot([str(run), *(["--out", str(out)] if out else [])], capsys)
        record("tool misuses")
        assert code == 0, err
        assert stdout.strip() == str(written)  # it says what it wrote
        assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The audit: --out DIR wrote DIR.png beside it and printed DIR.
    assert not (tmp_path / "pictures.png").exists()
    assert sorted(p.name for p in pictures.iterdir()) == ["metrics.png"]


PLOT_MISUSES = {
    # case: (metrics.csv content or None, --out, what the one line must name)
    "no step column": ("critic/loss,gen/loss\n-0.5,0.2\n", None, ["{csv}", "no 'step' column", "'critic/loss'"]),
    "empty metrics.csv": ("", None, ["{csv}", "empty"]),
    "step not a number": ("step,critic/loss\n1,0.5\nabc,0.3\n", None, ["{csv}", "line 3", "'abc'"]),
    "not UTF-8": (b"step,loss\n1,\xff\xfe\n", None, ["{csv}", "UnicodeDecodeError"]),
    "no metrics.csv": (None, None, ["{csv}", "no metrics.csv"]),
    "--out without a picture suffix": (_METRICS, "{tmp}/picture", ["--out {tmp}/picture", ".png"]),
    "--out is the metrics file": (_METRICS, "{csv}", ["--out {csv}", ".png"]),
    "--out under a file": (_METRICS, "{tmp}/notes.txt/m.png", ["--out {tmp}/notes.txt/m.png", "is a file"]),
}


@pytest.mark.parametrize("case", list(PLOT_MISUSES))
def test_plot_misuse_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, out, needles = PLOT_MISUSES[case]
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        _write_metrics(run, content)
    (tmp_path / "notes.txt").write_text("user data\n")
    names = {"csv": str(run / "metrics.csv"), "tmp": str(tmp_path)}
    before = _snapshot(tmp_path)
    code, stdout, err = _plot([str(run), *(["--out", out.format(**names)] if out else [])], capsys)
    record("tool misuses")
    assert code == 2 and stdout == "", err
    _assert_one_line(err, *(n.format(**names) for n in needles))
    assert _snapshot(tmp_path) == before  # nothing written, nothing lost


BENCH_MISUSES = [
    ("bench.trainer_timing", ["--penalties", "bogus"], "--penalties"),
    ("bench.trainer_timing", ["--frameworks", "torch,bogus"], "--frameworks"),
    ("bench.trainer_timing", ["--steps", "0"], "--steps"),
    ("bench.trainer_timing", ["--rounds", "0"], "--rounds"),
    ("bench.speed", ["--repeats", "0"], "--repeats"),
    ("bench.speed", ["--batch", "0"], "--batch"),
    ("bench.speed", ["--suite", "bogus"], "--suite"),
    ("bench.speed", ["--batches", "16,x"], "--batches"),
    ("bench.exactness", ["--seeds", "abc"], "--seeds"),
    ("bench.exactness", ["--problems", "bogus"], "--problems"),
    ("bench.exactness", ["--methods", "bogus"], "--methods"),
    ("bench.exactness", ["--n", "0"], "--n"),
    ("bench.main_job", ["--framework", "bogus"], "--framework"),
    ("bench.main_job", ["--timeout", "0"], "--timeout"),
]


@pytest.mark.parametrize(("module", "argv", "flag"), BENCH_MISUSES, ids=[" ".join(c[1]) for c in BENCH_MISUSES])
def test_bench_flags_are_argparse_errors(module: str, argv: list[str], flag: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Checked while parsing (exit status 2, one error line naming the flag), not found by a
    traceback minutes into a benchmark."""
    main = importlib.import_module(module).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    record("tool misuses")
    assert e.value.code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and f"error: argument {flag}:" in lines[0] and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [["bench.speed", "--repeats", "0"], ["bench.trainer_timing", "--penalties", "bogus"],
                                  ["bench.exactness", "--seeds", "abc"]], ids=lambda a: a[0])
def test_bench_command_lines_exit_2(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    record("tool misuses")
    assert proc.returncode == 2 and f"error: argument {argv[1]}:" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ============================================================================ data


def test_data_path_is_a_file_where_a_folder_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "images.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(a_file)
    code, err = _run("numpy", _argv(tmp_path / "run", "--data", "folder", "--data-path", str(a_file)), capsys)
    record("bad inputs")
    assert code == 2
    _assert_one_line(err, "--data-path", str(a_file), "expects a folder")
    assert not (tmp_path / "run").exists()


def _png_bytes(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr:ihdr + 17])))
    return bytes(raw)


def test_decompression_bomb_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a_fine.png")
    (folder / "b_bomb.png").write_bytes(_png_bytes(60_000, 60_000))
    with pytest.raises(tdata.DataError, match="b_bomb.png"):
        tdata.load_image_folder(folder)
    code, err = _run("numpy", _argv(tmp_path / "run", "--data", "folder", "--data-path", str(folder)), capsys)
    record("bad inputs")
    assert code == 2
    _assert_one_line(err, str(folder / "b_bomb.png"))


# -- image folders: every bit depth and mode -------------------------------------------------
#
# The policy (train.data.images._to_rgb8): 1-bit 0/1 -> 0/255; 16-bit samples v -> v >> 8 (the
# high byte, as Pillow's own decoder does for 16-bit RGB/RGBA/LA PNGs, so every 16-bit mode
# agrees); palettes resolved; alpha dropped (the stored colour is kept, like torchvision's
# loader). Images are 32x32, so the loader's crop and resize leave every pixel as it is.


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB, RGBA or LA)."""
    h, w = samples.shape[:2]
    raw = b"".join(b"\x00" + np.ascontiguousarray(samples[y]).astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _image_case(name: str, folder: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """(file written, the uint8 RGB the loader must give) for one mode or bit depth."""
    size = (32, 32)
    u8 = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (*size, 4), dtype=np.uint16)
    u16[0, :4, 0] = (0, 255, 65280, 65535)  # both ends and the byte boundary
    path = folder / f"{name}.png"
    if name == "1-bit":
        bits = rng.integers(0, 2, size).astype(bool)
        Image.fromarray(bits).save(path)
        return path, _gray3(bits.astype(np.uint8) * 255)
    if name == "8-bit L":
        Image.fromarray(u8[..., 0]).save(path)
        return path, _gray3(u8[..., 0])
    if name == "8-bit RGB":
        Image.fromarray(u8[..., :3]).save(path)
        return path, u8[..., :3]
    if name in ("16-bit I;16 PNG", "16-bit I;16 TIFF"):
        if name.endswith("TIFF"):
            path = path.with_suffix(".tif")
        Image.fromarray(u16[..., 0]).save(path)  # mode I;16
        assert Image.open(path).mode == "I;16"
        return path, _gray3((u16[..., 0] >> 8).astype(np.uint8))
    if name == "16-bit RGB":
        path.write_bytes(_png16(u16[..., :3], 2))
        return path, (u16[..., :3] >> 8).astype(np.uint8)
    if name == "16-bit RGBA":
        path.write_bytes(_png16(u16, 6))
        return path, (u16[..., :3] >> 8).astype(np.uint8)
    if name == "16-bit LA":
        path.write_bytes(_png16(u16[..., :2], 4))
        return path, _gray3((u16[..., 0] >> 8).astype(np.uint8))
    if name in ("P", "P with transparency"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.fromarray(u8[..., 0], mode="L").convert("P")
        im.putpalette(palette.tobytes())
        if name == "P with transparency":
            im.info["transparency"] = int(u8[0, 0, 0])
        im.save(path)
        return path, palette[u8[..., 0]]
    if name == "LA":
        Image.fromarray(u8[..., :2], mode="LA").save(path)
        return path, _gray3(u8[..., 0])
    if name == "RGBA":
        Image.fromarray(u8, mode="RGBA").save(path)
        return path, u8[..., :3]
    raise AssertionError(name)


IMAGE_CASES = ["1-bit", "8-bit L", "8-bit RGB", "16-bit I;16 PNG", "16-bit I;16 TIFF", "16-bit RGB", "16-bit RGBA",
               "16-bit LA", "P", "P with transparency", "LA", "RGBA"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_folder_scales_each_bit_depth_and_mode(case: str, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    path, want = _image_case(case, folder, np.random.default_rng(IMAGE_CASES.index(case)))
    got = tdata.load_image_folder(folder)
    record("image modes checked")
    assert got.dtype == np.uint8 and got.shape == (1, 32, 32, 3), (path, got.shape)
    np.testing.assert_array_equal(got[0], want, err_msg=case)
    if case.startswith("16-bit"):  # the audit: 97% of a 16-bit image's pixels clipped to 255
        assert (got == 255).mean() < 0.05


def test_image_folder_all_modes_at_once_and_in_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    cases = [_image_case(case, folder, rng) for case in IMAGE_CASES]
    got = tdata.load_image_folder(folder)
    order = sorted(range(len(cases)), key=lambda i: str(cases[i][0]))
    for row, i in enumerate(order):
        np.testing.assert_array_equal(got[row], cases[i][1], err_msg=str(cases[i][0]))
    code, err = _run("numpy", _argv(tmp_path / "run", "--data", "folder", "--data-path", str(folder)), capsys)
    record("image modes checked")
    assert code == 0, err


@pytest.mark.parametrize("mode", ["I", "F"])
def test_image_without_a_fixed_range_is_refused(mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    values = np.arange(32 * 32).reshape(32, 32) * 100_000
    path = folder / "wide.tif"
    Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(tdata.DataError, match=r"wide\.tif has 32-bit .* no fixed range"):
        tdata.load_image_folder(folder)
    code, err = _run("numpy", _argv(tmp_path / "run", "--data", "folder", "--data-path", str(folder)), capsys)
    record("image modes checked")
    assert code == 2
    _assert_one_line(err, str(path), f"mode {mode}")
    assert not (tmp_path / "run").exists()


# -- CIFAR-10 --------------------------------------------------------------------------------


class _NoFramesPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 4/5 without FRAME opcodes (they are optional), so module names can be edited."""

    def dump(self, obj: object) -> None:
        self.write(pickle.PROTO + struct.pack("<B", self.proto))
        self.save(obj)
        self.write(pickle.STOP)


def _pickle_batch(obj: object, protocol: int, numpy1_names: bool) -> bytes:
    if not numpy1_names:
        return pickle.dumps(obj, protocol=protocol)
    buf = io.BytesIO()
    _NoFramesPickler(buf, protocol=protocol).dump(obj)
    raw = buf.getvalue()
    for new in ("numpy._core.multiarray", "numpy._core.numeric"):
        old = new.replace("._core.", ".core.")
        raw = raw.replace(f"c{new}\n".encode(), f"c{old}\n".encode())  # protocols 0-2: GLOBAL
        raw = raw.replace(b"\x8c" + bytes([len(new)]) + new.encode(), b"\x8c" + bytes([len(old)]) + old.encode())
    assert b"._core." not in raw
    return raw


def _batches(seed: int = 0, n: int = 3) -> dict[str, tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in tdata.CIFAR10_TRAIN_FILES + tdata.CIFAR10_TEST_FILES:
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        out[name] = (imgs, {"batch_label": name, "labels": [int(x) for x in rng.integers(0, 10, n)],
                            "data": np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).reshape(n, -1)),
                            "filenames": [f"{name}_{i}.png" for i in range(n)]})
    return out


def _write_archive(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}")
            info.type, info.linkname = kind, target
            tar.addfile(info)


@pytest.mark.parametrize("numpy1_names", [False, True], ids=["numpy2-names", "numpy1-names"])
@pytest.mark.parametrize("protocol", range(6))
def test_cifar_pickles_of_every_protocol_load(protocol: int, numpy1_names: bool, tmp_path: Path) -> None:
    batches = _batches()
    members = {n: _pickle_batch(d, protocol, numpy1_names) for n, (_, d) in batches.items()}
    if numpy1_names:
        assert b"numpy.core." in members["data_batch_1"]
    archive = tmp_path / tdata.CIFAR10_ARCHIVE
    _write_archive(archive, members)
    images, labels = tdata.load_cifar10(archive, checksums=None, download=False, return_labels=True)
    want = np.concatenate([batches[n][0] for n in tdata.CIFAR10_TRAIN_FILES])
    np.testing.assert_array_equal(images, want)
    assert labels.tolist() == sum((batches[n][1]["labels"] for n in tdata.CIFAR10_TRAIN_FILES), [])


class _Touch:
    """Unpickling this would create ``path``: the marker that no code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("protocol", range(6))
def test_cifar_unpickler_still_refuses_code(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = {"data": _Touch(marker), "labels": []}
    with pytest.raises(tdata.DataError, match=r"global .* is not allowed"):
        tdata.decode_cifar_batch(pickle.dumps(evil, protocol=protocol), "evil_batch")
    # The allowed _codecs.encode only encodes str as latin1: no other codec (zlib_codec, ...).
    with pytest.raises(tdata.DataError, match="latin1"):
        tdata.decode_cifar_batch(b"c_codecs\nencode\n(Vabc\nVzlib_codec\ntR.", "codec_batch")
    record("bad inputs", 2)
    assert not marker.exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_cifar_archive_link_member_is_refused(kind: bytes, tmp_path: Path) -> None:
    members = {n: pickle.dumps(d, protocol=2) for n, (_, d) in _batches().items()}
    members.pop("data_batch_2")
    archive = tmp_path / tdata.CIFAR10_ARCHIVE
    _write_archive(archive, members, links={"data_batch_2": (kind, "/etc/passwd" if kind == tarfile.SYMTYPE
                                                              else f"{tdata.CIFAR10_FOLDER}/data_batch_1")})
    with pytest.raises(tdata.DataError, match=r"'cifar-10-batches-py/data_batch_2' is not a regular file \(it is a"):
        tdata.load_cifar10(archive, checksums=None, download=False)
    record("bad inputs")


# ============================================================================ fuzzing

_FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="valr-fuzz-") as d:
        yield Path(d)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None) -> bytes:
    out = bytearray(data)
    for pos, xor in edits:
        out[pos % len(out)] ^= xor
    if insert is not None:
        pos = insert[0] % (len(out) + 1)
        out[pos:pos] = insert[1]
    if cut is not None:
        del out[cut % (len(out) + 1):]
    return bytes(out)


_MUTATIONS = dict(
    edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=4),
    cut=st.none() | st.integers(0, 1 << 20),
    insert=st.none() | st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
)

_CKPT_ARRAYS = {"trainer/w": np.arange(12, dtype=np.float32).reshape(3, 4), "trainer/step": np.int64(7),
                "data/perm": np.arange(5, dtype=np.int64)}


@pytest.fixture(scope="module")
def valid_checkpoint(fuzz_dir: Path) -> bytes:
    return ckpt.save_checkpoint(fuzz_dir / "valid.npz", _CKPT_ARRAYS, {"framework": "numpy", "step": 7}).read_bytes()


def _load_checked(path: Path, want: dict[str, np.ndarray] | None, marker: Path) -> None:
    """Loads or raises CheckpointError; a load gives exactly ``want``; nothing ran."""
    try:
        got = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError:
        pass
    else:
        assert want is not None, "a damaged checkpoint loaded"
        assert set(got.arrays) == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(got.arrays[k], v, err_msg=k)
            assert got.arrays[k].dtype == np.asarray(v).dtype
    assert not marker.exists(), "loading ran code"


@_FUZZ
@given(**_MUTATIONS)
def test_fuzz_checkpoint_mutations(fuzz_dir: Path, valid_checkpoint: bytes, edits, cut, insert) -> None:
    data = _mutate(valid_checkpoint, edits, cut, insert)
    path = fuzz_dir / "mutated.npz"
    path.write_bytes(data)
    record("fuzzed files")
    # Mutations the zip format ignores (padding, comments) may load: then with equal arrays.
    _load_checked(path, dict(_CKPT_ARRAYS), fuzz_dir / "pwned")


_member_names = st.sampled_from(["trainer/w", "data/perm", ckpt.METADATA_KEY, "x", "../escape", "a/b/c"])


def _npy_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


@st.composite
def _member(draw: st.DrawFn, marker: Path) -> tuple[str, bytes, np.ndarray | None]:
    """(zip member name, bytes, the array np.load gives for it, or None for a bad member)."""
    name = draw(_member_names) + draw(st.sampled_from([".npy", ".npy", "", ".pkl"]))
    kind = draw(st.sampled_from(["array", "pickle", "object-npy", "random", "meta"]))
    if kind == "array":
        arr = np.asarray(draw(st.lists(st.floats(width=32), max_size=6)), dtype=np.float32)
        return name, _npy_of(arr), arr
    if kind == "meta":
        meta = draw(st.sampled_from([{"format_version": 1, "step": 3}, {"format_version": 2}, [1], "x"]))
        arr = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        return name, _npy_of(arr), arr
    if kind == "pickle":
        return name, pickle.dumps({"w": _Touch(marker)}, protocol=draw(st.integers(0, 5))), None
    if kind == "object-npy":
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
        return name, buf.getvalue(), None
    return name, draw(st.binary(max_size=64)), None


def _key(member_name: str) -> str:
    return member_name[:-4] if member_name.endswith(".npy") else member_name


@_FUZZ
@given(data=st.data())
def test_fuzz_checkpoint_random_members(fuzz_dir: Path, data: st.DataObject) -> None:
    marker = fuzz_dir / "pwned"
    members = data.draw(st.lists(_member(marker), max_size=5, unique_by=lambda m: _key(m[0])))
    path = fuzz_dir / "members.npz"
    with zipfile.ZipFile(path, "w", compression=data.draw(st.sampled_from([zipfile.ZIP_STORED,
                                                                          zipfile.ZIP_DEFLATED]))) as zf:
        for name, payload, _ in members:
            zf.writestr(name, payload)
    record("fuzzed files")
    try:
        got = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError:
        pass
    else:
        # It can only load when every member is a .npy array and one is valid metadata.
        want = {_key(n): a for n, _, a in members}
        assert all(a is not None for a in want.values())
        assert want.pop(ckpt.METADATA_KEY) is not None and set(got.arrays) == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(got.arrays[k], v)
    assert not marker.exists(), "loading ran code"


@pytest.fixture(scope="module")
def cifar_fuzz_base() -> dict:
    batches = _batches(seed=1, n=2)
    members = {n: pickle.dumps(d, protocol=2) for n, (_, d) in batches.items()}
    want = np.concatenate([batches[n][0] for n in tdata.CIFAR10_TRAIN_FILES])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = buf.getvalue()
    sums = tdata.Cifar10Checksums(archive=hashlib.md5(archive).hexdigest(),
                                  files={n: hashlib.md5(b).hexdigest() for n, b in members.items()})
    return {"members": members, "archive": archive, "want": want, "checksums": sums}


def _load_cifar_checked(path: Path, checksums: tdata.Cifar10Checksums | None, want: np.ndarray | None,
                        marker: Path) -> None:
    try:
        images = tdata.load_cifar10(path, checksums=checksums, download=False)
    except tdata.DataError:
        pass
    else:
        assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        if want is not None:
            np.testing.assert_array_equal(images, want)
    assert not marker.exists(), "loading ran code"


@_FUZZ
@given(checked=st.booleans(), **_MUTATIONS)
def test_fuzz_cifar_archive_mutations(fuzz_dir: Path, cifar_fuzz_base: dict, checked: bool,
                                      edits, cut, insert) -> None:
    path = fuzz_dir / "cifar" / tdata.CIFAR10_ARCHIVE
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(_mutate(cifar_fuzz_base["archive"], edits, cut, insert))
    record("fuzzed files")
    # gzip's CRC-32 (and with checksums the MD5s) make any accepted archive the original one.
    _load_cifar_checked(path, cifar_fuzz_base["checksums"] if checked else None, cifar_fuzz_base["want"],
                        fuzz_dir / "pwned")


@functools.cache
def _batch_pickles(protocol: int) -> dict[str, bytes]:
    return {n: pickle.dumps(d, protocol=protocol) for n, (_, d) in _batches(seed=1, n=2).items()
            if n in tdata.CIFAR10_TRAIN_FILES}


@_FUZZ
@given(which=st.sampled_from(tdata.CIFAR10_TRAIN_FILES), protocol=st.integers(0, 5), **_MUTATIONS)
def test_fuzz_cifar_batch_pickles(fuzz_dir: Path, cifar_fuzz_base: dict, which: str, protocol: int,
                                  edits, cut, insert) -> None:
    """Mutated batch pickles inside an intact archive reach the unpickler itself. Without
    checksums a changed pixel byte cannot be detected, so a load need only be well-formed."""
    folder = fuzz_dir / "folder" / tdata.CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in _batch_pickles(protocol).items():
        (folder / name).write_bytes(_mutate(raw, edits, cut, insert) if name == which else raw)
    record("fuzzed files")
    _load_cifar_checked(folder, None, None, fuzz_dir / "pwned")


@_FUZZ
@given(kinds=st.lists(st.sampled_from(["file", "symlink", "hardlink", "dir", "fifo", "missing", "junk"]),
                      min_size=5, max_size=5))
def test_fuzz_cifar_archive_member_types(fuzz_dir: Path, cifar_fuzz_base: dict, kinds: list[str]) -> None:
    path = fuzz_dir / "types" / tdata.CIFAR10_ARCHIVE
    path.parent.mkdir(exist_ok=True)
    types = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
             "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in zip(tdata.CIFAR10_TRAIN_FILES, kinds, strict=True):
            info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}")
            if kind in ("file", "junk"):
                payload = cifar_fuzz_base["members"][name] if kind == "file" else b"\x80\x05junk"
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind != "missing":
                info.type = types[kind]
                info.linkname = f"{tdata.CIFAR10_FOLDER}/data_batch_1" if "link" in kind else ""
                tar.addfile(info)
    record("fuzzed files")
    _load_cifar_checked(path, None, cifar_fuzz_base["want"] if set(kinds) == {"file"} else None, fuzz_dir / "pwned")
    if set(kinds) != {"file"}:
        with pytest.raises(tdata.DataError):
            tdata.load_cifar10(path, checksums=None, download=False)


# Which Pillow modes each format writes (and the loader's extension for it).
_SAVABLE = {
    "1": ("PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP"), "L": ("PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP"),
    "P": ("PNG", "TIFF", "GIF", "WEBP"), "RGB": ("PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP"),
    "RGBA": ("PNG", "TIFF", "WEBP"), "LA": ("PNG", "TIFF", "WEBP"), "PA": ("TIFF",), "I": ("TIFF",),
    "I;16": ("PNG", "TIFF"), "I;16B": ("PNG", "TIFF"), "F": ("TIFF",), "CMYK": ("TIFF", "JPEG"),
    "YCbCr": ("TIFF",), "LAB": ("TIFF",),
}
_EXT = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "JPEG": ".jpg", "WEBP": ".webp"}


@st.composite
def _image_file(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(extension, bytes, whether the loader must accept it): a random-mode image, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(sorted(_EXT.values()))), draw(st.binary(max_size=512)), False
    mode = draw(st.sampled_from(sorted(_SAVABLE)))
    fmt = draw(st.sampled_from(_SAVABLE[mode]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    im = Image.new(mode, size)
    im.frombytes(rng.bytes(len(im.tobytes())))
    if mode in ("P", "PA"):
        im.putpalette(rng.bytes(768))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    mutated = draw(st.booleans())
    if mutated:
        data = _mutate(data, draw(_MUTATIONS["edits"]), draw(_MUTATIONS["cut"]), draw(_MUTATIONS["insert"]))
    # Unaltered files of every mode with a fixed range load; I (32-bit) and F are refused.
    return _EXT[fmt], data, not mutated and mode not in ("I", "F")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on damaged metadata
@_FUZZ
@given(case=_image_file())
def test_fuzz_image_folder(fuzz_dir: Path, case: tuple[str, bytes, bool]) -> None:
    """Random bytes and random Pillow modes (mutated or not): the folder loader either gives
    uint8 NHWC or raises DataError naming the file, never another error."""
    ext, data, must_load = case
    folder = fuzz_dir / "image-folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    path = folder / f"image{ext}"
    path.write_bytes(data)
    record("fuzzed files")
    # A mutated header may declare a huge image: Pillow refuses one above 2 x MAX_IMAGE_PIXELS,
    # so a low limit keeps the fuzzing from allocating big images.
    before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 1 << 20
    try:
        images = tdata.load_image_folder(folder)
    except tdata.DataError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        assert not must_load, f"an intact image was refused: {e}"
    else:
        assert images.dtype == np.uint8 and images.shape == (1, 32, 32, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = before


# ============================================================================ frameworks


@pytest.mark.framework("torch")
def test_torch_valp_under_inference_mode_says_why() -> None:
    torch = pytest.importorskip("torch")
    from valr_core import VALP

    valp = VALP(backend="torch")
    critic = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(6, 4)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"outside torch\.inference_mode\(\)"):
        valp.loss(critic, x, torch.Generator().manual_seed(0))
    record("bad inputs")
    # Outside it (no_grad included) the penalty works.
    with torch.no_grad():
        loss, _ = valp.loss(critic, x, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
