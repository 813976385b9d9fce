"""Convenience for eager torch/TF code: the random state and AL multiplier around pure ``VALP``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .interface import Rng, Tensor
from .objectives import ALState
from .registry import backend_for
from .valp import VALP, ValpAux


class StatefulVALP:
    """Call it for the penalty (once or more per critic step, e.g. on real and fake samples), and
    ``step()`` after the critic's optimiser step: in AL mode the multiplier moves by the constraint
    of *every* call since the last ``step()``, combined with the penalty's reduction."""

    def __init__(self, valp: VALP, rng: Rng, state: ALState | None = None) -> None:
        self.valp = valp
        self.rng = rng
        self.state = state
        self.last: ValpAux | None = None
        self._pending: tuple[Any, Any] | None = None  # (combined constraint, samples) since step()

    def __call__(self, critic: Callable[[Tensor], Tensor], x: Tensor, fx: Tensor | None = None) -> Tensor:
        if self.state is None and self.valp.mode == "al":
            self.state = self.valp.init_state(x)
        loss, self.last = self.valp.loss(critic, x, self.rng, self.state, fx=fx)
        self.rng = self.last.rng
        self._accumulate(self.last)
        return loss

    def _accumulate(self, aux: ValpAux) -> None:
        c, m = aux.constraint, aux.violations.violations.shape[0]
        if self._pending is None:
            self._pending = (c, m)
            return
        total, n = self._pending
        how = self.valp.reduction
        if how == "mean":
            total = (total * n + c * m) / (n + m)
        else:  # max on the device: no host read
            total = total + c if how == "sum" else backend_for(c).namespace(c).maximum(total, c)
        self._pending = (total, n + m)

    def step(self) -> None:
        """Apply the multiplier update with the constraint of every call since the last step."""
        if self.valp.mode == "al":
            if self._pending is None:
                raise RuntimeError("StatefulVALP.step() called before the penalty was computed")
            self.state = self.valp.update(self.state, self._pending[0])
        self._pending = None

    @property
    def stats(self) -> dict[str, Tensor]:
        return {} if self.last is None else self.last.stats

    def state_dict(self) -> dict[str, Any]:
        """mu, the random state and any constraint not yet applied by ``step()``: loading it
        resumes exactly."""
        mu = None if self.state is None else self.state.mu
        return {"mu": mu, "rng": _rng_state(self.rng), "pending": self._pending}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = None if d.get("mu") is None else ALState(d["mu"])
        if d.get("rng") is not None:
            self.rng = _set_rng_state(self.rng, d["rng"])
        self._pending = d.get("pending")


def _rng_kind(rng: Rng) -> str:
    """Duck-typed (valr_core imports no framework): "torch", "tf" or "key" (JAX, immutable)."""
    if hasattr(rng, "get_state") and hasattr(rng, "set_state"):
        return "torch"
    return "tf" if hasattr(getattr(rng, "state", None), "assign") else "key"


def _rng_state(rng: Rng) -> Any:
    kind = _rng_kind(rng)
    if kind == "torch":
        return rng.get_state().clone()
    return rng.state.read_value() if kind == "tf" else rng  # a JAX key is its own state


def _set_rng_state(rng: Rng, saved: Any) -> Rng:
    kind = _rng_kind(rng)
    if kind == "torch":
        rng.set_state(saved)
    elif kind == "tf":
        rng.state.assign(saved)
    return saved if kind == "key" else rng
