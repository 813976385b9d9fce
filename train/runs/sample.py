"""EMA samples from a checkpoint of any framework:
``python -m train.sample CHECKPOINT --n N --out DIR [--format png|npz] [--seed S]``.

The checkpoint names its framework and holds the run's config, so the matching trainer is
rebuilt (on ``--device``, default cpu), its state loaded, and its EMA generator sampled in
inference mode on seeded latents. ``png`` writes ``DIR/sample_00000.png``...; ``npz`` writes one
``DIR/samples.npz`` with ``images`` (uint8 NHWC, for external FID tools such as clean-fid) and
``z``. CHECKPOINT may also be a run directory or its ``checkpoints/`` (the latest is used).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from train.runs import checkpoint as ckpt
from train.config import TrainConfig
from train.loop import CHECKPOINT_DIR, TRAINER_PREFIX


def load_any(path: Path) -> ckpt.Checkpoint:
    if path.is_dir():
        for d in (path / CHECKPOINT_DIR, path):
            found = ckpt.load_latest(d) if d.is_dir() else None
            if found is not None:
                return found
        raise FileNotFoundError(f"{path}: no checkpoint in this directory")
    return ckpt.load_checkpoint(path)


def trainer_from_checkpoint(found: ckpt.Checkpoint, device: str = "cpu") -> object:
    from train import contract

    meta = found.metadata
    cfg = TrainConfig.from_dict(meta["config"]).replace(device=device, resume=None, progress=False)
    trainer = contract.trainer_class(meta["framework"])(cfg)
    trainer.load_state_arrays({k[len(TRAINER_PREFIX):]: v for k, v in found.arrays.items()
                               if k.startswith(TRAINER_PREFIX)})
    return trainer


def write_samples(checkpoint: Path, n: int, out: Path, fmt: str = "png", seed: int = 0,
                  device: str = "cpu", batch: int = 250) -> list[Path]:
    found = load_any(checkpoint)
    trainer = trainer_from_checkpoint(found, device)
    z_dim = int(found.metadata["config"]["z_dim"])
    z = np.random.default_rng(seed).standard_normal((n, z_dim)).astype(np.float32)
    images = np.concatenate([trainer.sample(z[i:i + batch]) for i in range(0, n, batch)])  # type: ignore[attr-defined]
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
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint .npz, or a run directory (its latest checkpoint)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=("png", "npz"), default="png", help="PNG files or one samples.npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents")
    p.add_argument("--device", default="cpu", help="device of the rebuilt trainer")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    try:
        paths = write_samples(args.checkpoint, args.n, args.out, args.format, args.seed, args.device)
    except (FileNotFoundError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} file(s) in {args.out}" if args.format == "png" else paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
