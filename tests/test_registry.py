"""The adapters come from valr's own distribution: a user's unrelated ``backends`` package,
first on sys.path or already imported, must not stand in for them."""

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
        print(b.name, hasattr(b, "input_grad"), mod.__file__, sys.modules["backends"].__file__)
    """
    name, has_input_grad, adapter_file, package_file = _run(code, _shadow(tmp_path)).split()
    assert (name, has_input_grad) == (framework, "True")
    assert pathlib.Path(adapter_file).resolve() == ROOT / "backends" / f"{framework}_backend.py"
    assert pathlib.Path(package_file).resolve() == tmp_path / "backends" / "__init__.py"  # left alone


def test_own_backends_package_is_used_when_it_is_the_importable_one(framework: str) -> None:
    """Without a shadow, ``backends.<fw>_backend`` is the module (one class object for users
    who import the adapter directly)."""
    code = f"""
        import valr_core, backends
        from backends import {framework}_backend
        print(valr_core.get_backend("{framework}") is {framework}_backend.BACKEND)
    """
    assert _run(code, ROOT) == "True"
