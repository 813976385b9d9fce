"""Datasets as uint8 NHWC NumPy arrays and an infinite, exactly resumable batch iterator.

Sources: CIFAR-10 (python version, checksummed, decoded with a restricted unpickler), a folder
of images (Pillow), and scikit-learn's bundled ``digits`` (ships with a package, so it is the
default for smoke runs). All randomness comes from an explicit ``np.random.Generator``.
"""

from __future__ import annotations

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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.checkpoint import atomic_open

# ----------------------------------------------------------------------------- errors


class DataError(RuntimeError):
    """A dataset exists but cannot be used (corrupt, wrong format, empty)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset is not where it was looked for."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one."""


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ENV = "VALR_CIFAR10"
CIFAR10_TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_TEST_FILES = ("test_batch",)


@dataclass(frozen=True)
class Cifar10Checksums:
    """MD5 of the archive and of each extracted batch file (a parameter so tests can use
    a small generated archive in the identical format)."""

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
        raise ChecksumError(
            f"checksum mismatch for {what}: expected MD5 {expected}, got {actual}. "
            "The file is corrupt, truncated or not the official CIFAR-10 python version; "
            "delete it and download it again."
        )


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


def _cifar_files(split: str) -> tuple[str, ...]:
    if split == "train":
        return CIFAR10_TRAIN_FILES
    if split == "test":
        return CIFAR10_TEST_FILES
    if split == "all":
        return CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


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


def _read_archive_members(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member_name = f"{CIFAR10_FOLDER}/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise DataError(f"archive {archive} has no member {member_name!r}") from None
                # A link is refused, not followed: it could name any member (or none).
                fobj = tar.extractfile(member) if member.isreg() else None
                if fobj is None:
                    raise DataError(f"archive {archive} member {member_name!r} is not a regular file "
                                    f"(it is a {_TAR_KINDS.get(member.type, 'special file')})")
                out[name] = fobj.read()
            # gzip checks its CRC-32 only at the end of the stream, which tarfile may never reach:
            # read to the end, so a damaged archive cannot yield silently altered images.
            while tar.fileobj.read(1 << 20):
                pass
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
    path: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    checksums: Cifar10Checksums | None = CIFAR10_CHECKSUMS,
    download: bool = True,
    connect_timeout: float = 3.0,
    return_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 as uint8 (N, 32, 32, 3).

    ``path`` (else env ``VALR_CIFAR10``, else ``~/.cache/valr``) may be the archive, the
    extracted ``cifar-10-batches-py`` folder, or a directory holding either. Checksums are
    verified before anything is decoded (``checksums=None`` skips that, for custom data).
    When nothing is found and ``download`` is set, the official archive is downloaded into
    that directory only if a short connection check succeeds.
    """
    names = _cifar_files(split)
    root = Path(path if path is not None else os.environ.get(CIFAR10_ENV) or default_cache_dir()).expanduser()
    found = find_cifar10(root)
    sums = checksums or Cifar10Checksums(archive="")
    if found is None:
        why = ""
        if download:
            target_dir = root.parent if root.suffix == ".gz" else root
            if _can_connect("www.cs.toronto.edu", 443, connect_timeout):
                archive = _download(CIFAR10_URL, target_dir / CIFAR10_ARCHIVE, sums.archive or None, 120.0)
                found = ("archive", archive)
            else:
                why = " (no connection to www.cs.toronto.edu, so it was not downloaded)"
        if found is None:
            raise DataNotFoundError(_missing_message(root, sums, why))

    kind, location = found
    if kind == "archive":
        if checksums is not None:
            _check_md5(f"archive {location}", md5_file(location), checksums.archive)
        raw = _read_archive_members(location, names)
        sources = {n: f"{location}:{CIFAR10_FOLDER}/{n}" for n in names}
    else:
        raw, sources = {}, {}
        for n in names:
            f = location / n
            if not f.is_file():
                raise DataNotFoundError(f"CIFAR-10 folder {location} lacks {n}; " + _missing_message(location, sums, ""))
            raw[n], sources[n] = f.read_bytes(), str(f)
    if checksums is not None:
        for n in names:
            _check_md5(sources[n], md5_bytes(raw[n]), checksums.files.get(n))
    parts = [decode_cifar_batch(raw[n], sources[n]) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return (images, labels) if return_labels else images


# ----------------------------------------------------------------------------- other sources

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image_folder(path: str | os.PathLike[str], *, size: int = 32, max_images: int | None = None) -> np.ndarray:
    """All images under ``path`` (recursive, sorted), center-cropped to square and resized
    to ``size`` x ``size`` RGB, as uint8 (N, size, size, 3)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    root = Path(path).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-path {root} is a file; --data folder expects a folder of images")
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist (set it with --data-path)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if max_images is not None:
        files = files[:max_images]
    if not files:
        raise DataError(f"image folder {root} contains no images with extensions {IMAGE_EXTENSIONS}")
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                fitted = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
                out[i] = np.asarray(fitted, dtype=np.uint8)
        except Image.DecompressionBombError as e:
            raise DataError(f"refusing image {f}: {e}") from e
        except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError, struct.error) as e:
            raise DataError(f"cannot read image {f} ({type(e).__name__}: {e})") from e
    return out


