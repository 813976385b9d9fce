"""Convenience for eager torch/TF code: an object that holds the random state and the AL
multiplier. It only wraps the pure ``VALP`` functions; checkpoint it via ``state_dict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .interface import Rng, Tensor
from .objectives import ALState
from .valp import VALP, ValpAux


class StatefulVALP:
    """Call it for the penalty; call ``step()`` after the critic's optimiser step (AL mode)."""

    def __init__(self, valp: VALP, rng: Rng, state: ALState | None = None) -> None:
        self.valp = valp
        self.rng = rng
        self.state = state
        self.last: ValpAux | None = None

    def __call__(self, critic: Callable[[Tensor], Tensor], x: Tensor, fx: Tensor | None = None) -> Tensor:
        if self.state is None and self.valp.mode == "al":
            self.state = self.valp.init_state(x)
        loss, self.last = self.valp.loss(critic, x, self.rng, self.state, fx=fx)
        self.rng = self.last.rng
        return loss

    def step(self) -> None:
        """Apply the multiplier update with the constraint of the last call."""
        if self.valp.mode != "al":
            return
        if self.last is None:
            raise RuntimeError("StatefulVALP.step() called before the penalty was computed")
        self.state = self.valp.update(self.state, self.last.constraint)

    @property
    def stats(self) -> dict[str, Tensor]:
        return {} if self.last is None else self.last.stats

    def state_dict(self) -> dict[str, Any]:
        return {"mu": None if self.state is None else self.state.mu}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = None if d.get("mu") is None else ALState(d["mu"])
