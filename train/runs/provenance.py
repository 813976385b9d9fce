"""config.json's launch record: what ran, where, from which code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_info(trainer: Any, argv: Sequence[str]) -> dict[str, Any]:
    """config.json's launch record: package versions, git commit, argv, device, world size."""
    import importlib.metadata as md
    import platform
    import subprocess

    versions = {"python": platform.python_version()}
    for name in ("valr", "numpy", "scipy", "scikit-learn", "torch", "jax", "jaxlib", "flax", "optax",
                 "tensorflow", "tensorflow-cpu", "keras"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    repo = Path(__file__).resolve().parents[2]
    commit = None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=False).stdout.strip()
            commit = head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "argv": list(argv),
            "device": str(getattr(trainer, "device", None) or "default"),
            "world_size": int(getattr(trainer, "world_size", None) or getattr(trainer, "replicas", None) or 1),
            "host": platform.node()}
