"""The adapters are ``valr_core.backends`` (the repository's top-level ``backends/``, mapped into
the package): a user's unrelated ``backends`` package, first on sys.path or already imported,
must not stand in for them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(code: str, cwd: pathlib.Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _shadow(tmp_path: pathlib.Path) -> pathlib.Path:
    pkg = tmp_path / "backends"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("USER_PACKAGE = True\n")
    for fw in ("torch", "tf", "jax"):
        (pkg / f"{fw}_backend.py").write_text("raise ImportError('the user package was imported')\n")
    return tmp_path


def test_user_backends_package_on_sys_path_does_not_replace_the_adapters(framework: str, tmp_path: pathlib.Path) -> None:
    code = f"""
        import sys
        import backends
        assert backends.USER_PACKAGE
        import valr_core
        b = valr_core.get_backend("{framework}")
        mod = sys.modules[type(b).__module__]
        print(b.name, hasattr(b, "input_grad"), mod.__name__, mod.__file__, sys.modules["backends"].__file__)
    """
    name, has_input_grad, module, adapter_file, package_file = _run(code, _shadow(tmp_path)).split()
    assert (name, has_input_grad, module) == (framework, "True", f"valr_core.backends.{framework}_backend")
    assert pathlib.Path(adapter_file).resolve() == ROOT / "backends" / f"{framework}_backend.py"
    assert pathlib.Path(package_file).resolve() == tmp_path / "backends" / "__init__.py"  # left alone


def test_adapter_module_is_valr_core_backends(framework: str, tmp_path: pathlib.Path) -> None:
    """``valr_core.backends.<fw>_backend`` is the module (one class object for users who import
    the adapter directly); no top-level ``backends`` is imported on the way."""
    code = f"""
        import sys, valr_core
        from valr_core.backends import {framework}_backend
        print(valr_core.get_backend("{framework}") is {framework}_backend.BACKEND and "backends" not in sys.modules)
    """
    assert _run(code, tmp_path) == "True"
