"""Each backend's VALP against the independent float64 NumPy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference as ref
from tests.harness import harness, load
from valr_core import VALP, VAT, ALState

# float64 must agree to round-off. float32 against float64 (inputs rounded identically):
# about 1e-5 relative for the softplus conv critic; the tanh MLP's quotients lose more,
# since |f(x) - f(x + r)| cancels for small eps and TF's oneDNN tanh is an approximation
# (measured: torch 2e-5, jax 4e-5, tf 1.8e-4), so its quantities get 5e-4.
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}
MLP32 = dict(rtol=5e-4, atol=2e-5)


def tol_for(kind: str, dtype: str) -> dict:
    return MLP32 if (kind == "mlp" and dtype == "float32") else TOL[dtype]
GRAD_L2_TOL = {"float32": 1e-4, "float64": 1e-10}


def grad_tol(kind: str, dtype: str) -> float:
    return 1e-3 if (kind == "mlp" and dtype == "float32") else GRAD_L2_TOL[dtype]
DTYPES = ("float32", "float64")


def l2_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _rounded(fx: dict, dtype: str) -> dict:
    """The fixture as the framework sees it (rounded to dtype), in float64 for the reference."""
    return {k: v.astype(dtype).astype(np.float64) if v.dtype.kind == "f" else v for k, v in fx.items()}


def _reference(kind: str, fx: dict, half: bool = False, dtype: str = "float64", **kw) -> dict:
    fx = _rounded(fx, dtype)
    critic = ref.MLP if kind == "mlp" else ref.CONV
    prefix = "half_" if half else ""
    index = fx[prefix + "index"] if half else None
    return ref.valp(critic, fx, fx["x"], fx[prefix + "d0"], fx[prefix + "eps"], index=index, **kw)


def _run(framework: str, kind: str, dtype: str, valp: VALP, half: bool = False, state=None):
    h = harness(framework)
    fx = load(kind)
    prefix = "half_" if half else ""
    draws = h.draws(fx[prefix + "d0"], fx[prefix + "eps"], fx[prefix + "index"] if half else None, dtype)
    if state is not None:
        state = ALState(h.tensor(np.asarray(state), dtype))
    loss, aux, grads = h.loss_and_grads(valp, kind, fx, fx["x"], draws, dtype, state)
    return h, fx, loss, aux, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_squared_penalty_matches_reference(framework: str, kind: str, dtype: str) -> None:
    valp = VALP(backend=framework)
    h, fx, loss, aux, grads = _run(framework, kind, dtype, valp)
    want = _reference(kind, fx, dtype=dtype)
    assert want["violations"].max() > 0, "fixture must violate the constraint to test anything"
    tol = tol_for(kind, dtype)
    np.testing.assert_allclose(loss, want["penalty"], **tol)
    # violations = quotient - K cancel: compare them at the quotients' absolute scale.
    np.testing.assert_allclose(h.numpy(aux.violations.violations), want["violations"], rtol=0, atol=tol["rtol"] * want["quotients"].max())
    np.testing.assert_allclose(h.numpy(aux.violations.quotients), want["quotients"], **tol)
    np.testing.assert_allclose(h.output(aux.violations.r_adv), want["r_adv"], **tol)
    for name, g in want["grads"].items():
        assert l2_rel(grads[name], g) < grad_tol(kind, dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_half_batch_uses_given_rows(framework: str, dtype: str) -> None:
    valp = VALP(backend=framework, fraction=0.5)
    h, fx, loss, aux, grads = _run(framework, "mlp", dtype, valp, half=True)
    want = _reference("mlp", fx, half=True, dtype=dtype)
    tol = tol_for("mlp", dtype)
    np.testing.assert_allclose(loss, want["penalty"], **tol)
    np.testing.assert_allclose(h.numpy(aux.violations.violations), want["violations"], rtol=0, atol=tol["rtol"] * want["quotients"].max())
    for name, g in want["grads"].items():
        assert l2_rel(grads[name], g) < grad_tol("mlp", dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_augmented_lagrangian_term_and_update(framework: str, dtype: str) -> None:
    mu = 0.7
    valp = VALP(backend=framework, mode="al", rho=0.05)
    h, fx, loss, aux, grads = _run(framework, "conv", dtype, valp, state=mu)
    want = _reference("conv", fx, dtype=dtype, mode="al", rho=0.05, mu=mu)
    np.testing.assert_allclose(loss, want["penalty"], **TOL[dtype])
    for name, g in want["grads"].items():
        assert l2_rel(grads[name], g) < GRAD_L2_TOL[dtype], name
    new = valp.update(ALState(h.tensor(np.asarray(mu), dtype)), aux.constraint)
    np.testing.assert_allclose(h.numpy(new.mu), mu + 0.05 * want["constraint"], **TOL[dtype])
    # The multiplier never goes negative.
    floor = valp.update(ALState(h.tensor(np.asarray(0.0), dtype)), h.tensor(np.asarray(-3.0), dtype))
    assert float(h.numpy(floor.mu)) == 0.0


@pytest.mark.parametrize("n_power", [0, 2, 3])
def test_power_iterations_match_reference(framework: str, n_power: int) -> None:
    valp = VALP(backend=framework, n_power=n_power)
    h, fx, loss, aux, _ = _run(framework, "conv", "float64", valp)
    want = _reference("conv", fx, n_power=n_power)
    np.testing.assert_allclose(h.output(aux.violations.r_adv), want["r_adv"], **TOL["float64"])
    np.testing.assert_allclose(loss, want["penalty"], **TOL["float64"])


def test_clipping_measures_the_clipped_pair(framework: str) -> None:
    valp = VALP(backend=framework, clip=(-1.0, 1.0))
    h, fx, loss, aux, _ = _run(framework, "conv", "float64", valp)
    want = _reference("conv", fx, clip=(-1.0, 1.0))
    r = h.output(aux.violations.r_adv)
    assert np.all(np.abs(fx["x"] + r) <= 1.0 + 1e-12)
    np.testing.assert_allclose(r, want["r_adv"], **TOL["float64"])
    np.testing.assert_allclose(h.numpy(aux.violations.quotients), want["quotients"], **TOL["float64"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_vat_matches_float64_lds(framework: str, dtype: str) -> None:
    h = harness(framework)
    fx = load("mlp")
    params = dict(fx, w2=fx["w2_cls"], b2=fx["b2_cls"])
    vat = VAT(eps=2.0, xi=0.5, backend=framework)
    draws = h.draws(fx["d0"], np.full(len(fx["x"]), 2.0), None, dtype)
    loss, aux, _ = h.loss_and_grads(vat, "mlp", params, fx["x"], draws, dtype)
    params = _rounded(params, dtype)
    want = ref.vat(ref.MLP, params, params["x"], params["d0"], eps=2.0, xi=0.5)
    tol = tol_for("mlp", dtype)
    np.testing.assert_allclose(loss, want["lds"], **tol)
    np.testing.assert_allclose(h.numpy(aux.violations.violations), want["kl"], **tol)
    np.testing.assert_allclose(h.output(aux.violations.r_adv), want["r_adv"], **tol)
