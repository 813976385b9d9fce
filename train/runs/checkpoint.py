"""Atomic checkpoints: a ``.npz`` of flat arrays plus JSON metadata, read with ``allow_pickle=False``
only (loading never runs code); a ``latest`` pointer's atomic update commits a checkpoint."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMAT_VERSION = 1
VERSION_KEY = "valr_version"  # the release that wrote a checkpoint: named when one is refused


def _valr_version() -> str:
    import valr_core

    return valr_core.__version__


def written_by(metadata: Mapping[str, Any]) -> str:
    """``valr X`` for a checkpoint's metadata; releases before 0.2.0 recorded no version."""
    version = metadata.get(VERSION_KEY)
    return f"valr {version}" if isinstance(version, str) else "valr 0.1.x (before 0.2.0, which records its version)"
METADATA_KEY = "__metadata_json__"
LATEST_NAME = "latest"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.npz$")
# Temp names start with "." so globbing for checkpoints never sees them.
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9]+-[0-9a-f]+$")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (corrupt, truncated, wrong format)."""


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Write failures of the file itself (full disk or quota, read-only or forbidden, I/O error).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``, fsync it and rename it over ``path``; on any
    exception the temp file is removed and ``path`` is left exactly as it was."""
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is atomic; hidden, so globbing never sees it.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    f = open(tmp, mode, **kwargs)  # closed below on every path
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        # close() flushes the buffer, so on a full disk it raises again: the temp file must
        # still go, and the error must name the file being written, not the temp name.
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS and e.filename != str(target):
            raise OSError(e.errno, e.strerror or str(e), str(target)) from e
        raise


def file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (so ``path`` cannot be made)."""
    parent = next((p for p in path.parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def json_to_array(obj: Any) -> np.ndarray:
    """Encode a JSON-serialisable object as a uint8 array (for state that must live in arrays)."""
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def array_to_json(arr: np.ndarray) -> Any:
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8"))


@dataclass
class Checkpoint:
    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]
    path: Path
    step: int | None = None


def save_checkpoint(path: str | os.PathLike[str], arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write ``arrays`` + ``metadata`` atomically to ``path`` (an .npz). Returns the path."""
    checked: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"checkpoint array keys must be non-empty strings, got {key!r}")
        if key.startswith("__"):
            raise ValueError(f"checkpoint array key {key!r} is reserved (starts with '__')")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            # Object arrays would need pickle to load, which this format never allows.
            raise ValueError(f"checkpoint array {key!r} has object dtype; only numeric arrays are allowed")
        checked[key] = arr
    meta = dict(metadata)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault(VERSION_KEY, _valr_version())
    try:
        meta_bytes = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metadata is not strict JSON: {e}") from e
    target = Path(path)
    with atomic_open(target, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        # np.savez's member layout, written by hand so no key can clash with its keyword arguments.
        for key, arr in checked.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arr, order="C"), allow_pickle=False)
        with zf.open(METADATA_KEY + ".npy", "w") as member:
            np.lib.format.write_array(member, np.frombuffer(meta_bytes, dtype=np.uint8))
    return target


# What a damaged or hostile .npz can make zipfile / np.load raise (NotImplementedError: unknown
# compression; RuntimeError: an encrypted member; MemoryError: a header declaring an absurd shape).
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, zlib.error, KeyError,
                NotImplementedError, RuntimeError, MemoryError, OverflowError, struct.error)

# The most a checkpoint may decompress to, unless a caller allows more: the paper's ResNet WGAN
# with EMA and Adam states is 77 MiB, while a zip bomb declaring gigabytes is refused uninflated.
MAX_CHECKPOINT_BYTES = 1 << 30
_NPY_MAGIC = b"\x93NUMPY"


def available_memory() -> int | None:
    """Bytes the system can still hand out without swapping (MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _check_declared_sizes(p: Path, infos: list[zipfile.ZipInfo], max_bytes: int | None) -> None:
    """Refuse from the zip directory alone (nothing inflated yet) a checkpoint whose members
    declare more bytes than ``max_bytes`` or than the memory left."""
    total = sum(i.file_size for i in infos)
    largest = max(infos, key=lambda i: i.file_size, default=None)
    for cap, what in ((max_bytes, "the checkpoint size limit"), (available_memory(), "the memory available")):
        if cap is not None and total > cap:
            biggest = f" (member {largest.filename!r}: {_mib(largest.file_size)})" if largest is not None else ""
            raise CheckpointError(
                f"checkpoint {p} declares {_mib(total)} of arrays{biggest}, more than {what} ({_mib(cap)}); "
                "refusing to decompress it (a damaged or hostile file). It was left untouched."
            )


def _read_member(p: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """One .npy member, its header checked against the member's declared size first (so the
    array allocated is never larger than what the zip directory declared and the cap allowed)."""
    fmt = np.lib.format
    with zf.open(info) as member:
        if member.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise CheckpointError(f"checkpoint {p} member {key!r} is not a NumPy .npy array; "
                                  "not a valr checkpoint, or a tampered one. It was left untouched.")
        member.seek(0)
        version = fmt.read_magic(member)
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = header(member)
        if dtype.hasobject:
            raise CheckpointError(f"checkpoint {p} member {key!r} has object dtype (it would need pickle); "
                                  "not a valr checkpoint. It was left untouched.")
        nbytes = dtype.itemsize * math.prod(int(n) for n in shape)
        if member.tell() + nbytes != info.file_size:
            raise CheckpointError(
                f"checkpoint {p} member {key!r} declares shape {tuple(shape)} {dtype} ({nbytes} bytes) but holds "
                f"{info.file_size - member.tell()} bytes; corrupt or tampered. It was left untouched."
            )
        member.seek(0)
        arr = fmt.read_array(member, allow_pickle=False)
        if member.read(1):  # at the end: zipfile has verified the member's CRC-32
            raise CheckpointError(f"checkpoint {p} member {key!r} has data after its array; corrupt or tampered")
    return arr


def first_nonfinite(arrays: Mapping[str, np.ndarray]) -> tuple[str, int] | None:
    """(key, count) of the first float/complex array holding NaN or Inf; None if all are finite."""
    for key, arr in arrays.items():
        if arr.dtype.kind in "fc":
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                return key, bad
    return None


def _metadata(p: Path, raw: np.ndarray | None) -> dict[str, Any]:
    """The metadata member as a JSON object of this format version, else CheckpointError."""
    if raw is None:
        raise CheckpointError(f"checkpoint {p} has no metadata member {METADATA_KEY!r}; not a valr checkpoint")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"checkpoint {p} metadata member {METADATA_KEY!r} is {raw.dtype} {raw.shape}, "
                              "expected 1-D uint8 (UTF-8 JSON)")
    try:
        metadata = array_to_json(raw)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {p} has unreadable metadata ({e})") from e
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {p} metadata is {type(metadata).__name__}, expected a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} was written by {written_by(metadata)} (format_version {version!r}); "
                              f"valr {_valr_version()} reads format_version {FORMAT_VERSION}")
    return metadata


def load_checkpoint(
    path: str | os.PathLike[str], *, max_bytes: int | None = MAX_CHECKPOINT_BYTES, allow_nonfinite: bool = False
) -> Checkpoint:
    """Read a checkpoint, never modifying it; any corruption raises :class:`CheckpointError`
    naming the file. Members may declare at most ``max_bytes`` in total (None: the free memory),
    and an array holding NaN/Inf (a diverged run) is refused unless ``allow_nonfinite``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
            _check_declared_sizes(p, infos, max_bytes)
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key in arrays:
                    raise CheckpointError(f"checkpoint {p} holds member {key!r} twice; tampered. "
                                          "It was left untouched.")
                # Reading every member fully makes zipfile verify each CRC-32.
                arrays[key] = _read_member(p, zf, info, key)
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(f"checkpoint {p} is corrupt or truncated ({type(e).__name__}: {e}). "
                              "It was left untouched; move it aside to resume from an older checkpoint.") from e
    metadata = _metadata(p, arrays.pop(METADATA_KEY, None))
    bad = None if allow_nonfinite else first_nonfinite(arrays)
    if bad is not None:
        key, count = bad
        raise CheckpointError(
            f"checkpoint {p} array {key!r} contains NaN/Inf ({count} of {arrays[key].size} values); "
            "refusing to load it (the run had diverged, or the file was altered). It was left untouched; "
            "use an older checkpoint."
        )
    step = metadata.get("step")
    return Checkpoint(arrays=arrays, metadata=metadata, path=p, step=step if isinstance(step, int) else None)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.npz"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoint files in ``directory`` as (step, path), oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_file())


def is_checkpoint(path: str | os.PathLike[str], step: int | None = None) -> bool:
    """Cheap check that ``path`` is a valr checkpoint (of ``step``): its metadata member is
    readable strict JSON with our format version. Array members are not read."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(METADATA_KEY + ".npy")
            if info.file_size > 1 << 26:
                return False
            with zf.open(info) as member:
                meta = _metadata(Path(path), np.lib.format.read_array(member, allow_pickle=False))
    except (*_READ_ERRORS, TypeError, RecursionError):  # CheckpointError is a RuntimeError
        return False
    return step is None or meta.get("step") == step


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files left by a writer that died mid-write (they are never valid data)."""
    d = Path(directory)
    removed = []
    for p in d.iterdir() if d.is_dir() else ():
        if _TMP_RE.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def latest_checkpoint_path(directory: str | os.PathLike[str]) -> Path | None:
    """The committed latest checkpoint: the ``latest`` pointer, else the highest step file."""
    pointer = Path(directory) / LATEST_NAME
    with contextlib.suppress(FileNotFoundError):
        name = pointer.read_text(encoding="utf-8").strip()
        if not _CKPT_RE.match(name):
            warnings.warn(f"ignoring malformed checkpoint pointer {pointer} (contains {name!r})", stacklevel=2)
        elif (pointer.parent / name).is_file():
            return pointer.parent / name
        else:
            warnings.warn(f"checkpoint pointer {pointer} names missing file {name}; "
                          "falling back to the highest-step checkpoint", stacklevel=2)
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def load_latest(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """The latest committed checkpoint in ``directory`` (None if there is none), after removing
    stale temp files. A corrupt latest file raises (listing older ones) and is left in place."""
    remove_stale_temp_files(directory)
    path = latest_checkpoint_path(directory)
    if path is None:
        return None
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        older = [p.name for _, p in list_checkpoints(directory) if p != path]
        hint = f" Older checkpoints in {directory}: {older}." if older else ""
        raise CheckpointError(f"{e}{hint}") from e


class CheckpointManager:
    """Keeps the last ``keep`` checkpoints of a run in one directory plus a ``latest`` pointer."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def save(self, step: int, arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        meta = dict(metadata)
        meta["step"] = int(step)
        path = save_checkpoint(self.directory / checkpoint_name(step), arrays, meta)
        # The pointer update commits the checkpoint; a crash before it leaves the old one live.
        with atomic_open(self.directory / LATEST_NAME, "wb") as f:
            f.write((path.name + "\n").encode("utf-8"))
        # Only real checkpoints count towards ``keep`` and are deleted: a foreign or damaged file
        # merely named like one must not push a good checkpoint out; it is left for the user.
        found = [p for s, p in list_checkpoints(self.directory) if p == path or is_checkpoint(p, s)]
        for p in found[: max(0, len(found) - self.keep)]:
            if p != path:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        return path


def array_spec(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The (shape, dtype) spec of live arrays, to validate a checkpoint against."""
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype.str) for k, v in arrays.items()}


def validate_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[Sequence[int], Any]], *,
                    context: str = "checkpoint") -> None:
    """Raise ValueError naming the first key whose presence, shape or dtype does not match."""
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            raise ValueError(
                f"{context}: missing array {key!r} (expected shape {tuple(shape)}, dtype {np.dtype(dtype).name})"
            )
        arr = arrays[key]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{context}: array {key!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        if np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(
                f"{context}: array {key!r} has dtype {np.dtype(arr.dtype).name}, expected {np.dtype(dtype).name}"
            )
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ValueError(f"{context}: unexpected array {extra[0]!r} ({len(extra)} unexpected in total)")


def restore_arrays(
    arrays: Mapping[str, np.ndarray], live: Mapping[str, np.ndarray], *, context: str
) -> dict[str, np.ndarray]:
    """``arrays`` checked against the live state ``live`` (keys, shapes, dtypes), scalars as 0-d
    (older checkpoints stored them as shape (1,); they load here, once for every trainer)."""
    fixed = {k: (np.reshape(v, ()) if k in live and np.ndim(live[k]) == 0 and np.shape(v) == (1,) else v)
             for k, v in arrays.items()}
    validate_arrays(fixed, array_spec(live), context=context)
    return fixed


def validate_metadata(
    metadata: Mapping[str, Any], *, framework: str | None = None, architecture: Mapping[str, Any] | None = None,
    context: str = "checkpoint",
) -> None:
    """Raise ValueError naming the field whose checkpoint value differs from this run's."""
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{context}: field 'format_version' is {version!r}, this code expects {FORMAT_VERSION}")
    if framework is not None and metadata.get("framework") != framework:
        raise ValueError(f"{context}: field 'framework' is {metadata.get('framework')!r}, this run uses {framework!r}")
    if architecture is not None:
        saved = metadata.get("architecture")
        if not isinstance(saved, Mapping):
            raise ValueError(f"{context}: field 'architecture' is {saved!r}, expected a mapping")
        for key in sorted(set(saved) | set(architecture)):
            a, b = saved.get(key, "<absent>"), architecture.get(key, "<absent>")
            # Tuples become lists in JSON; compare in the JSON domain so (4, 4) == [4, 4].
            ja, jb = (json.loads(json.dumps(v, sort_keys=True, default=str)) for v in (a, b))
            if ja != jb:
                raise ValueError(
                    f"{context}: architecture field {key!r} is {a!r} in the checkpoint but {b!r} in this run"
                )

