"""EMA samples from a checkpoint of any framework: ``python -m train.sample CHECKPOINT --n N --out
DIR [--format png|npz] [--seed S]``; everything is checked before a file is written."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from train import contract
from train.config import ConfigError, TrainConfig
from train.loop import CHECKPOINT_DIR, TRAINER_PREFIX
from train.runs import checkpoint as ckpt

# 20x the 50k samples of the FID convention: a sane cap (more is a typo, and hours of sampling)
# on top of the check against the memory available.
MAX_SAMPLES = 1_000_000
_SAMPLE_FILE = re.compile(r"^sample_\d+\.png$")


class SampleError(ValueError):
    """An argument or file train.sample cannot use: one line naming it."""


def load_any(path: Path) -> ckpt.Checkpoint:
    if path.is_dir():
        for d in (path / CHECKPOINT_DIR, path):
            found = ckpt.load_latest(d) if d.is_dir() else None
            if found is not None:
                return found
        raise FileNotFoundError(f"{path}: no checkpoint in this directory")
    return ckpt.load_checkpoint(path)


def checkpoint_config(found: ckpt.Checkpoint) -> tuple[str, TrainConfig]:
    """(framework, run config) from the checkpoint's metadata; SampleError names the file."""
    meta = found.metadata
    framework, saved = meta.get("framework"), meta.get("config")
    if not isinstance(saved, dict):
        raise SampleError(f"checkpoint {found.path} has no 'config' in its metadata (found {sorted(meta)}); "
                          "train.sample needs a checkpoint written by a valr trainer")
    if framework not in contract.FRAMEWORKS:
        raise SampleError(f"checkpoint {found.path} metadata names framework {framework!r}; "
                          f"train.sample rebuilds one of {contract.FRAMEWORKS}")
    try:
        cfg = TrainConfig.from_dict(saved)
    except (ConfigError, TypeError, ValueError) as e:
        raise SampleError(f"checkpoint {found.path} has an unusable 'config' in its metadata: {e}") from e
    if not (isinstance(cfg.z_dim, int) and cfg.z_dim >= 1 and isinstance(cfg.image_size, int) and cfg.image_size >= 1):
        raise SampleError(f"checkpoint {found.path} config has z_dim {cfg.z_dim!r} and image_size "
                          f"{cfg.image_size!r}; expected integers >= 1")
    return framework, cfg


def trainer_from_checkpoint(found: ckpt.Checkpoint, device: str = "cpu") -> object:
    framework, cfg = checkpoint_config(found)
    cfg = cfg.replace(device=device, resume=None, progress=False)
    try:
        trainer = contract.trainer_class(framework)(cfg)
    except ImportError as e:
        raise SampleError(f"checkpoint {found.path} was written by the {framework} trainer, which cannot be "
                          f"imported here ({e})") from e
    try:
        trainer.load_state_arrays({k[len(TRAINER_PREFIX):]: v for k, v in found.arrays.items()
                                   if k.startswith(TRAINER_PREFIX)})
    except (ValueError, KeyError) as e:
        raise SampleError(f"checkpoint {found.path} does not fit its own {framework} trainer: {e}") from e
    return trainer


def check_out(out: Path, fmt: str, overwrite: bool) -> None:
    """--out must be (or become) a directory; existing samples there are kept unless --overwrite."""
    if out.exists() and not out.is_dir():
        raise SampleError(f"--out {out} is an existing file; expected a directory to write samples into")
    if (blocker := ckpt.file_above(out)) is not None:
        raise SampleError(f"--out {out}: {blocker} is a file; expected a directory")
    if out.is_dir() and not overwrite:
        taken = sorted(p.name for p in out.iterdir()
                       if (_SAMPLE_FILE.match(p.name) if fmt == "png" else p.name == "samples.npz"))
        if taken:
            raise SampleError(f"--out {out} already holds {len(taken)} sample file(s) ({taken[0]}, ...); "
                              "choose another --out or pass --overwrite")


def check_room(n: int, cfg: TrainConfig, out: Path, fmt: str) -> None:
    """Refuse an --n beyond MAX_SAMPLES or whose samples do not fit in memory or on --out's disk,
    before anything is allocated."""
    image = cfg.image_size * cfg.image_size * 3
    # Latents are drawn as float64 and kept as float32; the images are concatenated once.
    need = n * (12 * cfg.z_dim + 2 * image)
    free = ckpt.available_memory()
    if n > MAX_SAMPLES or (free is not None and need > free):
        avail = f" and the {free / 2**30:.1f} GiB of memory available" if free is not None else ""
        raise SampleError(f"--n {n}: {n} samples need {need / 2**30:.1f} GiB of memory; train.sample takes at most "
                          f"{MAX_SAMPLES} samples{avail}. Use a smaller --n (several --seed values for more)")
    disk = n * (image + 1024 if fmt == "png" else image + 4 * cfg.z_dim) + (1 << 20)
    room = shutil.disk_usage(next(p for p in (out, *out.parents) if p.exists())).free
    if disk > room:
        raise SampleError(f"--n {n}: {n} samples need about {disk / 2**20:.0f} MiB on the disk of --out {out}, "
                          f"which has {room / 2**20:.0f} MiB free")


def write_samples(checkpoint: Path, n: int, out: Path, fmt: str = "png", seed: int = 0,
                  device: str = "cpu", batch: int = 250, overwrite: bool = False) -> list[Path]:
    if n < 1:
        raise SampleError(f"--n {n}: expected at least 1 sample")
    if seed < 0:
        raise SampleError(f"--seed must be >= 0, got {seed}")
    check_out(out, fmt, overwrite)
    found = load_any(checkpoint)  # refuses a damaged file or NaN/Inf weights, naming it
    _, cfg = checkpoint_config(found)
    check_room(n, cfg, out, fmt)
    trainer: Any = trainer_from_checkpoint(found, device)
    z = np.random.default_rng(seed).standard_normal((n, cfg.z_dim)).astype(np.float32)
    images = np.concatenate([trainer.sample(z[i:i + batch]) for i in range(0, n, batch)])
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        path = out / "samples.npz"
        with ckpt.atomic_open(path, "wb") as f:
            np.savez(f, images=images, z=z)
        return [path]
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        path = out / f"sample_{i:05d}.png"
        with ckpt.atomic_open(path, "wb") as f:
            Image.fromarray(img).save(f, format="PNG")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint .npz, or a run directory (its latest checkpoint)")
    p.add_argument("--n", type=int, default=64, help=f"number of samples (1 to {MAX_SAMPLES})")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=("png", "npz"), default="png", help="PNG files or one samples.npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents")
    p.add_argument("--device", default="cpu", help="device of the rebuilt trainer")
    p.add_argument("--overwrite", action="store_true", help="replace sample files already in --out")
    args = p.parse_args(argv)
    try:
        paths = write_samples(args.checkpoint, args.n, args.out, args.format, args.seed, args.device,
                              overwrite=args.overwrite)
    except (OSError, ckpt.CheckpointError, ValueError) as e:  # SampleError, ConfigError are ValueErrors
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"{len(paths)} file(s) in {args.out}" if args.format == "png" else paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
