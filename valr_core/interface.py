"""The abstract autodiff interface VALP is written against.

A backend adapter (see the top-level ``backends`` package) supplies exactly these operations
for one framework. Everything else VALP needs is array math, done through the framework's
array-API namespace (``Backend.namespace``) and einops, on native tensors: no wrapper types.
"""

from __future__ import annotations

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
        """Gradient of the scalar ``fn(r)`` w.r.t. ``r`` only, first order, returned detached.

        Must not accumulate into parameter gradients (no ``.backward()``)."""

    def input_grad(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Gradient of the scalar ``fn(x)`` w.r.t. ``x`` that stays differentiable w.r.t. the
        parameters ``fn`` closes over (double backward; GP/LP). ``x`` is taken as a constant;
        an ``x`` that ``fn`` does not use gets zeros. Parameter gradients are never written."""

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
        """Raise ``ValueError`` naming ``what`` if ``x`` holds NaN/Inf where the values are
        known (eager); inside a compiled graph, check at run time or pass through. Returns x."""

    def require(self, x: Tensor, condition: Tensor, message: str) -> Tensor:
        """Raise ``ValueError(message)`` if the scalar ``condition`` is false where reading it is
        free (a Python bool, a CPU value); inside a TF graph, assert at run time; skip it where
        reading it would cost a host sync (accelerators) or is impossible (jit). Returns x (TF:
        with the assertion as a control dependency)."""

    def frozen_state(self, critic: Any) -> AbstractContextManager[None]:
        """Context in which calling ``critic`` leaves its normalisation statistics unchanged."""


def critic_owners(critic: Any) -> list[Any]:
    """The objects a critic callable may run: itself, the owner of a bound method, a partial's
    func and arguments, and what a plain function closes over. Adapters keep those of their
    framework's module type (to freeze normalisation statistics during VALP's passes)."""
    candidates = [critic, getattr(critic, "__self__", None), getattr(critic, "func", None)]
    candidates += list(getattr(critic, "args", ()) or ()) + list((getattr(critic, "keywords", None) or {}).values())
    for cell in getattr(critic, "__closure__", None) or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    return [c for c in candidates if c is not None]
