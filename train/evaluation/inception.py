"""IS, FID and KID from Inception features/logits (NumPy/SciPy, testable without weights), and
torch-fidelity's InceptionV3 extractor, used only when it imports and its weights are on disk:
``inception_available()`` says whether it can run and, if not, why.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.runs.checkpoint import atomic_open


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N>=2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians. As in the reference
    FID code, a singular product is retried with ``eps`` added to both diagonals, and tiny
    imaginary parts from rounding are dropped (large ones are an error)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products trigger a scipy warning; the eps retry below handles them.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm of the covariance product has a large imaginary component ({max_imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic kernel k(x, y) = (<x, y> / D + 1)^3."""
    return ((1.0 / x.shape[1]) * (x @ y.T) + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate with the polynomial kernel (diagonal terms excluded)."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


# torch-fidelity's default seed for IS shuffling and KID subsets (its DEFAULTS["rng_seed"]).
TORCH_FIDELITY_SEED = 2020


def kernel_inception_distance(
    features1: np.ndarray, features2: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
    rng: np.random.Generator | np.random.RandomState | None = None,
) -> tuple[float, float]:
    """KID (Binkowski et al.): mean and std of the unbiased MMD^2 over random subsets, capped at
    the smaller set (torch-fidelity refuses instead). Indices of ``features1`` then ``features2``
    come from ``rng.choice(n, m, replace=False)``: RandomState(2020) gives torch-fidelity's."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need (N, D) features with equal D, got {f1.shape} and {f2.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    vals = np.array([mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)],
                                   f2[rng.choice(f2.shape[0], m, replace=False)]) for _ in range(num_subsets)])
    return float(vals.mean()), float(vals.std())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10, *, shuffle: bool = True,
                    seed: int = TORCH_FIDELITY_SEED) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) of (N, C) logits: (mean, std) over ``splits`` chunks
    ``[i*N//splits, (i+1)*N//splits)`` after torch-fidelity's shuffle by
    ``RandomState(seed).permutation``, in float64."""
    lg = np.asarray(logits, np.float64)
    if lg.ndim != 2 or lg.shape[0] < splits or splits < 1:
        raise ValueError(f"need (N, C) logits with N >= splits >= 1, got shape {lg.shape} and splits={splits}")
    n = lg.shape[0]
    if shuffle:
        lg = lg[np.random.RandomState(seed).permutation(n)]
    logp = _log_softmax(lg)
    p = np.exp(logp)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        log_py = np.log(p[rows].mean(axis=0) + 1e-300)
        kl = (p[rows] * (logp[rows] - log_py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


INCEPTION_ENV = "VALR_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"


@dataclass(frozen=True)
class Availability:
    """Truthy when usable; unpacks as ``ok, reason``."""

    ok: bool
    reason: str
    weights: Path | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ok, self.reason))


def find_inception_weights(path: str | os.PathLike[str] | None = None) -> tuple[Path | None, list[Path]]:
    """(weights file or None, places looked at): ``path`` > env var > torch hub cache."""
    explicit = path if path is not None else os.environ.get(INCEPTION_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        p = p / INCEPTION_WEIGHTS_NAME if p.is_dir() else p
        return (p if p.is_file() else None), [p]
    # Where torch.hub.load_state_dict_from_url caches files, computed without importing torch.
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    hubs = [Path(os.environ["TORCH_HOME"]) / "hub"] if os.environ.get("TORCH_HOME") else []
    looked = [d / "checkpoints" / INCEPTION_WEIGHTS_NAME for d in (*hubs, Path(xdg) / "torch" / "hub")]
    return next((p for p in looked if p.is_file()), None), looked


def inception_available(weights_path: str | os.PathLike[str] | None = None) -> Availability:
    """Whether IS/FID/KID can be computed here, and if not, why. Never raises."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return Availability(False, "torch-fidelity is not installed (pip install torch-fidelity)")
    weights, looked = find_inception_weights(weights_path)
    if weights is None:
        return Availability(False, f"InceptionV3 weights not found (looked at {', '.join(map(str, looked))}); "
                            f"download {INCEPTION_WEIGHTS_URL} and pass --inception-weights PATH or set "
                            f"{INCEPTION_ENV}=PATH")
    try:
        importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    except Exception as e:  # noqa: BLE001 - any import failure (e.g. a broken torchvision) means "unavailable"
        return Availability(False, f"torch-fidelity failed to import ({type(e).__name__}: {e})")
    return Availability(True, f"InceptionV3 weights at {weights}", weights)


FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class InceptionFeatureExtractor:
    """torch-fidelity's InceptionV3: uint8 NHWC images -> (2048-d pool features, 1008 logits, its
    'logits_unbiased' as for IS)."""

    def __init__(self, weights_path: str | os.PathLike[str] | None = None, *, device: str = "cpu") -> None:
        status = inception_available(weights_path)
        if not status.ok:
            raise RuntimeError(f"Inception feature extractor unavailable: {status.reason}")
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self._torch = torch
        self.device = torch.device(device)
        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(status.weights)
        ).to(self.device)
        self.model.eval()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 NHWC RGB images, got {images.dtype} {images.shape}")
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)
        with torch.no_grad():
            pool, logits = self.model(x)
        return pool.cpu().numpy().astype(np.float32), logits.cpu().numpy().astype(np.float32)


def extract_features(feature_fn: FeatureFn, images: np.ndarray, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
    pools, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        p, lg = feature_fn(images[i : i + batch_size])
        pools.append(np.asarray(p, np.float32))
        logits.append(np.asarray(lg, np.float32))
    return np.concatenate(pools), np.concatenate(logits)


class Evaluator:
    """IS / FID / KID of generated images against reference images, whose statistics are computed
    once and optionally cached in an .npz keyed by ``reference_key`` (data and extractor)."""

    def __init__(
        self, feature_fn: FeatureFn, reference_images: np.ndarray, *,
        cache_path: str | os.PathLike[str] | None = None, reference_key: str = "", max_reference: int | None = None,
        kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10, batch_size: int = 250, seed: int = 0,
    ) -> None:
        self.feature_fn = feature_fn
        self.reference_images = reference_images
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.reference_key = reference_key
        self.max_reference = max_reference
        self.kid_subsets, self.kid_subset_size, self.is_splits = kid_subsets, kid_subset_size, is_splits
        self.batch_size = batch_size
        self.seed = seed
        self._ref: dict[str, np.ndarray] | None = None

    def reference(self) -> dict[str, np.ndarray]:
        if self._ref is not None:
            return self._ref
        if self.cache_path is not None and self.cache_path.is_file():
            with np.load(self.cache_path, allow_pickle=False) as z:
                if str(z["key"]) == self.reference_key:
                    self._ref = {k: z[k] for k in ("mu", "sigma", "kid_features")}
                    return self._ref
        images = self.reference_images
        if self.max_reference is not None and images.shape[0] > self.max_reference:
            idx = np.random.default_rng(self.seed).choice(images.shape[0], self.max_reference, replace=False)
            images = images[np.sort(idx)]
        pool, _ = extract_features(self.feature_fn, images, self.batch_size)
        mu, sigma = feature_statistics(pool)
        # KID works on features, not moments; 10k reference features bound memory and time.
        keep = np.random.default_rng(self.seed).permutation(pool.shape[0])[:10000]
        self._ref = {"mu": mu, "sigma": sigma, "kid_features": pool[np.sort(keep)]}
        if self.cache_path is not None:
            with atomic_open(self.cache_path, "wb") as f:
                np.savez(f, key=np.array(self.reference_key), **self._ref)
        return self._ref

    def evaluate(self, images: np.ndarray) -> dict[str, float]:
        ref = self.reference()
        pool, logits = extract_features(self.feature_fn, images, self.batch_size)
        # torch-fidelity's conventions: IS shuffled with seed 2020 in 10 splits; KID 100 subsets
        # of 1000 drawn by RandomState(2020); FID on all reference features (README "Evaluation").
        is_mean, is_std = inception_score(logits, splits=min(self.is_splits, images.shape[0]))
        mu, sigma = feature_statistics(pool)
        kid, kid_std = kernel_inception_distance(
            pool, ref["kid_features"], num_subsets=self.kid_subsets, subset_size=self.kid_subset_size,
            rng=np.random.RandomState(TORCH_FIDELITY_SEED),
        )
        return {"IS": is_mean, "IS_std": is_std, "FID": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
                "KID": kid, "KID_std": kid_std}
