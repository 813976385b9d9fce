"""Tests of the framework-neutral training infrastructure (train/*): no torch/TF/JAX needed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train import data as tdata
from train.cli import main
from train.config import (
    ConfigError,
    TrainConfig,
    build_parser,
    config_from_args,
    lr_at,
    parse_config,
    preset_config,
)
from train.evaluation import inception as tmetrics
from train.loop import NonFiniteError, ResumeError, RunResult, run_training
from train.runs import checkpoint as ckpt
from train.runs import logs as tlogs

REPO = Path(__file__).resolve().parents[1]

# ============================================================================ CIFAR fixtures


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes protocol 2 the way Python 2's cPickle wrote CIFAR-10: str and bytes as
    (SHORT_)BINSTRING and NumPy's reconstructor under its old module name."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch_bytes(images_nhwc: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    planar = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1)
    return py2_pickle({
        "batch_label": f"{name} of 5",
        "labels": [int(x) for x in labels],
        "data": np.ascontiguousarray(planar),
        "filenames": [f"img_{i}.png" for i in range(len(images_nhwc))],
    })


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 6-image-per-batch CIFAR-10 python archive in the official layout, with its checksums."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    train_imgs = []
    for name in tdata.CIFAR10_TRAIN_FILES + tdata.CIFAR10_TEST_FILES:
        imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 6)
        files[name] = _batch_bytes(imgs, labels, name)
        if name != "test_batch":
            train_imgs.append(imgs)
    files["batches.meta"] = py2_pickle({"label_names": ["airplane"] * 10, "num_cases_per_batch": 6})
    archive = root / tdata.CIFAR10_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{tdata.CIFAR10_FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    sums = tdata.Cifar10Checksums(
        archive=hashlib.md5(archive.read_bytes()).hexdigest(),
        files={n: hashlib.md5(b).hexdigest() for n, b in files.items()},
    )
    return {"root": root, "archive": archive, "checksums": sums, "train": np.concatenate(train_imgs)}


# ============================================================================ data


def test_py2_format_fixture_looks_like_cifar(tiny_cifar: dict) -> None:
    raw = _batch_bytes(tiny_cifar["train"][:1], np.zeros(1, int), "x")
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"U\x04data" in raw  # a Python 2 str key, as in the official files


def test_cifar_archive_loads(tiny_cifar: dict) -> None:
    imgs = tdata.load_cifar10(tiny_cifar["archive"], checksums=tiny_cifar["checksums"], download=False)
    assert imgs.dtype == np.uint8 and imgs.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(imgs, tiny_cifar["train"])
    test_imgs, labels = tdata.load_cifar10(tiny_cifar["root"], split="test", checksums=tiny_cifar["checksums"],
                                           download=False, return_labels=True)
    assert test_imgs.shape == (6, 32, 32, 3) and labels.shape == (6,)


def test_cifar_extracted_folder_and_env_var(tiny_cifar: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tarfile.open(tiny_cifar["archive"]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(tmp_path)
    sums = tiny_cifar["checksums"]
    for p in (tmp_path, tmp_path / tdata.CIFAR10_FOLDER):
        np.testing.assert_array_equal(tdata.load_cifar10(p, checksums=sums, download=False), tiny_cifar["train"])
    monkeypatch.setenv(tdata.CIFAR10_ENV, str(tmp_path))
    np.testing.assert_array_equal(tdata.load_cifar10(checksums=sums, download=False), tiny_cifar["train"])
    # A modified extracted batch fails its per-file checksum, naming the file.
    bad = tmp_path / tdata.CIFAR10_FOLDER / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:-1] + b"!")
    with pytest.raises(tdata.ChecksumError, match=r"data_batch_3.*expected MD5 " + sums.files["data_batch_3"]):
        tdata.load_cifar10(tmp_path, checksums=sums, download=False)


def test_cifar_corrupt_and_truncated_archives(tiny_cifar: dict, tmp_path: Path) -> None:
    good = tiny_cifar["archive"].read_bytes()
    sums = tiny_cifar["checksums"]
    corrupt = tmp_path / "corrupt" / tdata.CIFAR10_ARCHIVE
    corrupt.parent.mkdir()
    corrupt.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    actual = hashlib.md5(corrupt.read_bytes()).hexdigest()
    with pytest.raises(tdata.ChecksumError) as e:
        tdata.load_cifar10(corrupt, checksums=sums, download=False)
    assert str(corrupt) in str(e.value) and sums.archive in str(e.value) and actual in str(e.value)

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(tdata.ChecksumError, match="truncated.tar.gz"):
        tdata.load_cifar10(truncated, checksums=sums, download=False)
    # Without checksums the damage is still reported clearly, naming the archive.
    with pytest.raises(tdata.DataError, match=r"truncated.tar.gz is corrupt or truncated"):
        tdata.load_cifar10(truncated, checksums=None, download=False)


def test_cifar_missing_gives_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tdata.DataNotFoundError) as e:
        tdata.load_cifar10(tmp_path, download=False)
    msg = str(e.value)
    for part in (str(tmp_path), tdata.CIFAR10_ARCHIVE, tdata.CIFAR10_FOLDER, "--data-path", "VALR_CIFAR10",
                 tdata.CIFAR10_URL):
        assert part in msg
    calls = []
    monkeypatch.setattr(tdata.cifar10, "_can_connect", lambda *a: calls.append(a) or False)
    with pytest.raises(tdata.DataNotFoundError, match="no connection"):
        tdata.load_cifar10(tmp_path, download=True)
    assert calls and not list(tmp_path.iterdir())


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    with pytest.raises(tdata.DataError, match=r"builtins?__?\.print' is not allowed"):
        tdata.decode_cifar_batch(pickle.dumps({"data": Evil()}, protocol=2), "evil_batch")
    with pytest.raises(tdata.DataError, match="not a CIFAR-10 batch"):
        tdata.decode_cifar_batch(pickle.dumps({"x": 1}, protocol=2), "odd_batch")


def test_digits_dataset() -> None:
    d = tdata.load_dataset("digits")
    assert d.shape == (1797, 32, 32, 3) and d.dtype == np.uint8
    assert (d[..., 0] == d[..., 2]).all() and d.max() > 200 and d.min() == 0


def test_image_folder(tmp_path: Path) -> None:
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16] = (255, 0, 0)
    wide[:, 16:48] = (0, 255, 0)
    wide[:, 48:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray(np.full((100, 80), 128, np.uint8)).save(sub / "b_gray.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    imgs = tdata.load_dataset("folder", tmp_path)
    assert imgs.shape == (2, 32, 32, 3) and imgs.dtype == np.uint8
    # Center crop keeps only the green middle half of the wide image.
    assert (imgs[0, :, :, 1] == 255).all() and (imgs[0, :, :, 0] == 0).all()
    assert abs(int(imgs[1].mean()) - 128) <= 2
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(tdata.DataError, match="broken.png"):
        tdata.load_image_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(tdata.DataError, match="contains no images"):
        tdata.load_image_folder(empty)


def test_preprocessing_range_and_determinism() -> None:
    imgs = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    plain = tdata.to_model_range(imgs, None, flip=False, dequantize=False)
    assert plain.dtype == np.float32 and plain.min() >= -1 and plain.max() <= 1
    np.testing.assert_array_equal(tdata.to_uint8(plain), imgs)
    a = tdata.to_model_range(imgs, np.random.default_rng(5))
    b = tdata.to_model_range(imgs, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1 and a.max() < 1
    # Dequantised values stay inside their own quantisation bin (up to the flip).
    flipped = np.abs(tdata.to_uint8(a).astype(int) - imgs).max(axis=(1, 2, 3)) > 1
    assert 0 < flipped.sum() < 16
    with pytest.raises(ValueError, match="explicit np.random.Generator"):
        tdata.to_model_range(imgs, None)


def test_batch_iterator_resume_is_exact(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    it = tdata.BatchIterator(data, 8, seed=3)
    for _ in range(5):  # crosses epoch boundaries (2 batches per epoch)
        next(it)
    arrays, meta = it.export_state()
    # Through a real checkpoint: npz arrays + JSON metadata.
    ckpt.save_checkpoint(tmp_path / "it.npz", arrays, {"it": meta})
    loaded = ckpt.load_checkpoint(tmp_path / "it.npz")
    expected = [next(it) for _ in range(7)]
    resumed = tdata.BatchIterator(data, 8, seed=999)
    resumed.import_state(loaded.arrays, json.loads(json.dumps(loaded.metadata["it"])))
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    assert resumed.epoch == it.epoch
    with pytest.raises(ValueError, match="'batch_size' is 8 in the checkpoint but 4 in this run"):
        tdata.BatchIterator(data, 4, seed=3).import_state(arrays, meta)
    with pytest.raises(ValueError, match="data_fingerprint"):
        tdata.BatchIterator(data[::-1].copy(), 8, seed=3).import_state(arrays, meta)


# ============================================================================ checkpoints


def test_checkpoint_roundtrip_and_reserved_names(tmp_path: Path) -> None:
    arrays = {"gen/w": np.arange(6, dtype=np.float32).reshape(2, 3), "file": np.int64(3),
              "allow_pickle": np.array([True, False]), "rng": ckpt.json_to_array({"s": 2**100})}
    path = ckpt.save_checkpoint(tmp_path / "a.npz", arrays, {"framework": "numpy", "step": 3})
    c = ckpt.load_checkpoint(path)
    assert set(c.arrays) == set(arrays) and c.step == 3 and c.metadata["format_version"] == ckpt.FORMAT_VERSION
    np.testing.assert_array_equal(c.arrays["gen/w"], arrays["gen/w"])
    assert c.arrays["file"].shape == () and c.arrays["file"] == 3  # scalars stay 0-d
    assert ckpt.array_to_json(c.arrays["rng"]) == {"s": 2**100}
    with np.load(path, allow_pickle=False) as z:  # plain NumPy can read it too
        assert "gen/w" in z.files
    with pytest.raises(ValueError, match="'bad' has object dtype"):
        ckpt.save_checkpoint(tmp_path / "b.npz", {"bad": np.array([None])}, {})
    with pytest.raises(ValueError, match="reserved"):
        ckpt.save_checkpoint(tmp_path / "b.npz", {"__x": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="not strict JSON"):
        ckpt.save_checkpoint(tmp_path / "b.npz", {}, {"x": float("nan")})
    assert not list(tmp_path.glob(".*"))  # failed writes leave no temp files


def test_manager_keeps_last_n_and_pointer(tmp_path: Path) -> None:
    m = ckpt.CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        m.save(step, {"x": np.full(3, step)}, {"framework": "numpy"})
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000000004.npz"
    latest = ckpt.load_latest(tmp_path)
    assert latest is not None and latest.step == 4 and latest.arrays["x"][0] == 4
    assert ckpt.load_latest(tmp_path / "nothing") is None


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    m = ckpt.CheckpointManager(tmp_path, keep=3)
    m.save(5, {"x": np.full(4, 5.0)}, {"framework": "numpy"})
    before = (tmp_path / "ckpt-000000005.npz").read_bytes()
    # A real crash: a child process dies (os._exit) inside fsync, after writing the temp file.
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from train.runs import checkpoint as ckpt
        os.fsync = lambda fd: os._exit(17)
        ckpt.CheckpointManager({str(tmp_path)!r}).save(6, {{"x": np.full(100000, 6.0)}}, {{"framework": "numpy"}})
    """)
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 17
    stale = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert stale, "the crashed writer should have left a temp file behind"
    latest = ckpt.load_latest(tmp_path)
    assert latest is not None and latest.step == 5 and latest.arrays["x"][0] == 5.0
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # stale temp removed
    assert (tmp_path / "ckpt-000000005.npz").read_bytes() == before


