"""Weight files and conversion between frameworks (imported on demand) via ``models.spec``."""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .spec import check_params

FRAMEWORKS = ("torch", "tf", "jax")
_MODULES = {"torch": "models.torch_resnet", "tf": "models.tf_resnet", "jax": "models.jax_resnet"}


def backend(framework: str) -> Any:
    """The models module of ``framework`` ("torch", "tf" or "jax"), imported on demand."""
    if framework not in _MODULES:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    return importlib.import_module(_MODULES[framework])


def save_npz(path: str | os.PathLike[str], params: Mapping[str, np.ndarray]) -> None:
    """Write ``params`` to ``path`` atomically: a reader sees the old file or the whole new one."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in params.items()}
    if any(a.dtype == object for a in arrays.values()):
        raise ValueError("save_npz: object arrays cannot be stored without pickle")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # a file object: numpy must not append ".npz" to the temp name
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_npz(path: str | os.PathLike[str],
             table: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Read a canonical dict; with ``table`` also check keys and shapes (ValueError)."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        params = {k: f[k] for k in f.files}
    if table is not None:
        check_params(params, table, os.fspath(path))
    return params


def to_canonical(framework: str, obj: Any) -> dict[str, np.ndarray]:
    """torch: nn.Module; tf: keras.Model; jax: the variables dict."""
    return backend(framework).to_canonical(obj)


def from_canonical(framework: str, target: Any, params: Mapping[str, np.ndarray]) -> Any:
    """torch/tf: load into ``target`` in place and return it; jax: new variables for ``target``."""
    return backend(framework).from_canonical(target, params)


def convert(src_framework: str, src: Any, dst_framework: str, dst: Any) -> Any:
    """Copy weights of ``src`` into ``dst`` (see ``from_canonical`` for what is returned)."""
    return from_canonical(dst_framework, dst, to_canonical(src_framework, src))
