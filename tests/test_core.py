"""valr_core without any framework: config validation, discovery errors, and the reference's
own correctness (finite differences), so the yardstick every backend is held to is checked."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import valr_core
from tests import reference as ref
from tests.harness import MLP_KEYS, load
from valr_core import (
    GP,
    LP,
    VALP,
    VAT,
    GradientPenaltyConfig,
    PenaltyConfig,
    ValpConfig,
    get_backend,
    registry,
)


def test_eps_scale_defaults_to_the_paper_absolute_radii() -> None:
    assert VALP().eps_scale is None and not VALP().auto_scaled and not VALP(eps_scale="none").auto_scaled
    assert VALP(eps_scale="auto").auto_scaled
    assert VALP(eps_scale="auto") != VALP() and hash(VALP(eps_scale="auto")) == hash(VALP(eps_scale="auto"))


def test_import_loads_no_framework() -> None:
    code = "import sys, valr_core, backends; print(sorted(m for m in ('torch','tensorflow','jax','keras','flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(eps_min=5.0, eps_max=1.0), "eps_min must be <= eps_max"),
        (dict(eps_min=0.0), "eps_min must be > 0"),
        (dict(xi=0.0), "xi must be > 0"),
        (dict(xi=-1.0), "xi must be > 0"),
        (dict(K=-0.1), "K must be >= 0"),
        (dict(fraction=0.0), r"fraction must be in \(0, 1\]"),
        (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
        (dict(n_power=-1), "n_power must be an integer >= 0"),
        (dict(n_power=1.5), "n_power must be an integer >= 0"),
        (dict(d_X="cosine"), "d_X must be one of"),
        (dict(d_Y="hinge"), "d_Y must be one of"),
        (dict(reduction="median"), "reduction must be"),
        (dict(mode="lagrange"), "mode must be"),
        (dict(start="sobol"), "start must be"),
        (dict(clip=(1.0, -1.0)), "clip must satisfy low < high"),
        (dict(lam=float("nan")), "lam must be a finite number"),
        (dict(backend="mxnet"), "backend must be None or one of"),
        (dict(eps_scale="median"), "eps_scale must be None, 'none' or 'auto', got 'median'"),
        (dict(eps_scale=2.0), "eps_scale must be None, 'none' or 'auto', got 2.0"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VALP(**kwargs)


@pytest.mark.parametrize("cls", [GradientPenaltyConfig, GP, LP])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(reduction="median"), "reduction must be 'mean', 'sum' or 'max', got 'median'"),
        (dict(mode="lagrange"), "mode must be 'squared', 'linear' or 'al', got 'lagrange'"),
        (dict(lam=-1.0), "lam must be >= 0, got -1.0"),
        (dict(lam=float("inf")), "lam must be a finite number, got inf"),
        (dict(lam="10"), "lam must be a finite number, got '10'"),
        (dict(rho=-0.01), "rho must be >= 0, got -0.01"),
        (dict(rho=float("nan")), "rho must be a finite number, got nan"),
        (dict(rho=True), "rho must be a finite number, got True"),
        (dict(check_finite="yes"), "check_finite must be True or False, got 'yes'"),
    ],
)
def test_bad_gradient_penalty_configuration_names_the_argument(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_penalty_fields_are_validated_in_one_place() -> None:
    """VALP, GP and LP share PenaltyConfig's fields, defaults and checks."""
    for cls in (ValpConfig, GradientPenaltyConfig, GP, LP, VALP):
        assert issubclass(cls, PenaltyConfig)
    assert GradientPenaltyConfig.__post_init__ is PenaltyConfig.__post_init__
    gp = GP()
    assert (gp.lam, gp.rho, gp.reduction, gp.mode, gp.check_finite, gp.backend) == (10.0, 0.01, "mean", "squared", True, None)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        LP(backend="mxnet")
    with pytest.raises(ValueError, match="rho must be >= 0"):
        VALP(rho=-1.0)
    with pytest.raises(AttributeError):
        gp.lam = 1.0  # frozen
    assert GP(lam=5.0) == GP(lam=5.0) and GP() != LP()


def test_gp_state_without_framework() -> None:
    gp = GP(mode="al", rho=0.5)
    state = gp.init_state()
    assert state.mu == 0.0 and isinstance(state.mu, float)
    assert gp.update(state, 2.0).mu == 1.0
    assert gp.update(gp.update(state, 2.0), -10.0).mu == 0.0


def test_version_and_typing_marker() -> None:
    assert isinstance(valr_core.__version__, str) and valr_core.__version__
    assert (pathlib.Path(valr_core.__file__).parent / "py.typed").is_file()


