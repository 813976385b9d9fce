"""The other sources (a folder of images, scikit-learn's bundled digits), the dataset choice by
name, and the conversions between uint8 images and the models' [-1, 1] range."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from train.data.cifar10 import load_cifar10
from train.data.errors import DataError, DataNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _sixteen_bit(im: Any, source: Path) -> bool:
    """Whether an integer-mode image holds 16-bit samples: ``I;16*``, or ``I`` from a 16-bit raw
    mode or a PPM (scaled to 0..65535). Other ``I`` (32-bit) and float ``F`` images have no fixed
    range, so they are refused rather than guessed."""
    if im.mode.startswith("I;16"):
        return True
    if im.mode not in ("I", "F"):
        return False
    rawmodes = [t.args[0] if isinstance(t.args, tuple) else t.args for t in im.tile]
    if im.mode == "I" and (im.format == "PPM" or (rawmodes and all("16" in str(r) for r in rawmodes))):
        return True
    raw = f", raw mode {rawmodes[0]}" if rawmodes else ""
    raise DataError(f"image {source} has {'32-bit float' if im.mode == 'F' else '32-bit integer'} pixels "
                    f"(mode {im.mode}{raw}) with no fixed range; convert it to 8 or 16 bits per sample")


def _to_rgb8(im: Any, sixteen_bit: bool) -> Any:
    """Any Pillow mode -> 8-bit RGB: 16-bit samples keep their high byte, as Pillow does for 16-bit
    RGB PNGs; alpha is dropped (like torchvision's loader); palettes resolved; 1-bit is 0/255."""
    from PIL import Image

    if sixteen_bit:
        wide = np.asarray(im).astype(np.int64)  # I;16 (any byte order) or I
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")


# Pillow's decoders raise many exception types on damaged or hostile files (OSError,
# ValueError, SyntaxError, struct.error, IndexError, ...): every one means "cannot read it".
_DECODE_ERRORS = (Exception,)


def load_image_folder(path: str | os.PathLike[str], *, size: int = 32, max_images: int | None = None) -> np.ndarray:
    """All images under ``path`` (recursive, sorted), center-cropped and resized to uint8
    (N, size, size, 3), each mode scaled by its bit depth (:func:`_to_rgb8`). A file that cannot
    be read raises :class:`DataError` naming it."""
    from PIL import Image, ImageOps

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
                # The bit depth from the raw mode (gone once the pixels are loaded), then the
                # orientation (from the original's EXIF), then the conversion.
                sixteen_bit = _sixteen_bit(im, f)
                rgb = _to_rgb8(ImageOps.exif_transpose(im), sixteen_bit)
                fitted = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
                out[i] = np.asarray(fitted, dtype=np.uint8)
        except DataError:
            raise
        except Image.DecompressionBombError as e:
            raise DataError(f"refusing image {f}: {e}") from e
        except _DECODE_ERRORS as e:
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
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))[:, :, None]
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
        mask = rng.random(x.shape[0]) < 0.5
        x[mask] = x[mask, :, ::-1, :]
    if dequantize:
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
