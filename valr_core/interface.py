"""The abstract autodiff interface VALP is written against: a backend adapter supplies these
operations for one framework; all other math runs through the framework's array-API namespace
(``Backend.namespace``) and einops, on native tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

Tensor = Any  # a native framework tensor (torch.Tensor, tf.Tensor, jax.Array)
Rng = Any  # an explicit random state (torch.Generator, tf.random.Generator, JAX key)


@runtime_checkable
class Backend(Protocol):
    """The few framework operations the penalties need. Implementations hold no mutable state."""

    name: str  # registry name: "torch", "tf" or "jax"

    def is_tensor(self, x: Any) -> bool:
        """True if ``x`` is a tensor of this framework (tracers and symbolic tensors included)."""

    def is_rng(self, rng: Any) -> bool:
        """True if ``rng`` is a random state this backend can draw from."""

    def rng_help(self) -> str:
        """One line saying how to create a valid random state, for error messages."""

    def namespace(self, x: Tensor) -> Any:
        """The array-API namespace for ``x`` (array-api-compat's, or TF's numpy namespace)."""

    def grad(self, fn: Callable[[Tensor], Tensor], r: Tensor) -> Tensor:
        """Detached first-order gradient of the scalar ``fn(r)`` w.r.t. ``r`` only."""

    def input_grad(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Gradient of the scalar ``fn(x)`` w.r.t. the constant ``x`` (zeros if unused), kept
        differentiable w.r.t. the parameters ``fn`` closes over; never written to them (GP/LP)."""

    def stop_gradient(self, x: Tensor) -> Tensor: ...

    def uniform(self, rng: Rng, shape: Sequence[Any], like: Tensor) -> tuple[Tensor, Rng]:
        """U[0, 1) draws of ``like``'s dtype and device; returns the next random state."""

    def normal(self, rng: Rng, shape: Sequence[Any], like: Tensor) -> tuple[Tensor, Rng]:
        """N(0, 1) draws of ``like``'s dtype and device; returns the next random state."""

    def shape(self, x: Tensor) -> tuple[Any, ...]:
        """Static dims where known (ints); a dynamic scalar tensor where not (TF graphs)."""

    def is_floating(self, x: Tensor) -> bool: ...

    def dtype_name(self, x: Tensor) -> str: ...

    def check_finite(self, x: Tensor, what: str) -> Tensor:
        """Raise ``ValueError`` naming ``what`` if ``x`` holds NaN/Inf where the values are known;
        in a compiled graph, check at run time or pass through. Returns x."""

    def require(self, x: Tensor, condition: Tensor, message: str) -> Tensor:
        """Raise ``ValueError(message)`` if the scalar ``condition`` is false where reading it is
        free (a Python bool, a CPU value), assert at run time in a TF graph, skip it elsewhere
        (accelerators, jit). Returns x (TF: with the assertion as a control dependency)."""

    def frozen_state(self, critic: Any) -> AbstractContextManager[None]:
        """Context in which calling ``critic`` leaves its normalisation statistics unchanged."""


def critic_owners(critic: Any) -> list[Any]:
    """The objects a critic callable may run: itself, the owner of a bound method, a partial's
    func and arguments, and what a plain function closes over."""
    candidates = [critic, getattr(critic, "__self__", None), getattr(critic, "func", None)]
    candidates += list(getattr(critic, "args", ()) or ()) + list((getattr(critic, "keywords", None) or {}).values())
    for cell in getattr(critic, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            candidates.append(cell.cell_contents)
    return [c for c in candidates if c is not None]