def test_missing_adapter_says_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """valr_core imported from a checkout that was never installed has no valr_core.backends."""
    real = registry.importlib.import_module

    def without_adapters(name: str, *args: object) -> object:
        if name.startswith("valr_core.backends"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="valr_core.backends")
        return real(name, *args)

    monkeypatch.setattr(registry.importlib, "import_module", without_adapters)
    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name, *a: object())  # the framework "is installed"
    with pytest.raises(ImportError, match=r"adapter valr_core.backends.torch_backend is missing.*pip install -e \.'.*reinstall valr"):
        get_backend("torch")


def test_defaults_are_the_papers() -> None:
    v = ValpConfig()
    assert (v.K, v.xi, v.eps_min, v.eps_max, v.n_power, v.d_X, v.d_Y) == (1.0, 10.0, 0.1, 10.0, 1, "l2", "abs")
    vat = VAT(eps=3.0)
    assert (vat.K, vat.eps_min, vat.eps_max, vat.d_X, vat.d_Y, vat.mode) == (0.0, 3.0, 3.0, "one", "kl", "linear")


def test_unknown_backend_and_missing_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown backend 'mxnet'"):
        get_backend("mxnet")
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda n, *a: None if n == "jax" else real(n, *a))
    monkeypatch.setattr(registry, "_LOADED", {})
    with pytest.raises(ImportError, match=r"needs the 'jax' package.*pip install 'valr\[jax\]'"):
        get_backend("jax")


def test_numpy_input_is_rejected_with_advice() -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor, tf.Tensor or jax.Array, got numpy.ndarray"):
        VALP().loss(lambda z: z.sum(1), np.ones((3, 2)), np.random.default_rng(0))


# ----------------------------------------------------------------------------- the reference
def _finite_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_reference_backward_passes_match_finite_differences(kind: str) -> None:
    critic = ref.MLP if kind == "mlp" else ref.CONV
    p = load(kind)
    x = p["x"][:2]
    gy = np.array([[0.7], [-1.3]])
    _, cache = critic.forward(p, x)
    gx = critic.input_vjp(p, cache, gy)
    np.testing.assert_allclose(gx, _finite_difference(lambda z: float((critic.forward(p, z)[0] * gy).sum()), x), rtol=1e-6, atol=1e-8)
    grads = critic.param_vjp(p, cache, gy)
    for name, g in grads.items():
        fd = _finite_difference(lambda w, name=name: float((critic.forward({**p, name: w}, x)[0] * gy).sum()), p[name])
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7, err_msg=name)


def test_reference_penalty_gradient_matches_finite_differences() -> None:
    p = load("conv")

    full = ref.valp(ref.CONV, p, p["x"], p["d0"], p["eps"])
    # r_adv is a constant (stop-gradient): differentiate with the adversarial direction held
    # fixed, i.e. n_power=0 started from the direction the full run found.
    def penalty(w: np.ndarray) -> float:
        return ref.valp(ref.CONV, {**p, "w": w}, p["x"], full["direction"], p["eps"], n_power=0)["penalty"]

    np.testing.assert_allclose(full["grads"]["w"], _finite_difference(penalty, p["w"]), rtol=1e-6)


def test_reference_linear_closed_form() -> None:
    w = np.array([[3.0], [-4.0]])
    lin = ref.Critic(lambda p, x: (x @ p["w"], {"x": x}), lambda p, c, gy: gy @ p["w"].T, lambda p, c, gy: {"w": c["x"].T @ gy})
    x = np.random.default_rng(0).normal(size=(5, 2))
    out = ref.valp(lin, {"w": w}, x, np.random.default_rng(1).normal(size=(5, 2)), np.full(5, 0.3))
    np.testing.assert_allclose(out["quotients"], 5.0, rtol=1e-12)
    np.testing.assert_allclose(np.abs(out["direction"] @ w[:, 0] / 5.0), 1.0, rtol=1e-12)


def test_reference_gp_gradient_matches_finite_differences() -> None:
    """The MLP's hand-written second-order backward pass (what GP/LP backends are held to)."""
    p = load("mlp")
    p["w2"] = p["w2"] * 0.15  # norms straddle 1
    real = p["x"]
    fake = np.roll(real, 1, axis=0) + p["d0"]
    alphas = np.random.default_rng(7).uniform(size=len(real))
    for one_sided in (False, True):
        for mode, reduction in (("squared", "mean"), ("linear", "sum"), ("al", "max")):
            def penalty(q: dict, one_sided=one_sided, mode=mode, reduction=reduction) -> float:
                return ref.gradient_penalty(ref.MLP, q, real, fake, alphas, one_sided=one_sided, mode=mode, reduction=reduction, mu=0.7, rho=0.05)["penalty"]

            want = ref.central_differences(penalty, p, MLP_KEYS)
            got = ref.gradient_penalty(ref.MLP, p, real, fake, alphas, one_sided=one_sided, mode=mode, reduction=reduction, mu=0.7, rho=0.05)["grads"]
            scale = max(np.abs(g).max() for g in want.values())
            for name in MLP_KEYS:
                np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-8 * scale, err_msg=f"{name} {one_sided} {mode}")