def load_digits(size: int = 32) -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (1797 images), upscaled to size x size x 3 uint8."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a train extra
        raise DataError("the 'digits' dataset needs scikit-learn (pip install scikit-learn)") from e
    from PIL import Image

    small = _sk_load_digits().images  # float 0..16
    small_u8 = np.clip(np.rint(small * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.empty((small_u8.shape[0], size, size, 3), dtype=np.uint8)
    for i, img in enumerate(small_u8):
        big = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = big[:, :, None]
    return out


DATASETS = ("cifar10", "digits", "folder")


def load_dataset(name: str, path: str | os.PathLike[str] | None = None, *, download: bool = True) -> np.ndarray:
    """uint8 NHWC images of dataset ``name`` (one of :data:`DATASETS`)."""
    if name == "cifar10":
        images = load_cifar10(path, download=download)
        assert isinstance(images, np.ndarray)
        return images
    if name == "digits":
        return load_digits()
    if name == "folder":
        if path is None:
            raise ValueError("dataset 'folder' needs --data-path pointing to a folder of images")
        return load_image_folder(path)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


# ----------------------------------------------------------------------------- preprocessing


def to_model_range(
    images: np.ndarray, rng: np.random.Generator | None, *, flip: bool = True, dequantize: bool = True
) -> np.ndarray:
    """uint8 NHWC -> float32 NHWC in [-1, 1], with optional random horizontal flips and
    uniform dequantisation noise. Draw order (flip mask, then noise) is part of the contract:
    it is what makes resumed runs bit-identical."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} with shape {images.shape}")
    if (flip or dequantize) and rng is None:
        raise ValueError("flip/dequantize need an explicit np.random.Generator")
    x = images.astype(np.float32)
    if flip:
        assert rng is not None
        mask = rng.random(x.shape[0]) < 0.5
        x[mask] = x[mask, :, ::-1, :]
    if dequantize:
        assert rng is not None
        # (u + U[0,1)) / 256 is the standard continuous relaxation of 8-bit data.
        x += rng.random(x.shape, dtype=np.float32)
        x *= np.float32(2.0 / 256.0)
    else:
        x *= np.float32(2.0 / 255.0)
    x -= np.float32(1.0)
    return x


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Model-range float images in [-1, 1] -> uint8 (rounded, clipped)."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- iterator

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _state_to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _state_to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _state_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _state_from_json(v) for k, v in value.items()}
    return value


def rng_state_json(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-serialisable state of a NumPy Generator (Python ints keep 128-bit state exact)."""
    return _state_to_json(rng.bit_generator.state)


def rng_from_state_json(state: Mapping[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} in saved RNG state; expected one of {_BIT_GENERATORS}")
    bg = getattr(np.random, name)()
    bg.state = _state_from_json(dict(state))
    return np.random.Generator(bg)


def data_fingerprint(images: np.ndarray) -> str:
    """MD5 of shape, dtype and bytes: a resumed run must see exactly the same data."""
    h = hashlib.md5(usedforsecurity=False)
    h.update(f"{images.shape}|{images.dtype.str}|".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


class BatchIterator:
    """Infinite iterator of preprocessed float32 batches over uint8 NHWC ``data``.

    Each epoch is a fresh permutation; the incomplete tail of an epoch is dropped so every
    batch has ``batch_size`` examples. One Generator drives permutations, flips and noise, and
    its state plus (permutation, position, epoch) is the complete iterator state.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        *,
        seed: int | np.random.SeedSequence | None = None,
        rng: np.random.Generator | None = None,
        flip: bool = True,
        dequantize: bool = True,
    ) -> None:
        if data.dtype != np.uint8 or data.ndim != 4:
            raise ValueError(f"data must be uint8 NHWC, got {data.dtype} with shape {data.shape}")
        if not 1 <= batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must be in [1, {data.shape[0]}] (dataset size), got {batch_size}")
        if rng is not None and seed is not None:
            raise ValueError("pass either seed or rng, not both")
        self.data = data
        self.batch_size = int(batch_size)
        self.flip = flip
        self.dequantize = dequantize
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self._fingerprint: str | None = None
        self.epoch = 0
        self.position = 0
        self.perm = self.rng.permutation(data.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.data.shape[0])

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.data)
        return self._fingerprint

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def next_indices(self) -> np.ndarray:
        if self.position + self.batch_size > self.num_examples:
            self.epoch += 1
            self.position = 0
            self.perm = self.rng.permutation(self.num_examples)
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def __next__(self) -> np.ndarray:
        idx = self.next_indices()
        return to_model_range(self.data[idx], self.rng, flip=self.flip, dequantize=self.dequantize)

    # -- state ------------------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON metadata) that :meth:`import_state` turns back into this exact state."""
        arrays = {"perm": self.perm.astype(np.int64)}
        meta = {
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
            "flip": self.flip,
            "dequantize": self.dequantize,
            "data_fingerprint": self.fingerprint,
            "rng": rng_state_json(self.rng),
        }
        return arrays, meta

    def import_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        for name, mine in (
            ("num_examples", self.num_examples),
            ("batch_size", self.batch_size),
            ("flip", self.flip),
            ("dequantize", self.dequantize),
            ("data_fingerprint", self.fingerprint),
        ):
            if meta.get(name) != mine:
                raise ValueError(
                    f"data iterator state field {name!r} is {meta.get(name)!r} in the checkpoint "
                    f"but {mine!r} in this run; resuming would not reproduce the same batches"
                )
        perm = np.asarray(arrays["perm"])
        if perm.shape != (self.num_examples,) or not np.array_equal(np.sort(perm), np.arange(self.num_examples)):
            raise ValueError(f"data iterator 'perm' is not a permutation of {self.num_examples} indices")
        position = int(meta["position"])
        if not 0 <= position <= self.num_examples:
            raise ValueError(f"data iterator 'position' {position} is outside [0, {self.num_examples}]")
        self.rng = rng_from_state_json(meta["rng"])
        self.perm = perm.astype(np.int64)
        self.position = position
        self.epoch = int(meta["epoch"])
