"""Every rule about continuing a run and about whose files a run directory holds.

* ``--resume`` keeps the saved run's settings; only ``RESUME_OVERRIDES`` may change
  (:func:`resumed_config`), and a longer ``--steps`` says how the learning rate changes.
* A run directory belongs to one run (its ``run_id``, in config.json and every checkpoint): a
  checkpoint of another run is never resumed into it, and a fresh run never writes into a
  non-empty directory that is not a valr run (``--out-exists-ok`` allows a directory of other
  files, but a file the run would write that is already there is still refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train.config import DATA_RANGE, FLAGS, ConfigError, TrainConfig, flag, lr_at, read_run_config
from train.runs import checkpoint as ckpt
from train.settings import RESUME_OVERRIDES

log = logging.getLogger("valr.train")

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
RUN_INFO_KEY = "run"  # config.json's record of the launch (versions, commit, argv, run_id): not a setting
RUN_ID_KEY = "run_id"
# What a run writes into its directory: never files it finds there from someone else.
RUN_FILES = (CONFIG_FILE, "metrics.csv", "metrics.jsonl", "metrics.png", CHECKPOINT_DIR, "samples", "tb")
class RunDirError(FileExistsError):
    """``--out`` holds something this run must not write over."""


def new_run_id() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------------------- settings


def normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as JSON stores them (tuples as lists): what two runs' settings compare as."""
    return json.loads(json.dumps(dict(settings), sort_keys=True))


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (``--lr`` counts as --lr-g and --lr-d)."""
    known = set(TrainConfig.__dataclass_fields__)
    # --preset always has a value (its default): it is a base, not a setting given.
    given = {k: v for k, v in vars(args).items() if v is not None and k in known and k != "preset"}
    if getattr(args, "lr", None) is not None:
        given.setdefault("lr_g", args.lr)
        given.setdefault("lr_d", args.lr)
    if "clip" in given:
        given["clip"] = DATA_RANGE if given["clip"] else None
    return given


def resumed_config(saved: Mapping[str, Any], args: argparse.Namespace, cfg: TrainConfig) -> TrainConfig:
    """``--resume``: the saved run's settings, with only RESUME_OVERRIDES taken from the command
    line; any other setting given with a different value is a ConfigError naming its flag."""
    saved_cfg = TrainConfig.from_dict({k: v for k, v in saved.items() if k != RUN_INFO_KEY})
    given = explicit_settings(args)
    for name, value in given.items():
        if name in RESUME_OVERRIDES:
            continue
        if normalised({name: getattr(saved_cfg, name)}) != normalised({name: getattr(cfg, name)}):
            option = FLAGS[name][0] if name in FLAGS else flag(name)
            raise ConfigError(
                f"{option} {value!r} differs from the resumed run's {getattr(saved_cfg, name)!r}: --resume keeps "
                "the saved settings (only --steps, --out, --device and the logging, evaluation and checkpoint "
                "intervals may change); start a new --out to change it")
    kept = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if k in given or k in ("resume", "out", "framework")}
    out = saved_cfg.replace(**kept)
    out.extra = {**saved_cfg.extra, **cfg.extra}
    return out.validate()


def changed_settings(saved: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """``name: old -> new`` for each training setting that differs from a checkpoint's record,
    compared as stored (so ``clip`` (-1, 1) equals its JSON [-1, 1])."""
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


def saved_config_for_resume(cfg: TrainConfig) -> dict[str, Any] | None:
    """The settings of the run ``--resume`` continues: ``--out``'s config.json, else the
    checkpoint's own record; None when there is nothing to resume (a fresh run)."""
    if cfg.resume == "auto":
        path = Path(cfg.out) / CONFIG_FILE
        if path.is_file():
            return read_run_config(path, "--resume:")
        found = ckpt.load_latest(Path(cfg.out) / CHECKPOINT_DIR)
    else:
        p = Path(cfg.resume or "").expanduser()
        found = ckpt.load_latest(p) if p.is_dir() else ckpt.load_checkpoint(p)
    return None if found is None else found.metadata.get("config")


# ----------------------------------------------------------------------------- checkpoints


def find_checkpoint(cfg: TrainConfig, ckpt_dir: Path) -> ckpt.Checkpoint | None:
    """The checkpoint ``cfg.resume`` names (None: a fresh run, which refuses a directory that
    already holds checkpoints)."""
    if cfg.resume is None:
        if ckpt.list_checkpoints(ckpt_dir) or (ckpt_dir / ckpt.LATEST_NAME).exists():
            raise RunDirError(f"{ckpt_dir} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --out")
        return None
    if cfg.resume == "auto":
        found = ckpt.load_latest(ckpt_dir)
        if found is None:
            log.info("--resume: no checkpoint in %s, starting a fresh run", ckpt_dir)
        return found
    path = Path(cfg.resume).expanduser()
    if path.is_dir():
        found = ckpt.load_latest(path)
        if found is None:
            raise FileNotFoundError(f"--resume {path}: no checkpoint in that directory")
        return found
    return ckpt.load_checkpoint(path)


# ----------------------------------------------------------------------------- run directories


def run_id_of(out: Path) -> str | None:
    """The run id in ``out``'s config.json; "" for a valr run that predates run ids; None when
    ``out`` holds no valr run config."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get(RUN_INFO_KEY), dict):
        return None
    return str(saved[RUN_INFO_KEY].get(RUN_ID_KEY) or "")


def _holds_run(out: Path) -> bool:
    ckpt_dir = out / CHECKPOINT_DIR
    return run_id_of(out) is not None or bool(ckpt_dir.is_dir() and ckpt.list_checkpoints(ckpt_dir))


def check_out_dir(cfg: TrainConfig, found: ckpt.Checkpoint | None) -> str:
    """Refuse an ``--out`` this run must not write into; returns the run id to record."""
    out = Path(cfg.out)
    if found is not None:
        run_id = str(found.metadata.get(RUN_ID_KEY) or "")
        inside = found.path.resolve().parent == (out / CHECKPOINT_DIR).resolve()
        if not inside and _holds_run(out):
            if not (run_id and run_id_of(out) == run_id):
                raise RunDirError(
                    f"--out {out} holds another run than the checkpoint {found.path}; a run directory belongs "
                    f"to one run: resume into {found.path.parent.parent} or a new --out")
        elif not inside:
            _refuse_foreign_files(out, cfg)
        return run_id or new_run_id()
    if out.is_dir() and not _holds_run(out):
        _refuse_foreign_files(out, cfg)
    return new_run_id()


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
    clash = [name for name in RUN_FILES if name in present]
    if clash:
        raise RunDirError(f"--out {out}: {clash[0]} is already there and was not written by this run; "
                          "--out-exists-ok never overwrites it: choose another --out")
