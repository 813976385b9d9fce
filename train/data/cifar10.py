"""CIFAR-10 (python version): located, checksummed, downloaded when reachable, and decoded with a
restricted unpickler that only rebuilds the arrays and lists a batch file holds."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.data.errors import ChecksumError, DataError, DataNotFoundError
from train.runs.checkpoint import atomic_open

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ENV = "VALR_CIFAR10"
CIFAR10_TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_TEST_FILES = ("test_batch",)
_SPLITS = {"train": CIFAR10_TRAIN_FILES, "test": CIFAR10_TEST_FILES, "all": CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES}


@dataclass(frozen=True)
class Cifar10Checksums:
    """MD5 of the archive and of each batch file (a parameter, so tests can use a small archive)."""

    archive: str
    files: Mapping[str, str] = field(default_factory=dict)


# The published archive MD5 and the per-file MD5s listed by torchvision's CIFAR10 class.
CIFAR10_CHECKSUMS = Cifar10Checksums(
    archive="c58f30108f718f92721af3b95e74349a",
    files={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "valr"


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_md5(what: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ChecksumError(f"checksum mismatch for {what}: expected MD5 {expected}, got {actual}. The file is "
                            "corrupt, truncated or not the official CIFAR-10 python version; delete it and "
                            "download it again.")


def _numpy_internal(name: str, module: str) -> Any:
    """``numpy._core.<module>.<name>`` (NumPy >= 2) or ``numpy.core.<module>.<name>`` (1.x)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # pragma: no cover - NumPy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Pickle protocols 0-2 store bytes as _codecs.encode(str, 'latin1'); allow that use only
    # (other codecs, e.g. zlib_codec, would turn the unpickler into a decompressor).
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only on str with the latin1 codec")
    return text.encode("latin1", errors="strict")


# (module, name) -> the object it stands for: what NumPy's pickles of a CIFAR-10 batch dict
# need under protocols 0-5, written by NumPy 1.x (numpy.core) or 2.x (numpy._core).
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): lambda: _numpy_internal("_reconstruct", "multiarray")
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): lambda: _numpy_internal("_frombuffer", "numeric")
       for core in ("core", "_core")},
}


