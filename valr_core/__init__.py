"""valr_core: Virtual Adversarial Lipschitz Regularization, written once. Imports no deep-learning
framework; backends are found lazily by name or from the input."""

from importlib.metadata import PackageNotFoundError, version

from .algorithm import Draws, Violations, adversarial_direction, compute_violations, sample_draws
from .config import GradientPenaltyConfig, PenaltyConfig, ValpConfig
from .distances import INPUT_DISTANCES, OUTPUT_DISTANCES
from .gradient_penalty import GP, LP, GPAux, sample_alphas
from .interface import Backend
from .objectives import ALState
from .registry import backend_for, backend_names, get_backend
from .stateful import StatefulVALP
from .valp import VALP, ValpAux
from .vat import VAT

try:
    __version__ = version("valr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "GP", "LP", "VALP", "VAT", "ALState", "Backend", "Draws", "GPAux", "GradientPenaltyConfig",
    "INPUT_DISTANCES", "OUTPUT_DISTANCES", "PenaltyConfig", "StatefulVALP", "ValpAux", "ValpConfig",
    "Violations", "adversarial_direction", "backend_for", "backend_names", "compute_violations",
    "get_backend", "sample_alphas", "sample_draws",
]
