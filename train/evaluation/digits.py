"""Offline quality for ``--data digits``: a small deterministic NumPy MLP classifier on the bundled
digits gives FD-digits and KID-digits (FID's and KID's formulas on its features), the classes
produced and its mean top probability. ``python -m train.evaluation.digits`` prints its accuracy."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.data import default_cache_dir, load_digits
from train.evaluation.inception import (
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
)
from train.runs.checkpoint import atomic_open

log = logging.getLogger("valr.train")

HIDDEN = 64  # feature size
SEED = 0
HELD_OUT = 0.25
ALPHA = 0.1  # L2 weight decay
MAX_ITER = 200
COVERAGE_MIN = 0.01  # a class is covered when >= 1% of the samples are classified as it
KID_SUBSETS = 20
KID_SUBSET_SIZE = 500
_VERSION = 1  # bump when the recipe above changes: it keys the cache


def downsample(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC (N, 32, 32, C) -> float64 (N, 64): grey level, 4x4 block means, in [0, 1]."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] % 8 or x.shape[2] % 8:
        raise ValueError(f"expected NHWC images with sides divisible by 8, got shape {x.shape}")
    grey = x.astype(np.float64).mean(axis=3) / 255.0
    n, h, w = grey.shape
    return grey.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)


@dataclass(frozen=True)
class DigitsClassifier:
    """64 -> HIDDEN (ReLU) -> 10 logits, NumPy weights."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    accuracy: float  # on the held-out 25%

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.maximum(downsample(images) @ self.w1 + self.b1, 0.0)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The loop's ``feature_fn``: (hidden features, logits)."""
        h = self.features(images)
        return h, h @ self.w2 + self.b2

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for a in (self.w1, self.b1, self.w2, self.b2):
            digest.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return digest.hexdigest()


def _split(n_classes_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(n_classes_labels))
    train, test = train_test_split(idx, test_size=HELD_OUT, random_state=SEED, stratify=n_classes_labels)
    return np.sort(train), np.sort(test)


def labelled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The training data's 32x32x3 uint8 images (``train.data.load_digits``) and their labels."""
    from sklearn.datasets import load_digits as sk_digits

    return load_digits(), sk_digits().target.astype(np.int64)


def train_classifier() -> DigitsClassifier:
    """Deterministic: the same weights on every call (fixed split, seed and full-batch lbfgs)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    images, labels = labelled_digits()
    x = downsample(images)
    train, test = _split(labels)
    # Standardised inputs (lbfgs converges in ~40 iterations); folded into the first layer below.
    mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 0.05
    mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN,), solver="lbfgs", alpha=ALPHA, max_iter=MAX_ITER,
                        random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit((x[train] - mean) / scale, labels[train])
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    w1, b1 = w1 / scale[:, None], b1 - (mean / scale) @ w1
    clf = DigitsClassifier(w1, b1, w2, b2, 0.0)
    accuracy = float((clf(images[test])[1].argmax(axis=1) == labels[test]).mean())
    return DigitsClassifier(w1, b1, w2, b2, accuracy)


def _cache_path() -> Path:
    import sklearn

    return default_cache_dir() / f"digits-classifier-v{_VERSION}-sklearn{sklearn.__version__}.npz"


_LOADED: DigitsClassifier | None = None


def load_classifier() -> DigitsClassifier:
    """The cached classifier (trained and cached on first use; a corrupt cache is retrained)."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    path = _cache_path()
    clf = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                clf = DigitsClassifier(z["w1"], z["b1"], z["w2"], z["b2"], float(z["accuracy"]))
                if str(z["sha256"]) != clf.checksum():
                    raise ValueError("checksum mismatch")
        except (OSError, KeyError, ValueError) as e:
            log.warning("digits classifier cache %s unusable (%s); retraining", path, e)
            clf = None
    if clf is None:
        clf = train_classifier()
        with atomic_open(path, "wb") as f:
            np.savez(f, w1=clf.w1, b1=clf.b1, w2=clf.w2, b2=clf.b2, accuracy=np.float64(clf.accuracy),
                     sha256=np.array(clf.checksum()))
    _LOADED = clf
    return clf


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_coverage(logits: np.ndarray, min_share: float = COVERAGE_MIN) -> tuple[int, float]:
    """(classes with >= ``min_share`` of the samples, mean top-class probability)."""
    p = _softmax(np.asarray(logits, np.float64))
    counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
    return int((counts >= max(1.0, min_share * len(p))).sum()), float(p.max(axis=1).mean())


class DigitsEvaluator:
    """The loop's evaluator on digits: ``evaluate(uint8 images) -> {FD_digits, KID_digits,
    classes, confidence}`` against all 1797 real digits."""

    def __init__(self, classifier: DigitsClassifier | None = None, *, seed: int = 0) -> None:
        self.classifier = classifier or load_classifier()
        self.ref_features = self.classifier.features(labelled_digits()[0])
        self.ref_stats = feature_statistics(self.ref_features)
        self.seed = seed

    def evaluate(self, images: np.ndarray) -> dict[str, float]:
        feats, logits = self.classifier(images)
        kid, _ = kernel_inception_distance(feats, self.ref_features, num_subsets=KID_SUBSETS,
                                           subset_size=KID_SUBSET_SIZE, rng=np.random.default_rng(self.seed))
        classes, confidence = class_coverage(logits)
        return {"FD_digits": frechet_distance(*feature_statistics(feats), *self.ref_stats),
                "KID_digits": kid, "classes": float(classes), "confidence": confidence}


def main() -> None:
    clf = load_classifier()
    print(json.dumps({"held_out_accuracy": clf.accuracy, "hidden": HIDDEN, "sha256": clf.checksum(),
                      "cache": str(_cache_path())}, indent=2))


if __name__ == "__main__":
    main()