def test_exception_mid_write_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = ckpt.CheckpointManager(tmp_path)
    m.save(1, {"x": np.ones(2)}, {})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(KeyboardInterrupt):
        m.save(2, {"x": np.ones(2)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001.npz", "latest"]


def test_corrupt_latest_is_reported_not_overwritten(tmp_path: Path) -> None:
    m = ckpt.CheckpointManager(tmp_path, keep=3)
    m.save(1, {"x": np.ones(1000)}, {})
    m.save(2, {"x": np.ones(1000)}, {})
    path = tmp_path / "ckpt-000000002.npz"
    path.write_bytes(path.read_bytes()[:-300])  # truncated
    damaged = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_latest(tmp_path)
    assert str(path) in str(e.value) and "corrupt or truncated" in str(e.value)
    assert "ckpt-000000001.npz" in str(e.value)
    assert path.read_bytes() == damaged
    # Bit flip inside an array: caught by the zip CRC.
    data = bytearray((tmp_path / "ckpt-000000001.npz").read_bytes())
    data[200] ^= 0xFF
    (tmp_path / "ckpt-000000001.npz").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="ckpt-000000001.npz"):
        ckpt.load_checkpoint(tmp_path / "ckpt-000000001.npz")


def test_validation_messages() -> None:
    arrays = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    spec = ckpt.array_spec(arrays)
    ckpt.validate_arrays(arrays, spec)
    with pytest.raises(ValueError, match=r"missing array 'b'"):
        ckpt.validate_arrays({"w": arrays["w"]}, spec)
    with pytest.raises(ValueError, match=r"'w' has shape \(3, 2\), expected \(2, 3\)"):
        ckpt.validate_arrays({**arrays, "w": np.zeros((3, 2), np.float32)}, spec)
    with pytest.raises(ValueError, match=r"'b' has dtype float64, expected float32"):
        ckpt.validate_arrays({**arrays, "b": np.zeros(3)}, spec)
    with pytest.raises(ValueError, match=r"unexpected array 'z'"):
        ckpt.validate_arrays({**arrays, "z": np.zeros(1)}, spec)
    meta = {"format_version": ckpt.FORMAT_VERSION, "framework": "torch", "architecture": {"gen_channels": 256}}
    with pytest.raises(ValueError, match=r"'framework' is 'torch', this run uses 'jax'"):
        ckpt.validate_metadata(meta, framework="jax")
    with pytest.raises(ValueError, match=r"'gen_channels' is 256 in the checkpoint but 32 in this run"):
        ckpt.validate_metadata(meta, architecture={"gen_channels": 32})
    with pytest.raises(ValueError, match="format_version"):
        ckpt.validate_metadata({"format_version": 99})


# ============================================================================ logs


def test_metrics_writer_resume_and_columns(tmp_path: Path) -> None:
    with tlogs.MetricsWriter(tmp_path) as w:
        for step in (1, 2, 3):
            w.write(step, {"loss": step * 0.5})
        w.write(4, {"loss": 2.0, "eval/FID": 30.0, "bad": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss"')  # torn line from a crash
    with tlogs.MetricsWriter(tmp_path, resume_step=2) as w:
        w.write(3, {"loss": 9.0})
    rows = tlogs.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 1.0), (3, 9.0)]
    with open(tmp_path / "metrics.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["loss"] for r in csv_rows] == ["0.5", "1.0", "9.0"]
    # A fresh writer (not resuming) starts clean; a new column rewrites the header.
    with tlogs.MetricsWriter(tmp_path) as w:
        w.write(1, {"a": 1})
        w.write(2, {"a": 2, "b": None})
    with open(tmp_path / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["step", "a", "b"] and len(list(reader)) == 2


def test_image_grid_png(tmp_path: Path) -> None:
    imgs = np.zeros((5, 4, 4, 3), np.uint8)
    imgs[2] = 255
    grid = tlogs.save_image_grid(tmp_path / "g.png", imgs, nrow=3, padding=1)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (3 * 5 + 1, 2 * 5 + 1) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), grid)
    assert (grid[1:5, 11:15] == 255).all() and (grid[6:10, 11:15] == 0).all()
    floats = np.linspace(-1, 1, 2 * 3 * 3).reshape(2, 3, 3, 1).astype(np.float32)
    g2 = tlogs.save_image_grid(tmp_path / "f.png", floats, nrow=2, padding=0)
    assert g2.shape == (3, 6, 1) and g2.min() == 0 and g2.max() == 255
    with Image.open(tmp_path / "f.png") as im:
        assert im.mode == "L"


@pytest.mark.framework("tf")  # TensorBoard's own protobufs ship with TensorFlow
def test_tensorboard_event_file(tmp_path: Path) -> None:
    assert tlogs.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    w = tlogs.TensorBoardWriter(tmp_path, purge_step=3)
    w.add_scalars(5, {"loss": 1.5, "skip": None})
    w.add_image("samples", np.full((4, 6, 3), 200, np.uint8), 5)
    w.close()
    records = tlogs.read_tfevents_records(w.path)
    assert len(records) == 4
    from tensorboard.compat.proto import event_pb2
    events = [event_pb2.Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 3 and events[1].session_log.status == event_pb2.SessionLog.START
    assert events[2].step == 5 and events[2].summary.value[0].tag == "loss"
    assert events[2].summary.value[0].simple_value == 1.5 and len(events[2].summary.value) == 1
    img = events[3].summary.value[0].image
    assert (img.height, img.width, img.colorspace) == (4, 6, 3)
    with Image.open(io.BytesIO(img.encoded_image_string)) as im:
        assert im.size == (6, 4)


def test_no_framework_imported() -> None:
    code = ("import sys; import train.loop, train.data, train.runs.logs, train.evaluation.inception, train.config, "
            "train.runs.checkpoint; bad = [m for m in ('torch', 'tensorflow', 'jax', 'tensorboardX') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ============================================================================ metrics


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert tmetrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)


def test_frechet_general_vs_eigendecomposition() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    # Independent route: Tr (S1 S2)^{1/2} = Tr (A S2 A)^{1/2} with A = S1^{1/2}, via eigh only.
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(w)) @ v.T
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)))
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert tmetrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)


