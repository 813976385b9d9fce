"""Closed-form cases, random draws, framework idioms and bad input, per backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.harness import harness
from valr_core import VALP, ALState, Draws, StatefulVALP


def _linear(h, w: np.ndarray, dtype: str = "float64"):
    wt = h.tensor(w, dtype)
    if h.framework == "tf":
        import tensorflow as tf

        return lambda x: tf.linalg.matvec(x, wt)
    return lambda x: x @ wt


@pytest.fixture
def problem():
    rs = np.random.default_rng(3)
    return rs.normal(size=(16, 7)), rs.normal(size=7)


@pytest.mark.parametrize("eps", [(0.1, 0.1), (3.0, 3.0), (0.1, 10.0)])
def test_linear_critic_quotient_is_norm_of_w(framework: str, problem, eps) -> None:
    x, w = problem
    h = harness(framework)
    valp = VALP(K=0.5, eps_min=eps[0], eps_max=eps[1])
    (res, _) = valp.violations(_linear(h, w), h.tensor(x, "float64"), h.rng(0))
    norm = np.linalg.norm(w)
    np.testing.assert_allclose(h.numpy(res.quotients), norm, rtol=1e-12)
    np.testing.assert_allclose(h.numpy(res.violations), norm - 0.5, rtol=1e-12)
    r = h.numpy(res.r_adv)
    radii = np.linalg.norm(r, axis=1)
    np.testing.assert_allclose(radii, h.numpy(res.eps), rtol=1e-12)
    assert np.all((radii >= eps[0] - 1e-12) & (radii <= eps[1] + 1e-12))
    # One power iteration on a linear critic lands exactly on +-w/|w|, per sample.
    cos = (r / radii[:, None]) @ (w / norm)
    np.testing.assert_allclose(np.abs(cos), 1.0, rtol=1e-12)


def test_scaling_the_critic_scales_quotients(framework: str, problem) -> None:
    x, w = problem
    h = harness(framework)
    valp = VALP(K=1.0, backend=framework)
    xt, rs = h.tensor(x, "float64"), np.random.default_rng(1)
    draws = Draws(h.tensor(rs.normal(size=x.shape), "float64"), h.tensor(rs.uniform(0.1, 10, size=len(x)), "float64"), None)
    tanh_w = h.tensor(w, "float64")
    xp = _namespace(h, xt)

    def critic(scale):
        return lambda z: scale * xp.tanh(xp.sum(z * tanh_w, axis=1))

    q1 = h.numpy(valp.violations(critic(1.0), xt, draws=draws)[0].quotients)
    q3 = h.numpy(valp.violations(critic(3.0), xt, draws=draws)[0].quotients)
    np.testing.assert_allclose(q3, 3 * q1, rtol=1e-10)
    L3 = h.numpy(valp.violations(critic(3.0), xt, draws=draws)[0].violations)
    np.testing.assert_allclose(L3, np.maximum(3 * q1 - 1.0, 0), rtol=1e-10, atol=1e-14)


def _namespace(h, t):
    from valr_core import get_backend

    return get_backend(h.framework).namespace(t)


def test_k_above_the_true_constant_gives_zero_penalty(framework: str, problem) -> None:
    x, w = problem
    h = harness(framework)
    valp = VALP(K=1.01 * np.linalg.norm(w))
    loss, aux = valp.loss(_linear(h, w), h.tensor(x, "float64"), h.rng(0))
    assert float(h.numpy(loss)) == 0.0
    assert float(h.numpy(aux.stats["valp/max_violation"])) == 0.0
    assert float(h.numpy(aux.stats["valp/violating_fraction"])) == 0.0


def test_draws_are_per_sample_and_seeded(framework: str) -> None:
    h = harness(framework)
    x = h.tensor(np.zeros((64, 3, 4)), "float32")
    valp = VALP(eps_min=0.5, eps_max=2.0, fraction=0.25)
    draws, _ = valp.draws(x, h.rng(7))
    eps, index, d0 = h.numpy(draws.eps), h.numpy(draws.index), h.numpy(draws.direction)
    assert eps.shape == (16,) and d0.shape == (16, 3, 4) and d0.dtype == np.float32
    assert np.all((eps >= 0.5) & (eps <= 2.0)) and eps.std() > 0.1
    assert len(set(index.tolist())) == 16 and index.min() >= 0 and index.max() < 64
    assert np.all(np.abs(d0) <= 0.5)
    again, _ = valp.draws(x, h.rng(7))
    np.testing.assert_array_equal(h.numpy(again.eps), eps)
    gauss, _ = VALP(start="gaussian").draws(x, h.rng(7))
    assert np.abs(h.numpy(gauss.direction)).max() > 0.5  # not the uniform start


def test_normalisation_is_per_sample_not_per_batch(framework: str, problem) -> None:
    """Scaling one sample's start direction must not change any other sample's result."""
    x, w = problem
    h = harness(framework)
    valp = VALP(n_power=0)
    rs = np.random.default_rng(2)
    d0, eps = rs.normal(size=x.shape), rs.uniform(0.1, 10, size=len(x))
    big = d0.copy()
    big[0] *= 1e4
    xt = h.tensor(x, "float64")
    a = h.numpy(valp.violations(_linear(h, w), xt, draws=Draws(h.tensor(d0, "float64"), h.tensor(eps, "float64"), None))[0].r_adv)
    b = h.numpy(valp.violations(_linear(h, w), xt, draws=Draws(h.tensor(big, "float64"), h.tensor(eps, "float64"), None))[0].r_adv)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), eps, rtol=1e-12)


def test_flat_critic_falls_back_to_random_direction(framework: str) -> None:
    """Zero gradient (a constant critic) keeps the random start; nothing becomes NaN."""
    h = harness(framework)
    x = h.tensor(np.ones((4, 5)), "float32")
    xp = _namespace(h, x)
    d0 = np.random.default_rng(0).normal(size=(4, 5))
    draws = Draws(h.tensor(d0, "float32"), h.tensor(np.full(4, 2.0), "float32"), None)
    loss, aux = VALP().loss(lambda z: xp.sum(z * 0.0, axis=1), x, draws=draws)
    r = h.numpy(aux.violations.r_adv)
    np.testing.assert_allclose(r, 2.0 * d0 / np.linalg.norm(d0, axis=1, keepdims=True), rtol=1e-5)
    assert float(h.numpy(loss)) == 0.0


def test_al_positive_violation_increases_loss(framework: str, problem) -> None:
    x, w = problem
    h = harness(framework)
    valp = VALP(mode="al", rho=0.1, K=0.5)
    xt = h.tensor(x, "float64")
    loss0, aux = valp.loss(_linear(h, w), xt, h.rng(0), valp.init_state(xt))
    state = valp.update(valp.init_state(xt), aux.constraint)
    assert float(h.numpy(state.mu)) == pytest.approx(0.1 * (np.linalg.norm(w) - 0.5), rel=1e-12)
    loss1, _ = valp.loss(_linear(h, w), xt, h.rng(0), state)
    assert float(h.numpy(loss1)) > float(h.numpy(loss0)) > 0


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(framework: str, problem) -> None:
    x, w = problem
    h = harness(framework)
    critic, rng = _linear(h, w), h.rng(0)
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        VALP().loss(critic, h.tensor(bad, "float64"), rng)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        VALP().loss(critic, h.tensor(bad, "float64"), rng)
    with pytest.raises(ValueError, match="empty batch"):
        VALP().loss(critic, h.tensor(np.zeros((0, 7)), "float64"), rng)
    with pytest.raises(TypeError, match="floating-point"):
        VALP().loss(critic, h.tensor(np.zeros((4, 7)), "int64"), rng)
    with pytest.raises(TypeError, match="rng must be a random state"):
        VALP().loss(critic, h.tensor(x, "float64"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="pass rng"):
        VALP().loss(critic, h.tensor(x, "float64"))
    other = "jax" if framework != "jax" else "torch"
    # Another framework's backend: a mixed-framework error where it is installed (parity
    # env), else the error that says what to install.
    installed = importlib.util.find_spec(other) is not None
    with pytest.raises(TypeError if installed else ImportError, match="mixed-framework" if installed else "pip install"):
        VALP(backend=other).loss(critic, h.tensor(x, "float64"), rng)
    with pytest.raises(ValueError, match="one output per sample"):
        VALP().loss(lambda z: critic(z)[:3], h.tensor(x, "float64"), rng)
    with pytest.raises(ValueError, match="mode='al' needs state"):
        VALP(mode="al").loss(critic, h.tensor(x, "float64"), rng)


# --------------------------------------------------------------------------- idioms
def test_stateful_wrapper_tracks_rng_and_multiplier(framework: str, problem) -> None:
    x, w = problem
    h = harness(framework)
    holder = StatefulVALP(VALP(mode="al", rho=0.1, K=0.5), h.rng(0))
    xt = h.tensor(x, "float64")
    holder(_linear(h, w), xt)
    holder.step()
    holder(_linear(h, w), xt)
    holder.step()
    assert float(h.numpy(holder.state.mu)) == pytest.approx(0.2 * (np.linalg.norm(w) - 0.5), rel=1e-12)
    restored = StatefulVALP(holder.valp, h.rng(0))
    restored.load_state_dict(holder.state_dict())
    assert float(h.numpy(restored.state.mu)) == float(h.numpy(holder.state.mu))
    assert isinstance(holder.state, ALState)
