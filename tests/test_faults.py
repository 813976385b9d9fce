"""Crash safety of the training loop: a run SIGKILLed at random moments, several times, always
resumes from its last complete checkpoint, never sees a half-written one, and ends exactly where
an uninterrupted run ends. Uses the loop's pure-NumPy toy trainer (tests/test_train_infra.py),
so it runs in every env; the framework trainers share this loop and checkpoint code.

Decompression bombs (a zip checkpoint, a gzip CIFAR-10 archive) are refused before they are
inflated, with peak memory measured."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.tally import record, reliability_tally  # noqa: F401 - the session fixture printing the counts
from train import data as tdata
from train.runs import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
RUN = """
import sys
import numpy as np
from tests.test_train_infra import ToyTrainer
from train.cli import main
sys.exit(main("numpy", ToyTrainer, sys.argv[1:]))
"""


def _argv(out: Path, resume: bool) -> list[str]:
    # A checkpoint every iteration makes kills during a write likely.
    argv = ["--preset", "smoke", "--out", str(out), "--steps", "400", "--n-critic", "1", "--batch-size", "8",
            "--gen-batch-size", "8", "--z-dim", "4", "--checkpoint-every", "1", "--keep-checkpoints", "3",
            "--sample-every", "1000", "--log-every", "5", "--no-progress", "--no-tensorboard"]
    return argv + (["--resume"] if resume else [])


def _start(out: Path, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", RUN, *_argv(out, resume)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _complete_checkpoints(out: Path) -> list[int]:
    """Every checkpoint under its final name must load: atomic writes leave none half-written."""
    steps = []
    for step, path in ckpt.list_checkpoints(out / "checkpoints"):
        loaded = ckpt.load_checkpoint(path)
        assert loaded.step == step
        steps.append(step)
    return steps


def _made_progress(out: Path, step: int) -> bool:
    latest = out / "checkpoints" / "latest"
    try:
        name = latest.read_text().strip()
    except OSError:
        return False
    return name.startswith("ckpt-") and int(name[5:14]) >= step


def test_random_sigkills_never_corrupt_and_resume_exactly(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = _start(reference, resume=False)
    assert done.wait(timeout=300) == 0, done.stderr.read()

    out = tmp_path / "killed"
    rng = np.random.default_rng(20261127)
    last_step = 0
    for attempt in range(4):
        proc = _start(out, resume=attempt > 0)
        # Kill at a random moment once the run has made progress (20+ new checkpoints), so the
        # kill lands mid-training, often mid-write, however fast or loaded the machine is.
        deadline = time.monotonic() + 120
        while not _made_progress(out, last_step + 20):
            assert proc.poll() is None, f"run ended early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        record("faults injected")
        record("runs resumed", attempt > 0)
        steps = _complete_checkpoints(out)
        assert steps and steps[-1] >= last_step + 20  # progress is never lost
        last_step = steps[-1]
    final = _start(out, resume=True)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    record("runs resumed")

    a = ckpt.load_latest(reference / "checkpoints")
    b = ckpt.load_latest(out / "checkpoints")
    assert a is not None and b is not None and a.step == b.step == 400
    assert set(a.arrays) == set(b.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)
    assert not list((out / "checkpoints").glob(".*.tmp*")), "stale temp files are cleaned on resume"


# ============================================================================ decompression bombs
#
# A checkpoint (.npz, a zip) or a CIFAR-10 archive (.tar.gz) a few KiB on disk can inflate to
# gigabytes. The audit saw 1.4 GiB (zip) and 1.1 GiB (gzip) peaks before the files were
# rejected. Both loaders now check declared sizes (zip directory, .npy header, tar header)
# and cap the gzip stream, so a bomb is refused before it is inflated: peak memory, measured
# with tracemalloc, stays at a few MiB.

MiB = 1 << 20


def _peak_while(fn: Callable[[], object]) -> tuple[BaseException | None, int, float]:
    """(the exception ``fn`` raised, peak traced memory in bytes, seconds)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        error: BaseException | None = e
    else:
        error = None
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak, seconds


