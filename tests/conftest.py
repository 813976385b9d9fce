"""Test selection by framework.

VALR_BACKENDS (comma list, e.g. "torch", or "none") names the frameworks this run must test; tox sets it
per env. A listed framework that fails to import is a collection error, never a skip. Tests
marked ``@pytest.mark.framework("tf", ...)`` whose frameworks are not all listed are
*deselected* (they belong to another env). Without VALR_BACKENDS every installed framework
is tested.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import tempfile

import pytest

ALL_FRAMEWORKS = ("torch", "tf", "jax")
_IMPORT_NAME = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}

# Keep framework side effects inside the test session: Keras writes ~/.keras on import and
# TF prints oneDNN notices; JAX float64 must be enabled before any array exists.
os.environ.setdefault("KERAS_HOME", str(pathlib.Path(tempfile.gettempdir()) / "valr-keras-home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def selected_frameworks() -> tuple[str, ...]:
    raw = os.environ.get("VALR_BACKENDS", "").strip()
    if not raw:
        return tuple(f for f in ALL_FRAMEWORKS if importlib.util.find_spec(_IMPORT_NAME[f]))
    if raw == "none":
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_FRAMEWORKS]
    if unknown:
        raise pytest.UsageError(f"VALR_BACKENDS names unknown frameworks {unknown}; expected {ALL_FRAMEWORKS}")
    for name in names:
        # A framework this env must test has to import: a failure here fails the run.
        importlib.import_module(_IMPORT_NAME[name])
    return names


SELECTED = selected_frameworks()


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    """Files named test_*_<framework>.py belong to that framework's env: not collected elsewhere."""
    stem = collection_path.stem
    for name in ALL_FRAMEWORKS:
        if stem.startswith("test_") and stem.endswith(f"_{name}") and name not in SELECTED:
            return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "framework" in metafunc.fixturenames and SELECTED:
        metafunc.parametrize("framework", SELECTED)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        needed: set[str] = set()
        for mark in item.iter_markers("framework"):
            needed.update(mark.args)
        if needed >= set(ALL_FRAMEWORKS):
            item.add_marker(pytest.mark.parity)  # needs all three: the parity env runs it
        if item.get_closest_marker("parity"):
            needed.update(ALL_FRAMEWORKS)
        if "framework" in getattr(item, "fixturenames", ()) and not SELECTED:
            needed.add("any")  # per-framework test in an env without frameworks
        (keep if needed <= set(SELECTED) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def one_torch_thread(framework: str) -> object:
    """Tiny torch models run fastest on one thread: on a busy 2-core machine OpenMP threads
    spinning against other processes make them ~10x slower. A no-op for other frameworks."""
    if framework != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