def test_frechet_singular_covariances() -> None:
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 0.5  # N < D: singular
    fid = tmetrics.fid_from_features(f1, f2)
    assert math.isfinite(fid) and fid > 0
    assert abs(tmetrics.fid_from_features(f1, f1)) < 1e-4


def test_kid_matches_brute_force_and_orders() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)) + 0.3

    def k(a, b):
        return (a @ b / 4 + 1) ** 3

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = tmetrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=6)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == pytest.approx(0, abs=1e-12)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    same, _ = tmetrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=100)
    shifted, _ = tmetrics.kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted


def test_inception_score_known_cases() -> None:
    assert tmetrics.inception_score(np.zeros((20, 7)), splits=2) == pytest.approx((1.0, 0.0))
    logits = np.full((48, 4), -1e4)
    logits[np.arange(48), np.arange(48) % 4] = 0.0  # confident and balanced over 4 classes
    mean, std = tmetrics.inception_score(logits, splits=4, shuffle=False)  # balanced chunks
    assert mean == pytest.approx(4.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Two classes, half split confident on one class only: IS of that split is 1.
    lg = np.full((8, 2), -1e4)
    lg[:4, 0] = 0
    lg[4:, :] = 0
    assert tmetrics.inception_score(lg, splits=2, shuffle=False)[0] == pytest.approx(1.0)


def _torch_fidelity_isc(logits: np.ndarray, splits: int, seed: int) -> tuple[float, float]:
    """torch-fidelity's metric_isc.isc_features_to_metric re-derived in NumPy (an independent
    implementation of its published convention: RandomState(seed) permutation, chunks
    [i*N//splits, (i+1)*N//splits), q = chunk mean of softmax)."""
    n = logits.shape[0]
    x = logits[np.random.RandomState(seed).permutation(n)].astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    scores = []
    for i in range(splits):
        chunk = p[i * n // splits:(i + 1) * n // splits]
        q = chunk.mean(axis=0, keepdims=True)
        scores.append(np.exp((chunk * (np.log(chunk) - np.log(q))).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _torch_fidelity_kid(f1: np.ndarray, f2: np.ndarray, subsets: int, size: int, seed: int) -> float:
    """torch-fidelity's metric_kid subset draws (RandomState(seed).choice per subset, input 1
    then input 2) with the unbiased polynomial-kernel MMD^2, written out with explicit loops."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(subsets):
        a = f1[rng.choice(len(f1), size, replace=False)]
        b = f2[rng.choice(len(f2), size, replace=False)]
        k = lambda u, v: (u @ v.T / u.shape[1] + 1.0) ** 3  # noqa: E731
        kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
        m = size
        out.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(out))


def test_metric_conventions_match_torch_fidelity() -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(103, 10)) * 3  # N not divisible by the splits: chunk bounds matter
    want = _torch_fidelity_isc(logits, splits=10, seed=2020)
    assert tmetrics.inception_score(logits, splits=10) == pytest.approx(want, rel=1e-12)
    assert tmetrics.inception_score(logits, splits=10, shuffle=False) != pytest.approx(want, rel=1e-6)
    f1, f2 = rng.normal(size=(60, 5)), rng.normal(size=(70, 5)) + 0.3
    kid, _ = tmetrics.kernel_inception_distance(f1, f2, num_subsets=4, subset_size=20,
                                               rng=np.random.RandomState(tmetrics.TORCH_FIDELITY_SEED))
    assert kid == pytest.approx(_torch_fidelity_kid(f1, f2, 4, 20, 2020), rel=1e-10)
    # The Evaluator's defaults are torch-fidelity's: 10 IS splits, 100 KID subsets of 1000.
    ev = tmetrics.Evaluator(lambda x: (x, x), np.zeros((2, 1, 1, 3), np.uint8))
    assert (ev.is_splits, ev.kid_subsets, ev.kid_subset_size, ev.max_reference) == (10, 100, 1000, None)


def test_inception_availability_reports_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = tmetrics.importlib.util.find_spec
    monkeypatch.setattr(tmetrics.importlib.util, "find_spec",
                        lambda n: None if n == "torch_fidelity" else real_find_spec(n))
    av = tmetrics.inception_available()
    assert not av and "torch-fidelity is not installed" in av.reason
    ok, reason = av
    assert ok is False and reason == av.reason
    monkeypatch.setattr(tmetrics.importlib.util, "find_spec", lambda n: object())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(tmetrics.INCEPTION_ENV, raising=False)
    av = tmetrics.inception_available()
    assert not av and tmetrics.INCEPTION_ENV in av.reason and "--inception-weights" in av.reason
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"x")
    monkeypatch.setattr(tmetrics.importlib, "import_module", lambda n: (_ for _ in ()).throw(RuntimeError("broken")))
    av = tmetrics.inception_available(fake)
    assert not av and "failed to import (RuntimeError: broken)" in av.reason


def _fake_features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    proj = np.random.default_rng(0).standard_normal((flat.shape[1], 16)) / 30
    return flat @ proj, flat @ proj[:, :5] * 10


def test_evaluator_with_fake_features(tmp_path: Path) -> None:
    ref = np.random.default_rng(4).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    ev = tmetrics.Evaluator(_fake_features, ref, cache_path=tmp_path / "ref.npz", reference_key="k",
                            kid_subsets=5, kid_subset_size=30)
    out = ev.evaluate(ref)
    assert set(out) == {"IS", "IS_std", "FID", "KID", "KID_std"} and abs(out["FID"]) < 1e-6
    assert ev.evaluate(np.zeros_like(ref))["FID"] > 1
    ev2 = tmetrics.Evaluator(lambda x: pytest.fail("cache not used"), ref, cache_path=tmp_path / "ref.npz",
                             reference_key="k")
    ev2.reference()


# ============================================================================ config


def test_presets_follow_spec() -> None:
    p = preset_config("paper").validate()
    assert (p.steps, p.n_critic, p.batch_size, p.gen_batch_size) == (200_000, 5, 64, 128)
    assert (p.lr_g, p.lr_d, p.beta1, p.beta2, p.lr_decay) == (2e-4, 2e-4, 0.0, 0.9, "linear")
    assert (p.gen_channels, p.critic_channels, p.z_dim, p.data) == (256, 128, 128, "cifar10")
    assert (p.penalty, p.penalty_settings()["mode"], p.rho, p.eval_every, p.eval_samples, p.final_eval_samples) == (
        "valp", "al", 0.01, 1000, 10_000, 50_000)
    assert (p.fraction, p.clip) == (1.0, (-1.0, 1.0))  # the paper's headline: both batches, clipped
    s = preset_config("smoke").validate()
    assert s.data == "digits" and s.steps * s.n_critic <= 300 and s.gen_channels <= 32
    assert TrainConfig.from_dict(s.to_dict()) == s
    assert lr_at(1.0, 0, 4) == 1.0 and lr_at(1.0, 3, 4) == 0.25 and lr_at(1.0, 3, 4, "constant") == 1.0


def test_cli_flags_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(["--preset", "smoke", "--penalty", "gp", "--lr", "1e-3",
                        "--no-flip", "--resume", "--steps", "7"], framework="jax")
    assert (cfg.penalty, cfg.lr_g, cfg.lr_d, cfg.fraction, cfg.flip, cfg.resume, cfg.steps, cfg.framework) == (
        "gp", 1e-3, 1e-3, 1.0, False, "auto", 7, "jax")
    for argv, flag_name in ((["--valp-fraction", "1.5"], "--valp-fraction"), (["--steps", "0"], "--steps"),
                            (["--data", "folder"], "--data-path"), (["--device", "npu"], "--device"),
                            (["--penalty", "wgan"], "--penalty"), (["--batch-size", "x"], "--batch-size")):
        with pytest.raises(SystemExit) as e:
            parse_config(["--preset", "smoke", *argv])
        assert e.value.code == 2
        assert flag_name in capsys.readouterr().err
    parser = build_parser("torch")
    parser.add_argument("--my-trainer-flag", type=int, default=None)
    cfg = config_from_args(parser.parse_args(["--my-trainer-flag", "3"]), "torch")
    assert cfg.extra == {"my_trainer_flag": 3}
    with pytest.raises(ConfigError, match="--valp-eps-min"):
        preset_config("smoke", eps_min=5.0, eps_max=1.0).validate()


# ============================================================================ loop


class ToyTrainer:
    """A pure-NumPy WGAN: linear critic with weight clipping, linear+tanh generator, EMA."""

    framework = "numpy"

    def __init__(self, cfg: TrainConfig, *, nan_at: int | None = None, signal_at: int | None = None) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.w = (rng.standard_normal(3072) * 0.01).astype(np.float32)
        self.g = (rng.standard_normal((cfg.z_dim, 3072)) * 0.1).astype(np.float32)
        self.ema = self.g.copy()
        self.rng = np.random.default_rng(cfg.seed + 7)
        self.nan_at, self.signal_at = nan_at, signal_at

    def _fake(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        z = self.rng.standard_normal((n, self.cfg.z_dim)).astype(np.float32)
        return z, np.tanh(z @ self.g)

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        lr = lr_at(self.cfg.lr_d, step, self.cfg.steps, self.cfg.lr_decay)
        real = real.reshape(len(real), -1)
        _, fake = self._fake(len(real))
        loss = float((fake @ self.w).mean() - (real @ self.w).mean())
        self.w -= np.float32(lr * 100) * (fake.mean(0) - real.mean(0))
        clipped = np.abs(self.w) > 0.01
        self.w = np.clip(self.w, -0.01, 0.01)
        if self.nan_at is not None and step == self.nan_at:
            loss = float("nan")
        return {"critic/loss": loss, "valp/violation_frac": float(clipped.mean())}  # logged names

    def generator_step(self, step: int) -> dict[str, float]:
        lr = lr_at(self.cfg.lr_g, step, self.cfg.steps, self.cfg.lr_decay)
        z, fake = self._fake(self.cfg.gen_batch_size)
        loss = float(-(fake @ self.w).mean())
        grad = -(z.T @ ((1 - fake**2) * self.w[None, :])) / len(z)
        self.g -= np.float32(lr * 100) * grad.astype(np.float32)
        d = np.float32(self.cfg.ema_decay)
        self.ema = d * self.ema + (1 - d) * self.g
        if self.signal_at is not None and step == self.signal_at:
            signal.raise_signal(signal.SIGTERM)
        return {"gen/loss": loss}

    def sample(self, z: np.ndarray) -> np.ndarray:
        return tdata.to_uint8(np.tanh(z @ self.ema).reshape(len(z), 32, 32, 3))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w, "g": self.g, "ema": self.ema, "rng": ckpt.json_to_array(tdata.rng_state_json(self.rng))}

    def load_state_arrays(self, arrays) -> None:
        spec = ckpt.array_spec(self.state_arrays())
        spec.pop("rng")
        ckpt.validate_arrays({k: v for k, v in arrays.items() if k != "rng"}, spec, context="toy trainer")
        self.w, self.g, self.ema = (arrays[k].copy() for k in ("w", "g", "ema"))
        self.rng = tdata.rng_from_state_json(ckpt.array_to_json(arrays["rng"]))


def _toy_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), steps=12, n_critic=2, batch_size=8, gen_batch_size=8, z_dim=4, log_every=2,
                sample_every=4, checkpoint_every=5, n_sample_grid=4, progress=False, lr_g=1e-2, lr_d=1e-2)
    base.update(kw)
    return preset_config("smoke", **base)


_TOY_DATA = np.random.default_rng(9).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)


def _stable_rows(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in tlogs.read_jsonl(out / "metrics.jsonl")]


def test_loop_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    full_cfg = _toy_cfg(tmp_path / "full")
    full = run_training(ToyTrainer(full_cfg), full_cfg, data=_TOY_DATA)
    assert full == RunResult("completed", 12, tmp_path / "full" / "checkpoints" / "ckpt-000000012.npz")

    cut_cfg = _toy_cfg(tmp_path / "cut")
    handler_before = signal.getsignal(signal.SIGTERM)
    # Stops at iteration 7, mid log interval: the loop's log accumulators must resume too.
    first = run_training(ToyTrainer(cut_cfg, signal_at=6), cut_cfg, data=_TOY_DATA)
    assert first.status == "interrupted" and first.step == 7 and first.signal == signal.SIGTERM
    assert first.exit_code == 128 + signal.SIGTERM and first.checkpoint is not None
    assert ckpt.load_checkpoint(first.checkpoint).metadata["loop"]["accum"]["counts"] == {
        "critic/loss": 2, "valp/violation_frac": 2, "gen/loss": 1}
    assert signal.getsignal(signal.SIGTERM) == handler_before  # handlers restored
    resumed_cfg = cut_cfg.replace(resume="auto")
    second = run_training(ToyTrainer(resumed_cfg), resumed_cfg, data=_TOY_DATA)
    assert second.status == "completed" and second.step == 12

    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt-000000012.npz")
    b = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints" / "ckpt-000000012.npz")
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.metadata["data_iterator"] == b.metadata["data_iterator"]
    assert _stable_rows(tmp_path / "full") == _stable_rows(tmp_path / "cut")
    assert [r["step"] for r in _stable_rows(tmp_path / "cut")] == [2, 4, 6, 8, 10, 12]
    for png in sorted((tmp_path / "full" / "samples").iterdir()):
        assert (tmp_path / "cut" / "samples" / png.name).read_bytes() == png.read_bytes()
    assert len(list((tmp_path / "cut" / "tb").iterdir())) == 2
    # Running again with --resume on a finished run does nothing.
    again = run_training(ToyTrainer(resumed_cfg), resumed_cfg, data=_TOY_DATA)
    assert again.status == "completed" and again.step == 12


def test_loop_stops_on_nan_and_keeps_checkpoint(tmp_path: Path) -> None:
    cfg = _toy_cfg(tmp_path)
    with pytest.raises(NonFiniteError) as e:
        run_training(ToyTrainer(cfg, nan_at=6), cfg, data=_TOY_DATA)
    msg = str(e.value)
    assert "critic step 1/2 at iteration 7 returned critic/loss=nan" in msg and "ckpt-000000005.npz" in msg
    latest = ckpt.load_latest(tmp_path / "checkpoints")
    assert latest is not None and latest.step == 5
    assert max(r["step"] for r in tlogs.read_jsonl(tmp_path / "metrics.jsonl")) == 6


def test_loop_refuses_mismatched_resume_and_overwrite(tmp_path: Path) -> None:
    cfg = _toy_cfg(tmp_path, steps=5)
    run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA)
    other = ToyTrainer(cfg)
    other.framework = "jax"
    with pytest.raises(ResumeError, match=r"'framework' is 'numpy', this run uses 'jax'"):
        run_training(other, cfg.replace(resume="auto", steps=8), data=_TOY_DATA)
    wide = cfg.replace(resume=str(tmp_path / "checkpoints"), z_dim=6, steps=8)
    with pytest.raises(ResumeError, match=r"'z_dim' is 4 in the checkpoint but 6 in this run"):
        run_training(ToyTrainer(wide), wide, data=_TOY_DATA)


def test_loop_eval_and_missing_inception(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _toy_cfg(tmp_path / "eval", steps=6, eval_every=3, eval_samples=20, final_eval_samples=30)
    result = run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA, feature_fn=_fake_features)
    assert set(result.eval_metrics) == {"eval/IS", "eval/IS_std", "eval/FID", "eval/KID", "eval/KID_std"}
    rows = tlogs.read_jsonl(tmp_path / "eval" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval/FID" in r] == [3, 6]

    monkeypatch.setattr(tmetrics.importlib.util, "find_spec", lambda n: None)
    # Not digits: those are scored offline by train.evaluation.digits (tests/test_quality.py).
    cfg = _toy_cfg(tmp_path / "noinc", steps=6, eval_every=2, eval_samples=20, final_eval_samples=20,
                   data="cifar10")
    with caplog.at_level("WARNING", logger="valr.train"):
        assert run_training(ToyTrainer(cfg), cfg, data=_TOY_DATA).status == "completed"
    warnings_seen = [r for r in caplog.records if "evaluation disabled" in r.getMessage()]
    assert len(warnings_seen) == 1 and "torch-fidelity" in warnings_seen[0].getMessage()


def test_cli_main_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--preset", "smoke", "--out", str(tmp_path), "--steps", "3", "--no-progress", "--n-critic", "1",
            "--checkpoint-every", "2"]
    assert main("numpy", ToyTrainer, argv) == 0
    assert (tmp_path / "checkpoints" / "ckpt-000000003.npz").is_file()
    assert (tmp_path / "samples" / "step_0000003.png").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 3
    assert main("numpy", ToyTrainer, argv) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


class _DivergesOnce(ToyTrainer):
    """Returns a NaN loss once, at iteration ``nan_at``; the retry after a rollback is clean."""

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        out = super().critic_step(real, step)
        if self.nan_at is not None and step == self.nan_at:
            self.nan_at = None
        return out


def test_loop_skip_nonfinite_rolls_back_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _toy_cfg(tmp_path, skip_nonfinite=1)
    with caplog.at_level("WARNING", logger="valr.train"):
        result = run_training(_DivergesOnce(cfg, nan_at=6), cfg, data=_TOY_DATA)
    assert result.status == "completed" and result.step == 12
    warning = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert len(warning) == 1 and "ckpt-000000005.npz (iteration 5)" in warning[0] and "1 of 1 allowed" in warning[0]
    steps = [r["step"] for r in tlogs.read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no duplicate rows from the discarded iterations
    # The rollback skipped data: the run differs from one that never diverged.
    clean_cfg = _toy_cfg(tmp_path / "clean")
    run_training(ToyTrainer(clean_cfg), clean_cfg, data=_TOY_DATA)
    a = ckpt.load_latest(tmp_path / "checkpoints").arrays["trainer/w"]
    b = ckpt.load_latest(tmp_path / "clean" / "checkpoints").arrays["trainer/w"]
    assert not np.array_equal(a, b)
    # Only as often as allowed: a trainer that keeps diverging still stops.
    cfg2 = _toy_cfg(tmp_path / "again", skip_nonfinite=2)
    with pytest.raises(NonFiniteError, match="iteration 7 returned critic/loss=nan"):
        run_training(ToyTrainer(cfg2, nan_at=6), cfg2, data=_TOY_DATA)