class _CifarUnpickler(pickle.Unpickler):
    """Only the globals a CIFAR-10 batch pickle needs; anything else is refused, so a
    malicious file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        make = _CIFAR_GLOBALS.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch file")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR-10 batch file")


# What a damaged or hostile pickle can make the (restricted) unpickler raise.
_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                    MemoryError, OverflowError, RecursionError, struct.error, UnicodeError)


def decode_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch pickle into (uint8 NHWC images, int64 labels)."""
    try:
        # latin1 is how NumPy arrays pickled by Python 2 are read back (torchvision does the same).
        obj = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _UNPICKLE_ERRORS as e:
        raise DataError(f"{source} is not a valid CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise DataError(f"{source} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    try:
        images, labels = obj["data"], np.asarray(obj["labels"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{source} has labels that are not a list of integers ({type(e).__name__}: {e})") from e
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == 3 * 32 * 32 and labels.shape == (images.shape[0],)):
        raise DataError(
            f"{source} has data of shape {getattr(images, 'shape', None)} / dtype "
            f"{getattr(images, 'dtype', None)} and {labels.shape[0]} labels; expected uint8 (N, 3072) and N labels"
        )
    # Stored as N x (3 planes of 32x32, row-major); convert to NHWC.
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def find_cifar10(path: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """Locate ('folder', dir) or ('archive', file) at/under ``path``; None when absent."""
    p = Path(path).expanduser()
    if p.is_file():
        return "archive", p
    if p.is_dir():
        if any((p / n).is_file() for n in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES):
            return "folder", p
        if (p / CIFAR10_FOLDER).is_dir():
            return "folder", p / CIFAR10_FOLDER
        if (p / CIFAR10_ARCHIVE).is_file():
            return "archive", p / CIFAR10_ARCHIVE
    return None


_TAR_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.DIRTYPE: "directory"}

# An official batch file is 31 MB (10000 images x 3072 bytes, labels, names): twice that bounds one
# file, so a decompression bomb is refused by its declared size. The archive holds 8 members.
MAX_BATCH_BYTES = 64 << 20
_ARCHIVE_MEMBERS = 8


def _too_big(what: str, size: int, cap: int) -> DataError:
    return DataError(f"{what} holds {size / 2**20:.1f} MiB, more than the {cap / 2**20:.1f} MiB a CIFAR-10 batch "
                     "file may hold; refusing to read it (a corrupt file or a decompression bomb)")


class _CappedGzip:
    """The decompressed stream of a .gz for tarfile, refusing to go past ``cap`` bytes in total
    or to read more than ``max_read`` at once: tarfile reads a member, and also a pax or GNU
    long-name header, in one read of its declared size."""

    def __init__(self, path: Path, cap: int, max_read: int) -> None:
        self.name = str(path)
        self._gz = gzip.open(path, "rb")
        self._cap, self._max_read = cap, max_read

    def _refuse(self, at: int) -> DataError:
        return DataError(f"archive {self.name} decompresses to more than {self._cap / 2**20:.0f} MiB "
                         f"(reached {at / 2**20:.0f} MiB; the official one holds 178 MB); refusing to read "
                         "further (a corrupt file or a decompression bomb)")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("_CappedGzip reads a given number of bytes only")
        if n > self._max_read:
            raise _too_big(f"archive {self.name} entry at byte {self._gz.tell()}", n, self._max_read)
        if self._gz.tell() + n > self._cap:
            raise self._refuse(self._gz.tell() + n)
        return self._gz.read(n)

    def read_to_end(self) -> None:
        """Decompress the rest (gzip checks its CRC-32 only there), within the cap."""
        while (room := self._cap - self._gz.tell()) > 0:
            if not self.read(min(1 << 20, self._max_read, room)):
                return
        if self._gz.read(1):
            raise self._refuse(self._gz.tell())

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._gz.tell() if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target > self._cap:
            raise self._refuse(target)
        return self._gz.seek(target)  # forward: decompressed and discarded in chunks

    def tell(self) -> int:
        return self._gz.tell()

    def close(self) -> None:
        self._gz.close()


def _read_archive_members(archive: Path, names: tuple[str, ...], max_member_bytes: int) -> dict[str, bytes]:
    """The members ``names`` of a CIFAR-10 .tar.gz, decompressed as a stream with a cap: a
    member's declared size, any single read and the total are bounded before memory is used."""
    wanted = {f"{CIFAR10_FOLDER}/{n}": n for n in names}
    stream = _CappedGzip(archive, _ARCHIVE_MEMBERS * max_member_bytes, max_member_bytes + tarfile.BLOCKSIZE)
    out: dict[str, bytes] = {}
    try:
        with contextlib.closing(stream), tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[arg-type]
            for member in tar:  # one header at a time (getmember would first read them all)
                if member.size > max_member_bytes:
                    raise _too_big(f"archive {archive} member {member.name!r}", member.size, max_member_bytes)
                name = wanted.get(member.name)
                if name is None:
                    continue
                # A link is refused, not followed: it could name any member (or none).
                fobj = tar.extractfile(member) if member.isreg() else None
                if fobj is None:
                    raise DataError(f"archive {archive} member {member.name!r} is not a regular file "
                                    f"(it is a {_TAR_KINDS.get(member.type, 'special file')})")
                out[name] = fobj.read()  # of equally named members the last wins, as in getmember
            for member_name, name in wanted.items():
                if name not in out:
                    raise DataError(f"archive {archive} has no member {member_name!r}")
            # gzip checks its CRC-32 only at the end of the stream, which tarfile may never reach:
            # read to the end, so a damaged archive cannot yield silently altered images.
            stream.read_to_end()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"archive {archive} is corrupt or truncated ({type(e).__name__}: {e})") from e
    return out


def _can_connect(host: str, port: int, timeout: float) -> bool:
    # DNS lookups ignore socket timeouts, so run the whole check in a thread we can abandon.
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def _download(url: str, dest: Path, expected_md5: str | None, timeout: float) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_open(dest, "wb") as f:
        while block := resp.read(1 << 20):
            h.update(block)
            f.write(block)
        # Verify before the rename so a bad download never lands at the final path.
        _check_md5(f"download of {url}", h.hexdigest(), expected_md5)
    return dest


def _missing_message(searched: Path, checksums: Cifar10Checksums, why: str) -> str:
    where = searched if searched.suffix != ".gz" else searched.parent
    return (
        f"CIFAR-10 (python version) not found at {searched}{why}. "
        f"Download {CIFAR10_URL}{f' (MD5 {checksums.archive})' if checksums.archive else ''} and put {CIFAR10_ARCHIVE} or the "
        f"extracted folder {CIFAR10_FOLDER}/ into {where}, or point to either with "
        f"--data-path PATH or the environment variable {CIFAR10_ENV}=PATH."
    )


def load_cifar10(
    path: str | os.PathLike[str] | None = None, *, split: str = "train",
    checksums: Cifar10Checksums | None = CIFAR10_CHECKSUMS, download: bool = True, connect_timeout: float = 3.0,
    return_labels: bool = False, max_member_bytes: int = MAX_BATCH_BYTES,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 as uint8 (N, 32, 32, 3).

    ``path`` (else env ``VALR_CIFAR10``, else ``~/.cache/valr``) is the archive, the extracted
    folder or a directory holding either; when absent it is downloaded (``download``) only if a
    short connection check succeeds. Checksums (None: skipped) are verified before decoding; a
    batch over ``max_member_bytes``, or an archive inflating to 8 times that, is refused.
    """
    names = _SPLITS.get(split)
    if names is None:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    root = Path(path if path is not None else os.environ.get(CIFAR10_ENV) or default_cache_dir()).expanduser()
    found = find_cifar10(root)
    sums = checksums or Cifar10Checksums(archive="")
    if found is None:
        why = ""
        if download:
            target_dir = root.parent if root.suffix == ".gz" else root
            if _can_connect("www.cs.toronto.edu", 443, connect_timeout):
                found = ("archive", _download(CIFAR10_URL, target_dir / CIFAR10_ARCHIVE, sums.archive or None, 120.0))
            else:
                why = " (no connection to www.cs.toronto.edu, so it was not downloaded)"
        if found is None:
            raise DataNotFoundError(_missing_message(root, sums, why))

    kind, location = found
    if kind == "archive":
        if checksums is not None:
            _check_md5(f"archive {location}", md5_file(location), checksums.archive)
        raw = _read_archive_members(location, names, max_member_bytes)
        sources = {n: f"{location}:{CIFAR10_FOLDER}/{n}" for n in names}
    else:
        raw, sources = {}, {}
        for n in names:
            f = location / n
            if not f.is_file():
                raise DataNotFoundError(f"CIFAR-10 folder {location} lacks {n}; " + _missing_message(location, sums, ""))
            if f.stat().st_size > max_member_bytes:
                raise _too_big(str(f), f.stat().st_size, max_member_bytes)
            raw[n], sources[n] = f.read_bytes(), str(f)
    if checksums is not None:
        for n in names:
            _check_md5(sources[n], md5_bytes(raw[n]), checksums.files.get(n))
    parts = [decode_cifar_batch(raw[n], sources[n]) for n in names]
    images, labels = (np.concatenate(column) for column in zip(*parts, strict=True))
    return (images, labels) if return_labels else images