def _zip_bomb(path: Path, inflated: int, declare: int | None = None) -> Path:
    """A checkpoint-shaped .npz whose member 'trainer/w' inflates to ``inflated`` bytes of zeros
    (deflated to ~1/1000); ``declare`` overwrites the size its zip directory declares."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("trainer/w.npy", "w", force_zip64=declare is None) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (inflated // 4,)})
            zeros = bytes(MiB)
            for _ in range(inflated // MiB):
                member.write(zeros)
        meta = np.frombuffer(json.dumps({"format_version": ckpt.FORMAT_VERSION, "step": 1}).encode(), np.uint8)
        with zf.open(ckpt.METADATA_KEY + ".npy", "w") as member:
            np.lib.format.write_array(member, meta)
    if declare is not None:  # the uncompressed size in the central directory entry of trainer/w.npy
        raw = bytearray(path.read_bytes())
        entry = raw.index(b"PK\x01\x02")
        while raw[entry + 46:entry + 46 + len(b"trainer/w.npy")] != b"trainer/w.npy":
            entry = raw.index(b"PK\x01\x02", entry + 4)
        raw[entry + 24:entry + 28] = struct.pack("<I", declare)
        path.write_bytes(bytes(raw))
    return path


ZIP_BOMBS = {
    # case: (bytes it inflates to, size declared in the zip directory, cap passed or None for the default)
    "declares 4 GiB (default cap)": (MiB, 0xFFFF_FFF0, None),
    "inflates to 64 MiB (cap 1 MiB)": (64 * MiB, None, MiB),
    "understates its size": (64 * MiB, 4096, None),
}


@pytest.mark.parametrize("case", list(ZIP_BOMBS))
def test_zip_bomb_checkpoint_is_refused_before_inflating(case: str, tmp_path: Path) -> None:
    inflated, declare, cap = ZIP_BOMBS[case]
    path = _zip_bomb(tmp_path / "ckpt-000000001.npz", inflated, declare)
    assert path.stat().st_size < inflated // 100 + 64 * 1024  # a bomb: tiny on disk
    kwargs = {} if cap is None else {"max_bytes": cap}
    error, peak, seconds = _peak_while(lambda: ckpt.load_checkpoint(path, **kwargs))
    record("bombs refused")
    assert isinstance(error, ckpt.CheckpointError) and str(path) in str(error), error
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB traced while refusing {case}"
    assert seconds < 10


def test_zip_bomb_checkpoint_is_one_line_for_resume_and_sample(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_bad_inputs import _argv, _assert_one_line
    from tests.test_train_infra import ToyTrainer
    from train.cli import main
    from train.runs import sample

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    path = _zip_bomb(out / "checkpoints" / "ckpt-000000001.npz", MiB, declare=0xFFFF_FFF0)
    (out / "checkpoints" / "latest").write_text(path.name + "\n")
    before = path.read_bytes()
    capsys.readouterr()
    assert main("numpy", ToyTrainer, _argv(out, "--resume", steps=2)) == 2
    _assert_one_line(capsys.readouterr().err, str(path), "declares", "refusing to decompress")
    assert sample.main([str(path), "--out", str(tmp_path / "samples")]) == 2
    _assert_one_line(capsys.readouterr().err, str(path), "declares")
    record("bombs refused", 2)
    assert path.read_bytes() == before and not (tmp_path / "samples").exists()


def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}" if kind == tarfile.REGTYPE else name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _gz(path: Path, parts: list[bytes | int]) -> Path:
    """Writes the gzip of ``parts``: bytes as they are, an int as that many zero bytes."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        for part in parts:
            if isinstance(part, int):
                for _ in range(part // MiB):
                    f.write(bytes(MiB))
            else:
                f.write(part)
    return path


def _small_batch(name: str) -> bytes:
    imgs = np.zeros((2, 3072), np.uint8)
    return pickle.dumps({"data": imgs, "labels": [0, 1], "batch_label": name}, protocol=2)


def _member(name: str, payload: bytes) -> bytes:
    return _tar_header(name, len(payload)) + payload + bytes(-len(payload) % tarfile.BLOCKSIZE)


CIFAR_BOMBS = {
    # case: (gzip parts, cap passed or None for the default, what the error says)
    "member declares 1.1 GiB (default cap)": ([_tar_header("data_batch_1", 1100 * MiB), 4 * MiB], None,
                                              "member 'cifar-10-batches-py/data_batch_1' holds 1100.0 MiB"),
    "member of 16 MiB zeros (cap 1 MiB)": ([_tar_header("data_batch_1", 16 * MiB), 16 * MiB], MiB, "holds 16.0 MiB"),
    "long-name header declares 512 MiB": ([_tar_header("././@LongLink", 512 * MiB, tarfile.GNUTYPE_LONGNAME), MiB],
                                          None, "holds 512.0 MiB"),
    "many members under the cap (cap 1 MiB)": ([_tar_header(f"junk_{i}", MiB - 512) + bytes(MiB - 512)
                                                for i in range(12)], MiB, "decompresses to more than 8 MiB"),
    "a gzip stream of zeros (cap 1 MiB)": ([64 * MiB], MiB, "has no member"),
    "zeros after the archive (cap 64 KiB)": ([*(_member(n, _small_batch(n)) for n in tdata.CIFAR10_TRAIN_FILES),
                                              16 * MiB], 64 * 1024, "decompresses to more than"),
}


@pytest.mark.parametrize("case", list(CIFAR_BOMBS))
def test_gzip_bomb_cifar_archive_is_refused_before_inflating(case: str, tmp_path: Path) -> None:
    parts, cap, message = CIFAR_BOMBS[case]
    path = _gz(tmp_path / tdata.CIFAR10_ARCHIVE, parts)
    kwargs = {} if cap is None else {"max_member_bytes": cap}
    error, peak, seconds = _peak_while(lambda: tdata.load_cifar10(path, checksums=None, download=False, **kwargs))
    record("bombs refused")
    assert isinstance(error, tdata.DataError) and str(path) in str(error) and message in str(error), error
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB traced while refusing {case}"
    assert seconds < 10


def test_small_archive_still_loads_under_a_small_cap(tmp_path: Path) -> None:
    """The caps refuse bombs, not real data: the same members without the padding load."""
    path = _gz(tmp_path / tdata.CIFAR10_ARCHIVE, [_member(n, _small_batch(n)) for n in tdata.CIFAR10_TRAIN_FILES])
    images = tdata.load_cifar10(path, checksums=None, download=False, max_member_bytes=64 * 1024)
    assert images.shape == (10, 32, 32, 3)
