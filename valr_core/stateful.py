"""Convenience for eager torch/TF code: an object that holds the random state and the AL
multiplier. It only wraps the pure ``VALP`` functions; checkpoint it via ``state_dict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .interface import Rng, Tensor
from .objectives import ALState
from .registry import backend_for
from .valp import VALP, ValpAux


class StatefulVALP:
    """Call it for the penalty (once or several times per critic step, e.g. on real and on fake
    samples); call ``step()`` after the critic's optimiser step (AL mode): the multiplier moves
    by the constraint of *every* call since the last ``step()``, combined with the penalty's
    reduction (mean: weighted by the samples of each call; sum: summed; max: the max)."""

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
        c = aux.constraint
        m = aux.violations.violations.shape[0]
        if self._pending is None:
            self._pending = (c, m)
            return
        total, n = self._pending
        how = self.valp.reduction
        if how == "mean":
            self._pending = ((total * n + c * m) / (n + m), n + m)
        elif how == "sum":
            self._pending = (total + c, n + m)
        else:
            xp = backend_for(c).namespace(c)
            self._pending = (xp.maximum(total, c), n + m)  # on the device: no host read

    def step(self) -> None:
        """Apply the multiplier update with the constraint of every call since the last step."""
        if self.valp.mode != "al":
            self._pending = None
            return
        if self._pending is None:
            raise RuntimeError("StatefulVALP.step() called before the penalty was computed")
        self.state = self.valp.update(self.state, self._pending[0])
        self._pending = None

    @property
    def stats(self) -> dict[str, Tensor]:
        return {} if self.last is None else self.last.stats

    def state_dict(self) -> dict[str, Any]:
        """mu, the random state and any constraint not yet applied by ``step()``: loading it
        resumes exactly (torch: the Generator's state; TF: the Generator's state variable's
        value; JAX: the key)."""
        return {
            "mu": None if self.state is None else self.state.mu,
            "rng": _rng_state(self.rng),
            "pending": self._pending,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.state = None if d.get("mu") is None else ALState(d["mu"])
        if d.get("rng") is not None:
            self.rng = _set_rng_state(self.rng, d["rng"])
        self._pending = d.get("pending")


def _rng_state(rng: Rng) -> Any:
    """A snapshot of ``rng`` (duck-typed: valr_core imports no framework)."""
    if hasattr(rng, "get_state") and hasattr(rng, "set_state"):  # torch.Generator
        return rng.get_state().clone()
    state = getattr(rng, "state", None)
    if state is not None and hasattr(state, "assign"):  # tf.random.Generator
        return state.read_value()
    return rng  # an immutable JAX key is its own state


def _set_rng_state(rng: Rng, saved: Any) -> Rng:
    if hasattr(rng, "get_state") and hasattr(rng, "set_state"):
        rng.set_state(saved)
        return rng
    state = getattr(rng, "state", None)
    if state is not None and hasattr(state, "assign"):
        state.assign(saved)
        return rng
    return saved
