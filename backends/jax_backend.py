"""JAX adapter: pure; everything works under jax.jit (input checks run only on concrete values)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class JaxBackend:
    name = "jax"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, jax.Array)  # concrete arrays and tracers

    def is_rng(self, rng: Any) -> bool:
        if not isinstance(rng, jax.Array):
            return False
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            return rng.shape == ()
        return rng.dtype == jnp.uint32 and rng.shape == (2,)

    def rng_help(self) -> str:
        return "jax.random.key(seed) or jax.random.PRNGKey(seed)"

    def namespace(self, x: jax.Array) -> Any:
        return jnp

    def grad(self, fn: Callable[[jax.Array], jax.Array], r: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(jax.grad(fn)(r))

    def input_grad(self, fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
        # Traced inside the caller's loss, so an outer jax.grad differentiates through it.
        return jax.grad(fn)(jax.lax.stop_gradient(x))

    def stop_gradient(self, x: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(x)

    def uniform(self, rng: jax.Array, shape: Sequence[int], like: jax.Array) -> tuple[jax.Array, jax.Array]:
        rng, sub = jax.random.split(rng)
        return jax.random.uniform(sub, tuple(shape), dtype=like.dtype), rng

    def normal(self, rng: jax.Array, shape: Sequence[int], like: jax.Array) -> tuple[jax.Array, jax.Array]:
        rng, sub = jax.random.split(rng)
        return jax.random.normal(sub, tuple(shape), dtype=like.dtype), rng

    def shape(self, x: jax.Array) -> tuple[int, ...]:
        return tuple(x.shape)

    def is_floating(self, x: jax.Array) -> bool:
        return jnp.issubdtype(x.dtype, jnp.floating)

    def dtype_name(self, x: jax.Array) -> str:
        return str(x.dtype)

    def check_finite(self, x: jax.Array, what: str) -> jax.Array:
        if isinstance(x, jax.core.Tracer):
            return x  # under jit the values are unknown; wrap in jax.experimental.checkify if needed
        if any(d.platform != "cpu" for d in x.devices()):
            # No host sync on accelerators: NaN/Inf anywhere make all of x (hence the penalty) NaN.
            return jnp.where(jnp.isfinite(x).all(), x, jnp.nan)
        finite = bool(np.isfinite(np.asarray(x)).all())
        return self.require(x, finite, f"{what} contains NaN or Inf values")

    def require(self, x: Any, condition: Any, message: str) -> Any:
        if isinstance(condition, jax.Array) and (isinstance(condition, jax.core.Tracer)
                                                 or any(d.platform != "cpu" for d in condition.devices())):
            return x  # unknown under jit / a host sync on accelerators: not checked (checkify can)
        if not bool(condition):
            raise ValueError(message)
        return x

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        # Pure functions change state only through what they return (NNX: nnx.pure_critic).
        yield


BACKEND = JaxBackend()
