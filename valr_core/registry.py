"""Lazy, cached backend discovery (after einops' ``_backends.py``): a backend is found by name,
or by asking the backends of frameworks *already imported* whether they own a given tensor."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from .interface import Backend

# registry name -> (adapter module, framework import name, pip extra). The adapters install as
# ``valr_core.backends`` (pyproject.toml), so a user's own ``backends`` package cannot shadow them.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("valr_core.backends.torch_backend", "torch", "torch"),
    "tf": ("valr_core.backends.tf_backend", "tensorflow", "tf"),
    "jax": ("valr_core.backends.jax_backend", "jax", "jax"),
}
_ALIASES = {"torch": "torch", "pytorch": "torch", "tf": "tf", "tensorflow": "tf", "jax": "jax"}


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


_LOADED: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The adapter for ``name`` ("torch", "tf"/"tensorflow", "jax"), imported on first use."""
    # A plain dict lookup first: cheap on the hot path and traceable by torch.compile.
    cached = _LOADED.get(name)
    if cached is not None:
        return cached
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string such as 'torch', 'tf' or 'jax', got {type(name).__name__}")
    key = _ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"unknown backend {name!r}; expected one of {sorted(_ALIASES)}")
    module_name, framework, extra = _BACKENDS[key]
    if importlib.util.find_spec(framework) is None:
        raise ImportError(f"backend {name!r} needs the '{framework}' package, which is not "
                          f"installed; install it with: pip install 'valr[{extra}]'")
    try:
        backend = importlib.import_module(module_name).BACKEND
    except ModuleNotFoundError as err:
        if err.name not in (module_name, "valr_core.backends"):
            raise
        raise ImportError(
            f"valr's adapter {module_name} is missing: valr_core was imported from a source "
            "checkout that is not installed, or from an incomplete installation; run "
            "'pip install -e .' in the checkout, or reinstall valr"
        ) from None
    _LOADED[name] = backend
    return backend


def _kind(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}"


def backend_for(x: Any) -> Backend:
    """The backend owning tensor ``x``; only frameworks already imported are asked."""
    for backend in [get_backend(key) for key, (_, fw, _) in _BACKENDS.items() if fw in sys.modules]:
        if backend.is_tensor(x):
            return backend
    raise TypeError(f"x must be a torch.Tensor, tf.Tensor or jax.Array, got {_kind(x)}; convert it "
                    "to your framework's tensor type or pass backend='torch'|'tf'|'jax'")


def resolve_backend(name: str | None, x: Any) -> Backend:
    """``get_backend(name)`` checked against ``x``, or ``backend_for(x)`` when name is None."""
    if name is None:
        return backend_for(x)
    backend = get_backend(name)
    if not backend.is_tensor(x):
        raise TypeError(f"x is a {_kind(x)}, but backend={name!r} expects that framework's tensors; mixed-framework inputs are not supported")
    return backend
