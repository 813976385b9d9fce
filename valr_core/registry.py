"""Lazy, cached backend discovery: frameworks are imported only when a backend is used.

Modelled on einops' ``_backends.py``: a backend is found by name, or by asking the backends
of frameworks that are *already imported* whether they own a given tensor.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .interface import Backend

# The adapters ship beside valr_core in this distribution; they are loaded from here only, so
# an unrelated top-level ``backends`` package of the user's cannot stand in for them.
_ADAPTERS = Path(__file__).resolve().parent.parent / "backends"

# registry name -> (adapter module, framework import name, pip extra)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("backends.torch_backend", "torch", "torch"),
    "tf": ("backends.tf_backend", "tensorflow", "tf"),
    "jax": ("backends.jax_backend", "jax", "jax"),
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
    path = _ADAPTERS / f"{module_name.rsplit('.', 1)[1]}.py"
    if not path.is_file():
        raise ImportError(
            f"valr's adapter for backend {name!r} is missing (expected {path}); the installation "
            "is incomplete: reinstall valr (pip install --force-reinstall valr)"
        )
    if importlib.util.find_spec(framework) is None:
        raise ImportError(
            f"backend {name!r} needs the '{framework}' package, which is not installed; "
            f"install it with: pip install 'valr[{extra}]'"
        )
    backend = _load_adapter(module_name, path).BACKEND
    _LOADED[name] = backend
    return backend


def _is_ours(package: Any) -> bool:
    locations = getattr(package, "__path__", None) or getattr(package, "submodule_search_locations", None) or ()
    return any(Path(p).resolve() == _ADAPTERS for p in locations)


def _load_adapter(module_name: str, path: Path) -> ModuleType:
    """``backends.<fw>_backend`` when the importable ``backends`` is this distribution's;
    otherwise the same file under a private module name."""
    package = sys.modules.get("backends")
    if package is None:
        try:
            package = importlib.util.find_spec("backends")
        except (ImportError, ValueError):
            package = None
    if package is not None and _is_ours(package):
        return importlib.import_module(module_name)
    private = f"_valr_{module_name.replace('.', '_')}"
    if private in sys.modules:
        return sys.modules[private]
    spec = importlib.util.spec_from_file_location(private, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load valr's backend adapter from {path}; reinstall valr")
    module = importlib.util.module_from_spec(spec)
    sys.modules[private] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[private]
        raise
    return module


def _loaded_backends() -> list[Backend]:
    return [get_backend(key) for key, (_, fw, _) in _BACKENDS.items() if fw in sys.modules]


def backend_for(x: Any) -> Backend:
    """The backend owning tensor ``x``; only frameworks already imported are asked."""
    for backend in _loaded_backends():
        if backend.is_tensor(x):
            return backend
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    raise TypeError(
        f"x must be a torch.Tensor, tf.Tensor or jax.Array, got {kind}; "
        "convert it to your framework's tensor type or pass backend='torch'|'tf'|'jax'"
    )


def resolve_backend(name: str | None, x: Any) -> Backend:
    """``get_backend(name)`` checked against ``x``, or ``backend_for(x)`` when name is None."""
    if name is None:
        return backend_for(x)
    backend = get_backend(name)
    if not backend.is_tensor(x):
        kind = f"{type(x).__module__}.{type(x).__qualname__}"
        raise TypeError(f"x is a {kind}, but backend={name!r} expects that framework's tensors; mixed-framework inputs are not supported")
    return backend
