"""The trainers' command line: ``sys.exit(main("torch", make_trainer))``. Parses the settings,
applies ``--resume``/``--print-config``, checks ``--out`` and the data before any model is built,
and maps every error to one line and an exit status (2: a flag or file to fix)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from train import loop, resume
from train.config import ConfigError, TrainConfig, build_parser, parse_config
from train.data import DataError, load_dataset
from train.runs import checkpoint as ckpt

log = logging.getLogger("valr.train")


class _TqdmLogHandler(logging.Handler):
    """Routes log lines through tqdm.write so they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def _setup_logging() -> None:
    if not log.handlers:
        handler = _TqdmLogHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


# Errors a user causes with a flag or a file: exit status 2 (usage), one line.
_USAGE_ERRORS = (ConfigError, DataError, ckpt.CheckpointError, loop.ResumeError, loop.PreflightError,
                 FileExistsError, FileNotFoundError)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def describe_error(error: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an error that ended a run: 2 for usage errors (a
    flag or file to fix), 1 for runtime failures (divergence, a full disk, anything else)."""
    if isinstance(error, KeyboardInterrupt):
        return 128 + int(signal.SIGINT), _one_line(error) or "interrupted"
    if isinstance(error, _USAGE_ERRORS):
        return 2, _one_line(error)
    if isinstance(error, loop.NonFiniteError):
        return 1, _one_line(error)
    if isinstance(error, OSError) and error.filename is not None:
        return 1, f"{error.filename}: {error.strerror or _one_line(error)}"
    hint = "" if isinstance(error, OSError) else " (run with --debug for the traceback)"
    return 1, f"{type(error).__name__}: {_one_line(error)}{hint}"


def main(framework: str, make_trainer: Callable[[TrainConfig], loop.Trainer], argv: Sequence[str] | None = None,
         *, parser: Any = None) -> int:
    """Command-line entry shared by the trainers. Returns 0 when completed, 128 + signal when
    interrupted (after a checkpoint), 1 when the run diverged or failed, 2 on configuration, data,
    checkpoint or output-directory errors; errors are one line (``--debug``: and the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args  # declared by build_parser; not a setting of the run
    parser = parser or build_parser(framework)
    cfg = parse_config(args, framework, parser)
    _setup_logging()
    try:
        if cfg.resume is not None:  # the saved run's settings; a changed one is refused by name
            saved = resume.saved_config_for_resume(cfg)
            if saved is not None:
                try:
                    cfg = resume.resumed_config(saved, parser.parse_args(args), cfg)
                except ConfigError as e:
                    parser.error(f"--resume: {e}")
        if "--print-config" in args:
            print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
            return 0
        # Before building models: fail in seconds, not minutes.
        resume.check_out_dir(cfg, resume.find_checkpoint(cfg, Path(cfg.out) / resume.CHECKPOINT_DIR))
        data = load_dataset(cfg.data, cfg.data_path, download=cfg.download)
        loop.check_batch_fits(cfg, data)
        trainer = make_trainer(cfg)
        result = loop.run_training(trainer, cfg, data=data, argv=[f"python -m train.{framework}_wgan", *args])
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place errors become exit codes
        if debug:
            traceback.print_exc(file=sys.stderr)
        code, message = describe_error(e)
        print(f"error: {message}", file=sys.stderr)
        return code
    return result.exit_code
