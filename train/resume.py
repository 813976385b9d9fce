"""Every rule about continuing a run and about whose files a run directory holds: ``--resume``
keeps the saved settings but RESUME_OVERRIDES; a run directory belongs to one run (its ``run_id``,
in config.json and every checkpoint); a fresh run never writes into another's files."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train.config import ConfigError, TrainConfig, given_settings, lr_at, read_run_config
from train.runs import checkpoint as ckpt
from train.settings import BY_NAME, RESUME_OVERRIDES, RUN_INFO_KEY

log = logging.getLogger("valr.train")

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
RUN_ID_KEY = "run_id"
# What a run writes into its directory: never files it finds there from someone else.
RUN_FILES = (CONFIG_FILE, "metrics.csv", "metrics.jsonl", "metrics.png", CHECKPOINT_DIR, "samples", "tb")


class RunDirError(FileExistsError):
    """``--out`` holds something this run must not write over."""


def normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as JSON stores them (tuples as lists): what two runs' settings compare as."""
    return json.loads(json.dumps(dict(settings), sort_keys=True))


def resumed_config(saved: Mapping[str, Any], args: argparse.Namespace, cfg: TrainConfig) -> TrainConfig:
    """``--resume``: the saved run's settings, with only RESUME_OVERRIDES taken from the command
    line; any other setting given with a different value is a ConfigError naming its flag."""
    saved_cfg = TrainConfig.from_dict({k: v for k, v in saved.items() if k != RUN_INFO_KEY})
    given = {k: v for k, v in given_settings(args).items() if k in BY_NAME}
    for name, value in given.items():
        if name in RESUME_OVERRIDES:
            continue
        if normalised({name: getattr(saved_cfg, name)}) != normalised({name: getattr(cfg, name)}):
            raise ConfigError(
                f"{BY_NAME[name].option} {value!r} differs from the resumed run's {getattr(saved_cfg, name)!r}: "
                "--resume keeps the saved settings (only --steps, --out, --device and the logging, evaluation "
                "and checkpoint intervals may change); start a new --out to change it")
    kept = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if k in given or k in ("resume", "out", "framework")}
    out = saved_cfg.replace(**kept)
    out.extra = {**saved_cfg.extra, **cfg.extra}
    return out.validate()


def changed_settings(saved: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """``name: old -> new`` for each training setting that differs from a checkpoint's record (as stored)."""
    now, before = normalised(cfg.to_dict()), normalised(saved)
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(now)
            if k not in RESUME_OVERRIDES and k in before and before[k] != now[k]]


def learning_rate_change(saved: Mapping[str, Any], cfg: TrainConfig, step: int) -> str | None:
    """One line when a changed ``--steps`` moves a decaying schedule at the resumed iteration."""
    old_steps = saved.get("steps")
    if cfg.lr_decay == "constant" or not isinstance(old_steps, int) or old_steps == cfg.steps:
        return None
    parts = [f"{name} {lr_at(getattr(cfg, name), step, old_steps, cfg.lr_decay):.4g} -> "
             f"{lr_at(getattr(cfg, name), step, cfg.steps, cfg.lr_decay):.4g}" for name in ("lr_g", "lr_d")]
    return (f"--steps {cfg.steps} (was {old_steps}): the {cfg.lr_decay} learning-rate decay is re-stretched; "
            f"from iteration {step} the learning rates go {', '.join(parts)}")


def _load_resumed(resume: str, ckpt_dir: Path) -> ckpt.Checkpoint | None:
    """The checkpoint ``--resume`` names ("auto": ``ckpt_dir``'s latest); None: a directory without one."""
    path = ckpt_dir if resume == "auto" else Path(resume).expanduser()
    return ckpt.load_latest(path) if resume == "auto" or path.is_dir() else ckpt.load_checkpoint(path)


def saved_config_for_resume(cfg: TrainConfig) -> dict[str, Any] | None:
    """The settings of the run ``--resume`` continues (``--out``'s config.json, else the checkpoint's
    record); None when there is nothing to resume."""
    path = Path(cfg.out) / CONFIG_FILE
    if cfg.resume == "auto" and path.is_file():
        return read_run_config(path, "--resume:")
    found = _load_resumed(cfg.resume or "", Path(cfg.out) / CHECKPOINT_DIR)
    return None if found is None else found.metadata.get("config")


def find_checkpoint(cfg: TrainConfig, ckpt_dir: Path) -> ckpt.Checkpoint | None:
    """The checkpoint ``cfg.resume`` names; None: a fresh run, which refuses a directory with checkpoints."""
    if cfg.resume is None:
        if ckpt.list_checkpoints(ckpt_dir) or (ckpt_dir / ckpt.LATEST_NAME).exists():
            raise RunDirError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --out")
        return None
    found = _load_resumed(cfg.resume, ckpt_dir)
    if found is None and cfg.resume == "auto":
        log.info("--resume: no checkpoint in %s, starting a fresh run", ckpt_dir)
    elif found is None:
        raise FileNotFoundError(f"--resume {Path(cfg.resume).expanduser()}: no checkpoint in that directory")
    return found


def run_id_of(out: Path) -> str | None:
    """The run id in ``out``'s config.json ("": a run older than run ids; None: no valr run's config)."""
    try:
        info = read_run_config(out / CONFIG_FILE, "--out").get(RUN_INFO_KEY)
    except ConfigError:
        return None
    return str(info.get(RUN_ID_KEY) or "") if isinstance(info, dict) else None


def _holds_run(out: Path) -> bool:
    ckpt_dir = out / CHECKPOINT_DIR
    return run_id_of(out) is not None or bool(ckpt_dir.is_dir() and ckpt.list_checkpoints(ckpt_dir))


def check_out_dir(cfg: TrainConfig, found: ckpt.Checkpoint | None) -> str:
    """Refuse an ``--out`` this run must not write into; returns the run id to record."""
    out = Path(cfg.out)
    if found is None:
        if out.is_dir() and not _holds_run(out):
            _refuse_foreign_files(out, cfg)
        return uuid.uuid4().hex
    run_id = str(found.metadata.get(RUN_ID_KEY) or "")
    inside = found.path.resolve().parent == (out / CHECKPOINT_DIR).resolve()
    if not inside and _holds_run(out):
        if not (run_id and run_id_of(out) == run_id):
            raise RunDirError(
                f"--out {out} holds another run than the checkpoint {found.path}; a run directory belongs "
                f"to one run: resume into {found.path.parent.parent} or a new --out")
    elif not inside:
        _refuse_foreign_files(out, cfg)
    return run_id or uuid.uuid4().hex


def _refuse_foreign_files(out: Path, cfg: TrainConfig) -> None:
    """``out`` holds files of someone else's: refused, or with --out-exists-ok kept untouched."""
    if not out.is_dir():
        return
    # Empty directories of a run's own layout (left by a run stopped before it wrote) are no one's.
    present = sorted(p.name for p in out.iterdir()
                     if not (p.name in RUN_FILES and p.is_dir() and not any(p.iterdir())))
    if not present:
        return
    listing = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    if not cfg.out_exists_ok:
        raise RunDirError(f"--out {out} is not empty and holds no valr run ({listing}); choose a new or empty "
                          "directory, or pass --out-exists-ok to write beside these files")
    if clash := [name for name in RUN_FILES if name in present]:
        raise RunDirError(f"--out {out}: {clash[0]} is already there and was not written by this run; "
                          "--out-exists-ok never overwrites it: choose another --out")
