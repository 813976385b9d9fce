"""The wheel a user installs (``tox -e packaging``): one namespace, no pinned frameworks, and VALP
working from a directory full of the user's own ``models.py``/``train.py``/``backends.py``/``bench.py``.

Builds the sdist and, from it, the wheel (so both are checked), then installs the wheel into a
fresh venv that already holds torch: the install must leave that torch alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

pytestmark = pytest.mark.packaging

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = pathlib.Path(os.environ.get("VALR_CONSTRAINTS", ROOT / "constraints.txt"))
ALLOWED_TOP_LEVEL = {"valr_core", "valr"}
REPOSITORY_ONLY = {"train", "models", "bench", "backends", "examples", "docs", "tests"}
ADAPTERS = {f"valr_core/backends/{fw}_backend.py" for fw in ("torch", "tf", "jax")}


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


@pytest.fixture(scope="module")
def wheel(dist: pathlib.Path) -> pathlib.Path:
    (found,) = dist.glob("valr-*.whl")
    return found


@pytest.fixture(scope="module")
def venv_with_torch(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A user's environment: a fresh venv whose torch was installed before valr."""
    venv = tmp_path_factory.mktemp("user-env") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(CONSTRAINTS), "torch"])
    return python


def _metadata(wheel: pathlib.Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name).decode()


def test_wheel_installs_only_valr_core(wheel: pathlib.Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top <= ALLOWED_TOP_LEVEL and "valr_core" in top, f"top-level names in the wheel: {sorted(top)}"
    assert not top & REPOSITORY_ONLY
    assert ADAPTERS <= set(names), f"adapters missing from valr_core/backends: {sorted(ADAPTERS - set(names))}"
    assert "valr_core/py.typed" in names


def test_sdist_holds_the_adapters_it_maps(dist: pathlib.Path) -> None:
    import tarfile

    (sdist,) = dist.glob("valr-*.tar.gz")
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {f"backends/{fw}_backend.py" for fw in ("torch", "tf", "jax")} <= members


def test_metadata_pins_nothing(wheel: pathlib.Path) -> None:
    requires = [line.split(":", 1)[1].strip() for line in _metadata(wheel).splitlines() if line.startswith("Requires-Dist:")]
    assert requires, "no Requires-Dist in the wheel's METADATA"
    specs = [r.split(";", 1)[0] for r in requires]  # the version part, without the extra marker
    assert not [r for r in specs if "==" in r or "~=" in r], requires
    assert not [r for r in requires if r.startswith(("tensorflow-cpu", "tensorflow_cpu"))], requires
    base = sorted(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r)
    assert base == ["array-api-compat", "einops", "numpy"], f"base requirements beyond what valr_core imports: {base}"
    extras = {re.search(r'extra == "([^"]+)"', r).group(1) for r in requires if "extra ==" in r}  # type: ignore[union-attr]
    assert {"torch", "tf", "jax"} <= extras
    for r in specs:
        if re.match(r"(torch|tensorflow|jax|flax|optax|keras)\b", r):
            assert ">=" in r, f"framework requirement without a tested lower bound: {r}"


def test_installing_the_wheel_leaves_the_users_torch_alone(venv_with_torch: pathlib.Path, wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = tmp_path / "report.json"
    _run([str(venv_with_torch), "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
          "--report", str(report), f"{wheel}[torch]"])
    would_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "torch" not in would_install, f"pip would replace the installed torch: {sorted(would_install)}"
    assert "valr" in would_install


def test_valp_runs_beside_a_users_own_modules(venv_with_torch: pathlib.Path, wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    _run([str(venv_with_torch), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(CONSTRAINTS), f"{wheel}[torch]"])
    user = tmp_path / "user-project"
    user.mkdir()
    for name in ("models", "train", "backends", "bench"):
        (user / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    code = textwrap.dedent(
        """
        import sys, torch
        from valr_core import VALP
        w = torch.tensor([3.0, -4.0])                      # |w| = 5: a 5-Lipschitz linear critic
        x = torch.randn(16, 2, generator=torch.manual_seed(0))
        valp = VALP(backend="torch", K=1.0, mode="squared", eps_min=0.1, eps_max=1.0)
        loss, aux = valp.loss(lambda v: v @ w, x, torch.Generator().manual_seed(0), valp.init_state(x))
        shadowed = [m for m in ("models", "train", "backends", "bench") if m in sys.modules]
        print(float(loss), float(aux.stats["valp/max_quotient"]), shadowed, sys.modules["valr_core"].__file__)
        """
    )
    out = _run([str(venv_with_torch), "-c", code], cwd=user).stdout.split()
    loss, max_quotient = float(out[0]), float(out[1])
    assert abs(max_quotient - 5.0) < 1e-3, out  # the adversarial direction of a linear critic is exact
    assert loss > 0
    assert out[2] == "[]", f"user modules were imported: {out[2]}"
    assert "site-packages" in out[-1], out[-1]
    _run([str(venv_with_torch), "-m", "pip", "check"])
