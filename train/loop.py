"""The framework-neutral WGAN training loop. A trainer (torch, TF or JAX) implements ``Trainer``
with NumPy in and out; this module does the rest: batches, the n_critic + 1 schedule, logs, EMA
sample grids, checkpoints, exact resume, the NaN/Inf stop and IS/FID/KID. Resume is exact because
the trainer's, the data iterator's and the loop's own state all go into the checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from train import resume
from train.config import ConfigError, TrainConfig, lr_at
from train.data import BatchIterator, load_dataset
from train.evaluation.inception import Evaluator, FeatureFn
from train.evaluation.registry import EvaluationUnavailable, evaluator_for
from train.runs import checkpoint as ckpt
from train.runs.logs import MetricsWriter, TensorBoardWriter, save_image_grid
from train.runs.provenance import run_info
from train.seeds import numpy_stream

log = logging.getLogger("valr.train")

CHECKPOINT_DIR = resume.CHECKPOINT_DIR
TRAINER_PREFIX = "trainer/"
DATA_PREFIX = "data/"


@runtime_checkable
class Trainer(Protocol):
    """What a framework trainer implements, NumPy in and out; the full contract (shapes, state
    keys, the optional data-parallel ``is_chief`` and ``sync_stop``) is in docs/trainers.md."""

    framework: str

    def critic_step(self, real: np.ndarray, step: int) -> Mapping[str, float]: ...
    def generator_step(self, step: int) -> Mapping[str, float]: ...
    def sample(self, z: np.ndarray) -> np.ndarray: ...
    def state_arrays(self) -> dict[str, np.ndarray]: ...
    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None: ...


class ResumeError(ValueError):
    """The checkpoint cannot be resumed into this run (framework, architecture, keys, data)."""


class NonFiniteError(RuntimeError):
    """A loss (or the state about to be checkpointed) became NaN/Inf; training stopped."""


class PreflightError(ValueError):
    """Found before training: the run could not write its outputs (--out, disk space)."""


@dataclass
class RunResult:
    status: str  # "completed" | "interrupted"
    step: int
    checkpoint: Path | None
    signal: int | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        # 128 + signal number is the shell convention for "ended by this signal".
        return 0 if self.status == "completed" else 128 + int(self.signal or signal.SIGINT)


class _StopRequest:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without a final checkpoint")
        self.signum = signum
        log.warning("received %s: finishing this iteration, writing a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # the only thread that may install them
            self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


class _Accumulator:
    """Running sums for interval means; JSON round-trips floats exactly, so it resumes exactly."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.sums: dict[str, float] = dict(state["sums"]) if state else {}
        self.counts: dict[str, int] = dict(state["counts"]) if state else {}

    def add(self, metrics: Mapping[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}


def _check_finite(metrics: Mapping[str, Any], where: str, step: int, last_ckpt: Path | None) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{where} returned non-scalar metric {k!r}={v!r}") from e
        if not math.isfinite(f):
            kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint had been written yet"
            raise NonFiniteError(f"{where} at iteration {step + 1} returned {k}={f}; training stopped. "
                                 f"Nothing was saved after the divergence; {kept}.")
        out[k] = f
    return out


def check_batch_fits(cfg: TrainConfig, data: np.ndarray) -> None:
    if cfg.batch_size > len(data):
        raise ConfigError(f"--batch-size must be at most the dataset's size ({len(data)} images in "
                          f"--data {cfg.data}), got {cfg.batch_size}")


def _every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _unprefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _fixed_latents(cfg: TrainConfig, n: int, purpose: str, step: int = 0) -> np.ndarray:
    # Separate seeded streams, never the trainer's RNG, so sampling cannot perturb training.
    return numpy_stream(cfg.seed, purpose, step).standard_normal((n, cfg.z_dim)).astype(np.float32)


def _check_images(images: np.ndarray, n: int, cfg: TrainConfig) -> np.ndarray:
    arr = np.asarray(images)
    want = (n, cfg.image_size, cfg.image_size, 3)
    if arr.dtype != np.uint8 or arr.shape != want:
        raise TypeError(f"trainer.sample must return uint8 {want}, got {arr.dtype} {arr.shape}")
    return arr


class TrainingLoop:
    """Runs ``trainer`` per ``cfg``; ``data`` (uint8 NHWC) and ``feature_fn`` (images -> (pool
    features, logits)) replace the configured dataset and InceptionV3, mainly for tests."""

    def __init__(self, trainer: Trainer, cfg: TrainConfig, *, data: np.ndarray | None = None,
                 feature_fn: FeatureFn | None = None, argv: Sequence[str] | None = None) -> None:
        self.argv = list(sys.argv if argv is None else argv)
        missing = [m for m in ("critic_step", "generator_step", "sample", "state_arrays", "load_state_arrays")
                   if not callable(getattr(trainer, m, None))]
        if missing or not isinstance(getattr(trainer, "framework", None), str):
            raise TypeError(f"trainer does not implement the Trainer protocol (missing: {missing or ['framework']})")
        self.trainer = trainer
        self.cfg = cfg.validate()
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self.manager = ckpt.CheckpointManager(self.ckpt_dir, keep=cfg.keep_checkpoints)
        self.data = data if data is not None else load_dataset(cfg.data, cfg.data_path, download=cfg.download)
        check_batch_fits(cfg, self.data)
        self.batches = BatchIterator(self.data, cfg.batch_size, seed=cfg.effective_data_seed,
                                     flip=cfg.flip, dequantize=cfg.dequantize)
        self.feature_fn = feature_fn
        self.step = 0
        self.accum = _Accumulator()
        self.last_ckpt: Path | None = None
        self.last_ckpt_step: int | None = None
        self.skipped = 0  # divergent iterations rolled back (--skip-nonfinite)
        self.run_id = ""  # set by run(): the id config.json and every checkpoint record
        self._evaluator: Evaluator | None = None
        self._eval_disabled = False
        self._postfix: dict[str, float] = {}
        self.is_chief = bool(getattr(trainer, "is_chief", True))
        self.train_seconds = 0.0  # in iterations only (no evaluation, samples or checkpoints)
        if cfg.clip_weights > 0 and not callable(getattr(trainer, "clip_critic_weights", None)):
            raise ConfigError(f"--clip-weights: the {trainer.framework} trainer has no clip_critic_weights")

    def _preflight(self) -> None:
        """Check before training that ``--out`` and its checkpoints/ are (creatable) writable
        directories with disk room for a checkpoint; a failed check removes what it created."""
        # On every replica, in the same order: state_arrays may be a collective operation.
        need = sum(np.asarray(v).nbytes for v in self.trainer.state_arrays().values())
        if not self.is_chief:
            return
        need += 8 * self.batches.num_examples + (1 << 20)  # data permutation, zip and metadata
        created: list[Path] = []
        try:
            for d in (self.out, self.ckpt_dir):
                self._preflight_dir(d, created)
            free = shutil.disk_usage(self.ckpt_dir).free
            if free < need:
                raise PreflightError(f"--out {self.out}: not enough free disk space for a checkpoint "
                                     f"(about {need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)")
        except BaseException:
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise

    def _preflight_dir(self, d: Path, created: list[Path]) -> None:
        existing = next((p for p in (d, *d.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "is a file" if existing == d else f"is under {existing}, which is a file"
            raise PreflightError(f"--out {self.out}: {d} {where}; expected a directory")
        missing = [p for p in (d, *d.parents) if not p.exists()]
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PreflightError(f"--out {self.out}: cannot create directory {d} ({e.strerror or e})") from e
        created.extend(reversed(missing))
        probe = d / f".preflight-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise PreflightError(f"--out {self.out}: directory {d} is not writable ({e.strerror or e})") from e
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)

    def _load(self, found: ckpt.Checkpoint) -> None:
        """The trainer's state and the loop's position from ``found`` (not the data stream's)."""
        self.trainer.load_state_arrays(_unprefixed(found.arrays, TRAINER_PREFIX))
        self.step = int(found.metadata["step"])
        self.accum = _Accumulator(found.metadata.get("loop", {}).get("accum"))

    def _restore(self, found: ckpt.Checkpoint) -> None:
        meta = found.metadata
        saved_cfg = meta.get("config", {})
        try:
            ckpt.validate_metadata(meta, framework=self.trainer.framework, architecture=self.cfg.architecture())
            if changed := resume.changed_settings(saved_cfg, self.cfg):
                log.warning("resuming with settings that differ from the checkpoint's: %s", ", ".join(changed))
            self._load(found)
            self.batches.import_state(_unprefixed(found.arrays, DATA_PREFIX), meta["data_iterator"])
            self.train_seconds = float(meta.get("loop", {}).get("train_seconds", 0.0))
        except (ValueError, KeyError) as e:
            msg = str(e) if isinstance(e, ValueError) else f"missing entry {e}"
            raise ResumeError(f"cannot resume from {found.path} (written by {ckpt.written_by(meta)}): {msg}") from e
        self.last_ckpt, self.last_ckpt_step = found.path, self.step
        if lr_change := resume.learning_rate_change(saved_cfg, self.cfg, self.step):
            log.warning("%s", lr_change)
        log.info("resumed from %s at iteration %d", found.path, self.step)

    def _save_checkpoint(self) -> None:
        arrays: dict[str, np.ndarray] = {}
        for k, v in self.trainer.state_arrays().items():  # on every replica: it may be a collective
            a = np.asarray(v)
            if a.dtype.kind in "fc" and not np.isfinite(a).all():
                raise NonFiniteError(f"trainer state array {k!r} contains NaN/Inf at iteration {self.step}; not "
                                     f"checkpointing it. The last good checkpoint is {self.last_ckpt or 'none'}.")
            arrays[TRAINER_PREFIX + k] = a
        if self.is_chief:  # the chief writes the one checkpoint of this step
            data_arrays, data_meta = self.batches.export_state()
            arrays.update({DATA_PREFIX + k: v for k, v in data_arrays.items()})
            path = self.manager.save(self.step, arrays, {
                "framework": self.trainer.framework, "architecture": self.cfg.architecture(),
                "config": self.cfg.to_dict(), "data_iterator": data_meta,
                "loop": {"accum": self.accum.state(), "train_seconds": self.train_seconds},
                resume.RUN_ID_KEY: self.run_id, "saved_at": time.time()})
        else:
            path = self.ckpt_dir / ckpt.checkpoint_name(self.step)
        self.last_ckpt, self.last_ckpt_step = path, self.step

    def _open_logs(self, resume_step: int | None) -> None:
        """The chief's metrics and TensorBoard writers, dropping what was logged after ``resume_step``."""
        self.metrics = MetricsWriter(self.out, resume_step=resume_step) if self.is_chief else None
        self.tb = TensorBoardWriter(self.out / "tb", purge_step=None if resume_step is None else resume_step + 1) \
            if self.cfg.tensorboard and self.is_chief else None

    def _close_logs(self) -> None:
        for writer in (self.metrics, self.tb):
            if writer is not None:
                writer.close()

    def _log_row(self, extra: Mapping[str, float], seconds_per_it: float) -> None:
        if self.is_chief:
            cfg = self.cfg
            row: dict[str, Any] = {
                **self.accum.means(), "lr/g": lr_at(cfg.lr_g, self.step - 1, cfg.steps, cfg.lr_decay),
                "lr/d": lr_at(cfg.lr_d, self.step - 1, cfg.steps, cfg.lr_decay), "data/epoch": self.batches.epoch,
                **extra, "time/sec_per_it": seconds_per_it, "time/train_s": self.train_seconds}
            self.metrics.write(self.step, row)
            if self.tb is not None:
                self.tb.add_scalars(self.step, row)
                self.tb.flush()
        self.accum.reset()

    def _save_samples(self) -> None:
        if not self.is_chief:
            return
        n = self.cfg.n_sample_grid
        images = _check_images(self.trainer.sample(self.fixed_z), n, self.cfg)
        grid = save_image_grid(self.out / "samples" / f"step_{self.step:07d}.png", images,
                               nrow=max(1, int(math.sqrt(n))))
        if self.tb is not None:
            self.tb.add_image("samples/ema", grid, self.step)
            self.tb.flush()

    def _evaluate(self, n: int) -> dict[str, float]:
        if not self.is_chief or self._eval_disabled:
            return {}
        if self._evaluator is None:
            try:
                self._evaluator = evaluator_for(self.cfg, self.data, self.batches.fingerprint, self.out,
                                                self.feature_fn)
            except EvaluationUnavailable as e:
                log.warning("evaluation disabled for this run: %s", e)
                self._eval_disabled = True
                return {}
        z = _fixed_latents(self.cfg, n, "eval", step=self.step)
        bs = self.cfg.gen_batch_size
        images = np.concatenate([_check_images(self.trainer.sample(z[i:i + bs]), len(z[i:i + bs]), self.cfg)
                                 for i in range(0, n, bs)])
        t0 = time.perf_counter()
        result = {f"eval/{k}": v for k, v in self._evaluator.evaluate(images).items()}
        log.info("iteration %d: %s (%.1fs)", self.step,
                 ", ".join(f"{k[5:]}={v:.4g}" for k, v in result.items()), time.perf_counter() - t0)
        return result

    def run(self) -> RunResult:
        cfg = self.cfg
        found = resume.find_checkpoint(cfg, self.ckpt_dir)
        self.run_id = resume.check_out_dir(cfg, found)  # before anything is written into --out
        self._preflight()
        if found is not None:
            self._restore(found)
            if self.step >= cfg.steps:
                log.info("the run in %s is already complete (%d/%d iterations)", self.out, self.step, cfg.steps)
                return RunResult("completed", self.step, self.last_ckpt)
        if self.is_chief:
            self.out.mkdir(parents=True, exist_ok=True)
            with ckpt.atomic_open(self.out / "config.json", "w", encoding="utf-8") as f:
                info = {**run_info(self.trainer, self.argv), resume.RUN_ID_KEY: self.run_id}
                json.dump({**cfg.to_dict(), resume.RUN_INFO_KEY: info}, f, indent=2, sort_keys=True)
        self.fixed_z = _fixed_latents(cfg, cfg.n_sample_grid, "sample_grid")
        self._open_logs(self.step if found is not None else None)
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.is_chief),
                        dynamic_ncols=True, desc=self.trainer.framework, unit="it", file=sys.stderr)
        try:
            with _StopRequest() as stop:
                return self._train(stop)
        finally:
            self.bar.close()
            self._close_logs()

    def _restart_clock(self) -> None:
        self._t0, self._t0_step = time.perf_counter(), self.step

    def _seconds_per_it(self) -> float:
        return (time.perf_counter() - self._t0) / max(1, self.step - self._t0_step)

    def _train(self, stop: _StopRequest) -> RunResult:
        cfg = self.cfg
        self._restart_clock()
        while True:
            try:
                self._iteration()
            except NonFiniteError as error:
                self._roll_back_or_raise(error)
                continue
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in self._postfix.items()}, refresh=False)
            self.bar.update(1)
            if self.step == cfg.steps:
                # Checkpoint first (the state is what matters), then samples, the final evaluation
                # and one log row holding both the last interval and the metrics.
                seconds_per_it = self._seconds_per_it()
                if self._checkpoint_or_roll_back():
                    break
                continue
            extra = self._evaluate(cfg.eval_samples) if _every(self.step, cfg.eval_every) else {}
            if _every(self.step, cfg.log_every) or extra:
                self._log_row(extra, self._seconds_per_it())
                self._restart_clock()
            if _every(self.step, cfg.sample_every):
                self._save_samples()
            if _every(self.step, cfg.checkpoint_every):
                self._checkpoint_or_roll_back()
            stop_now = stop.signum is not None
            sync_stop = getattr(self.trainer, "sync_stop", None)
            if sync_stop is not None:
                stop_now = bool(sync_stop(stop_now))
            if stop_now:
                signum = stop.signum if stop.signum is not None else int(signal.SIGTERM)
                if self.last_ckpt_step != self.step:
                    self._checkpoint_or_roll_back()  # rolled back: the last good one stays
                log.warning("stopped by %s at iteration %d; checkpoint %s; continue with --resume",
                            signal.Signals(signum).name, self.step, self.last_ckpt)
                return RunResult("interrupted", self.step, self.last_ckpt, signal=signum)
        self._save_samples()
        n_eval = cfg.final_eval_samples or (cfg.eval_samples if _every(self.step, cfg.eval_every) else 0)
        eval_metrics = self._evaluate(n_eval) if n_eval else {}
        self._log_row(eval_metrics, seconds_per_it)
        log.info("done: %d iterations; checkpoint %s; samples in %s; logs in %s", self.step, self.last_ckpt,
                 self.out / "samples", self.metrics.jsonl_path if self.metrics is not None else "-")
        return RunResult("completed", self.step, self.last_ckpt, eval_metrics=eval_metrics)

    def _checkpoint_or_roll_back(self) -> bool:
        """Write a checkpoint (True); when the state holds NaN/Inf, --skip-nonfinite rolls back
        to the last good checkpoint as a divergent iteration would (False), else it raises."""
        try:
            self._save_checkpoint()
        except NonFiniteError as error:
            self._roll_back_or_raise(error)
            return False
        return True

    def _roll_back_or_raise(self, error: NonFiniteError) -> None:
        """--skip-nonfinite: reload the last checkpoint's trainer state and loop position, but
        keep the data stream where it is, so the batches since (the bad one included) are skipped."""
        if self.skipped >= self.cfg.skip_nonfinite or self.last_ckpt is None:
            raise error
        self.skipped += 1
        found = ckpt.load_checkpoint(self.last_ckpt)
        self._load(found)
        # Logged rows past the rolled-back step describe the discarded iterations: drop them.
        self._close_logs()
        self._open_logs(self.step)
        what = str(error).split("; training stopped")[0]
        log.warning("%s; rolled back to %s (iteration %d), skipping the batches drawn since (%d of %d allowed)",
                    what, found.path, self.step, self.skipped, self.cfg.skip_nonfinite)
        self.bar.n = self.step
        self._restart_clock()

    def _iteration(self) -> None:
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        for k in range(cfg.n_critic):
            real = next(self.batches)
            m = _check_finite(self.trainer.critic_step(real, step),
                              f"critic step {k + 1}/{cfg.n_critic}", step, self.last_ckpt)
            if cfg.clip_weights > 0:
                self.trainer.clip_critic_weights(cfg.clip_weights)  # type: ignore[attr-defined]
            self.accum.add(m)
        g = _check_finite(self.trainer.generator_step(step), "generator step", step, self.last_ckpt)
        self.accum.add(g)
        self._postfix = {**m, **g}
        self.train_seconds += time.perf_counter() - t0
        self.step = step + 1


def run_training(trainer: Trainer, cfg: TrainConfig, **options: Any) -> RunResult:
    """Train ``trainer`` per ``cfg``; ``options`` (data, feature_fn, argv) as :class:`TrainingLoop` takes."""
    return TrainingLoop(trainer, cfg, **options).run()
