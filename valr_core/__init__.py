"""valr_core: Virtual Adversarial Lipschitz Regularization, written once.

Imports no deep-learning framework; backends are found lazily by name or from the input.
"""

from .algorithm import Draws, Violations, adversarial_direction, compute_violations, sample_draws
from .config import ValpConfig
from .distances import INPUT_DISTANCES, OUTPUT_DISTANCES
from .interface import Backend
from .objectives import ALState
from .registry import backend_for, backend_names, get_backend
from .stateful import StatefulVALP
from .valp import VALP, ValpAux
from .vat import VAT

__all__ = [
    "VALP",
    "VAT",
    "ALState",
    "Backend",
    "Draws",
    "INPUT_DISTANCES",
    "OUTPUT_DISTANCES",
    "StatefulVALP",
    "ValpAux",
    "ValpConfig",
    "Violations",
    "adversarial_direction",
    "backend_for",
    "backend_names",
    "compute_violations",
    "get_backend",
    "sample_draws",
]
