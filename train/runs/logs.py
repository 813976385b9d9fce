"""Run logs: metrics as JSONL + CSV, TensorBoard scalars/images, PNG sample grids. TensorBoard
events come from a built-in encoder, so a JAX run imports neither torch nor TensorFlow."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from train.data import to_uint8
from train.runs.checkpoint import atomic_open

Scalar = float | int | str | None


def _clean(value: Any) -> Scalar:
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None  # strict JSON has no NaN/Inf
    if value is None or isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.size == 1 and arr.dtype.kind in "biuf":
        return _clean(arr.reshape(()).item())
    raise TypeError(f"metric value {value!r} is not a scalar")


class MetricsWriter:
    """Appends one row per ``write`` to ``metrics.jsonl`` and ``metrics.csv``, flushed each time.

    ``resume_step=None`` replaces existing files; an int keeps the rows with ``step <= resume_step``
    (those the resumed checkpoint covers) and appends after them."""

    def __init__(self, directory: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.directory / "metrics.jsonl"
        self.csv_path = self.directory / "metrics.csv"
        rows: list[dict[str, Any]] = []
        if resume_step is not None:
            rows = [r for r in read_jsonl(self.jsonl_path) if isinstance(r.get("step"), int) and r["step"] <= resume_step]
        self._rows_for_csv = rows
        self.columns: list[str] = _columns(rows)
        with atomic_open(self.jsonl_path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, allow_nan=False) + "\n")
        self._rewrite_csv()
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived

    def _rewrite_csv(self) -> None:
        """Write the whole CSV (header and kept rows) and reopen it for appending."""
        with atomic_open(self.csv_path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(_csv_row(r) for r in self._rows_for_csv)
        self._csv = open(self.csv_path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - long-lived

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row: dict[str, Scalar] = {"step": int(step)}
        row.update({str(k): _clean(v) for k, v in metrics.items() if k != "step"})
        self._jsonl.write(json.dumps(row, allow_nan=False) + "\n")
        self._jsonl.flush()
        self._rows_for_csv.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            # A new column changes the header: rewrite the CSV (rare; rows are kept in memory).
            self._csv.close()
            self.columns.extend(new)
            self._rewrite_csv()
        else:
            csv.DictWriter(self._csv, fieldnames=self.columns, restval="").writerow(_csv_row(row))
        self._csv.flush()

    def close(self) -> None:
        for f in (self._jsonl, self._csv):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = ["step"]
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "" if v is None else v for k, v in row.items()}


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (crash mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def make_grid(images: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile N images (uint8, or float in [-1, 1]; NHWC, NHW or NHW1) into one uint8 HWC grid
    with ``nrow`` images per row."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected NHWC images with 1, 3 or 4 channels, got shape {x.shape}")
    if x.dtype != np.uint8:
        if x.dtype.kind != "f":
            raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {x.dtype}")
        x = to_uint8(x)
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, h, w, c = x.shape
    cols = min(nrow, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i]
    return grid


def encode_png(image_hwc: np.ndarray) -> bytes:
    from PIL import Image

    arr = np.asarray(image_hwc, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def save_image_grid(path: str | os.PathLike[str], images: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Write ``images`` as one PNG grid atomically; returns the grid (uint8 HWC)."""
    grid = make_grid(images, nrow=nrow, padding=padding)
    with atomic_open(path, "wb") as f:
        f.write(encode_png(grid))
    return grid


def _crc32c_entry(crc: int) -> int:
    for _ in range(8):
        crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


_CRC_TABLE = [_crc32c_entry(i) for i in range(256)]


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as used by TFRecord framing."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement for negative values
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def _field_fixed(num: int, fmt: str, value: float) -> bytes:
    """A double ("<d", wire type 1) or float ("<f", wire type 5) field."""
    return _varint((num << 3) | (1 if fmt == "<d" else 5)) + struct.pack(fmt, value)


# Field numbers from tensorboard's event.proto / summary.proto.
_EV_WALL_TIME, _EV_STEP, _EV_FILE_VERSION, _EV_SUMMARY, _EV_SESSION_LOG = 1, 2, 3, 5, 7
_VAL_TAG, _VAL_SIMPLE, _VAL_IMAGE = 1, 2, 4
_IMG_HEIGHT, _IMG_WIDTH, _IMG_COLORSPACE, _IMG_ENCODED = 1, 2, 3, 4
_SESSION_START = 1


class TensorBoardWriter:
    """Minimal TensorBoard event-file writer (scalars and PNG images), no framework needed.

    ``purge_step`` (on resume) writes a SessionLog START so TensorBoard drops the interrupted
    run's events with ``step >= purge_step``."""

    def __init__(self, logdir: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a directory's event files in name order; the nanosecond suffix keeps
        # two writers of one process (a resumed run in tests) distinct and correctly ordered.
        now = time.time_ns()
        name = f"events.out.tfevents.{now // 10**9:010d}.{socket.gethostname()}.{os.getpid()}.{now:020d}.valr"
        self.path = self.logdir / name
        self._f = open(self.path, "xb")  # noqa: SIM115 - long-lived
        self._write_event(_field_bytes(_EV_FILE_VERSION, b"brain.Event:2"))
        if purge_step is not None:
            session_log = _field_varint(1, _SESSION_START)
            self._write_event(_field_varint(_EV_STEP, purge_step) + _field_bytes(_EV_SESSION_LOG, session_log))
        self.flush()

    def _write_event(self, body: bytes) -> None:
        event = _field_fixed(_EV_WALL_TIME, "<d", time.time()) + body
        header = struct.pack("<Q", len(event))
        self._f.write(header + struct.pack("<I", _masked_crc(header)) + event + struct.pack("<I", _masked_crc(event)))

    def _write_values(self, step: int, values: Sequence[bytes]) -> None:
        summary = b"".join(_field_bytes(1, v) for v in values)
        self._write_event(_field_varint(_EV_STEP, step) + _field_bytes(_EV_SUMMARY, summary))

    def add_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = []
        for tag, v in scalars.items():
            c = _clean(v)
            if isinstance(c, (int, float)):
                values.append(_field_bytes(_VAL_TAG, tag.encode()) + _field_fixed(_VAL_SIMPLE, "<f", float(c)))
        if values:
            self._write_values(step, values)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: uint8 HWC (or float in [-1, 1])."""
        img = np.asarray(image)
        if img.dtype != np.uint8:
            img = to_uint8(img)
        if img.ndim == 2:
            img = img[..., None]
        h, w, c = img.shape
        image_msg = (_field_varint(_IMG_HEIGHT, h) + _field_varint(_IMG_WIDTH, w)
                     + _field_varint(_IMG_COLORSPACE, c) + _field_bytes(_IMG_ENCODED, encode_png(img)))
        self._write_values(step, [_field_bytes(_VAL_TAG, tag.encode()) + _field_bytes(_VAL_IMAGE, image_msg)])

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def read_tfevents_records(path: str | os.PathLike[str]) -> list[bytes]:
    """Raw event payloads of a TFRecord file, CRCs verified (used by tests and tools)."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length, hcrc = struct.unpack_from("<QI", data, pos)
        body = data[pos + 12 : pos + 12 + length]
        (bcrc,) = struct.unpack_from("<I", data, pos + 12 + length)
        if hcrc != _masked_crc(data[pos : pos + 8]) or bcrc != _masked_crc(body):
            raise ValueError(f"{path}: CRC mismatch in record at byte {pos}")
        out.append(body)
        pos += 16 + length
    return out
