"""The evaluator of a run, chosen by its dataset: a new dataset adds one entry to ``EVALUATORS``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from train.data import default_cache_dir
from train.evaluation.inception import (
    Evaluator,
    FeatureFn,
    InceptionFeatureExtractor,
    inception_available,
)


class EvaluationUnavailable(RuntimeError):
    """The dataset's evaluation cannot run here (the reason is the message); training goes on."""


def _digits(cfg: Any, data: np.ndarray, fingerprint: str) -> Any:
    # Offline: FD-digits / KID / class coverage on a NumPy digits classifier.
    from train.evaluation.digits import DigitsEvaluator

    return DigitsEvaluator(seed=cfg.seed)


def _inception(cfg: Any, data: np.ndarray, fingerprint: str) -> Evaluator:
    status = inception_available(cfg.inception_weights)
    if not status.ok:
        raise EvaluationUnavailable(status.reason)
    device = "cuda" if cfg.device.startswith(("cuda", "gpu")) else "cpu"
    # Inception statistics of a dataset are shared by every run on it.
    return Evaluator(InceptionFeatureExtractor(status.weights, device=device), data,
                     cache_path=default_cache_dir() / f"inception-reference-{fingerprint}.npz",
                     reference_key=f"{fingerprint}:{status.weights.name if status.weights else ''}", seed=cfg.seed)


EVALUATORS: dict[str, Callable[[Any, np.ndarray, str], Any]] = {
    "digits": _digits,
    "cifar10": _inception,
    "folder": _inception,
}


def evaluator_for(cfg: Any, data: np.ndarray, fingerprint: str, out: Path, feature_fn: FeatureFn | None = None) -> Any:
    """The run's evaluator; ``feature_fn`` (images -> (pool features, logits)) replaces the
    dataset's choice (tests). Raises EvaluationUnavailable with the reason."""
    if feature_fn is not None:
        return Evaluator(feature_fn, data, cache_path=out / "eval_reference.npz", reference_key=f"{fingerprint}:custom",
                         seed=cfg.seed)
    return EVALUATORS[cfg.data](cfg, data, fingerprint)
