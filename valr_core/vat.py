"""Virtual Adversarial Training (Miyato et al.) as VALP's special case (paper sec. 3): K = 0, one
radius, d_X = 1 and d_Y = KL(softmax(f(x)) || softmax(f(x + r))), f(x) held constant."""

from __future__ import annotations

from .valp import VALP


def VAT(eps: float = 8.0, xi: float = 1e-6, n_power: int = 1, alpha: float = 1.0, backend: str | None = None) -> VALP:
    """A VALP whose ``loss`` is alpha * mean LDS over the batch, for (N, C) logits."""
    return VALP(backend=backend, K=0.0, xi=xi, eps_min=eps, eps_max=eps, n_power=n_power,
                d_X="one", d_Y="kl", reduction="mean", mode="linear", lam=alpha,
                stop_gradient_clean=True)
