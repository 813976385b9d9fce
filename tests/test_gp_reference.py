"""Each backend's GP and LP against the float64 NumPy reference (tests/reference.py), closed
forms on linear critics, and the properties a gradient penalty must have (paper eqs. 7 and 9)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests import reference as ref
from tests.harness import CONV_KEYS, gp_inputs, harness
from valr_core import GP, LP, ALState, GPAux, sample_alphas

PENALTIES = {"gp": GP, "lp": LP}
DTYPES = ("float32", "float64")
MODES = ("squared", "linear", "al")
REDUCTIONS = ("mean", "sum", "max")

# float64: round-off only. float32 against the float64 reference on identically rounded inputs
# (eps32 = 6e-8): the norm is a forward and a backward pass of a few layers, each op adding
# ~eps32 relative error, so its error is allowed 100 eps32 (measured: 2e-7 to 5e-7);
# L = |n - 1| loses relative precision where n is near 1, so L and the loss are compared at the
# norms' absolute scale. The parameter gradient is one more backward pass through the input
# gradient: 1000 eps32 L2-relative (measured: 3e-7 to 6e-7 for the MLP; conv against
# finite differences up to 1.3e-6).
EPS32 = float(np.finfo(np.float32).eps) / 2
TOL64 = dict(rtol=1e-10, atol=1e-12)
NORM_RTOL32 = 100 * EPS32
GRAD_L2_TOL = {"float64": 1e-10, "float32": 1000 * EPS32}
FD_L2_TOL = 1e-7  # float64 backends vs fourth-order central differences of the reference


def l2_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_grads_close(got: dict, want: dict, tol: float) -> None:
    """Per parameter L2-relative error; a parameter whose true gradient is 0 (the output bias:
    it never changes an input gradient) is held to tol times the whole gradient's norm."""
    total = np.sqrt(sum(np.sum(g**2) for g in want.values()))
    for name, g in want.items():
        err = np.linalg.norm(got[name] - g) / max(np.linalg.norm(g), 1e-6 * total)
        assert err < tol, (name, err)





def _reference(kind: str, dtype: str = "float64", penalty: str = "gp", **kw) -> dict:
    p, real, fake, alphas = gp_inputs(kind, dtype)
    critic = ref.MLP if kind == "mlp" else ref.CONV
    return ref.gradient_penalty(critic, p, real, fake, alphas, one_sided=penalty == "lp", **kw)


@functools.cache
def _conv_fd_grads(penalty: str) -> dict:
    """Finite-difference parameter gradients of the reference conv GP/LP (float64)."""
    p, real, fake, alphas = gp_inputs("conv")
    one_sided = penalty == "lp"
    return ref.central_differences(lambda q: ref.gradient_penalty(ref.CONV, q, real, fake, alphas, one_sided=one_sided)["penalty"], p, CONV_KEYS)


def _run(framework: str, kind: str, dtype: str, pen, state: float | None = None, alphas=True):
    h = harness(framework)
    p, real, fake, a = gp_inputs(kind)
    st = None if state is None else ALState(h.tensor(np.asarray(state), dtype))
    loss, aux, grads = h.gp_loss_and_grads(pen, kind, p, real, fake, a if alphas else None, dtype, st)
    return h, loss, aux, grads


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("penalty", ["gp", "lp"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_penalty_matches_reference(framework: str, kind: str, dtype: str, penalty: str) -> None:
    h, loss, aux, grads = _run(framework, kind, dtype, PENALTIES[penalty](backend=framework))
    want = _reference(kind, dtype, penalty)
    assert want["norms"].min() < 1 < want["norms"].max(), "fixture norms must straddle 1"
    assert isinstance(aux, GPAux)
    norms, L = h.numpy(aux.norms), h.numpy(aux.violations)
    if dtype == "float64":
        np.testing.assert_allclose(loss, want["penalty"], **TOL64)
        np.testing.assert_allclose(norms, want["norms"], **TOL64)
        np.testing.assert_allclose(L, want["violations"], **TOL64)
    else:
        scale = NORM_RTOL32 * want["norms"].max()
        np.testing.assert_allclose(norms, want["norms"], rtol=NORM_RTOL32, atol=0)
        np.testing.assert_allclose(L, want["violations"], rtol=0, atol=scale)
        # loss = lam * mean(L^2): d loss = 2 lam mean(L) dL
        np.testing.assert_allclose(loss, want["penalty"], rtol=0, atol=2 * 10.0 * want["violations"].max() * scale)
    np.testing.assert_allclose(h.numpy(aux.constraint), want["constraint"], rtol=0, atol=TOL64["atol"] if dtype == "float64" else scale)
    expected = want["grads"] if kind == "mlp" else _conv_fd_grads(penalty)
    assert_grads_close(grads, expected, GRAD_L2_TOL[dtype] if kind == "mlp" else max(FD_L2_TOL, GRAD_L2_TOL[dtype]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("penalty", ["gp", "lp"])
def test_every_mode_and_reduction_matches_reference(framework: str, penalty: str, mode: str, reduction: str) -> None:
    mu = 0.7
    pen = PENALTIES[penalty](backend=framework, mode=mode, reduction=reduction, lam=3.0, rho=0.05)
    h, loss, aux, grads = _run(framework, "mlp", "float64", pen, state=mu if mode == "al" else None)
    want = _reference("mlp", "float64", penalty, mode=mode, reduction=reduction, lam=3.0, rho=0.05, mu=mu)
    np.testing.assert_allclose(loss, want["penalty"], **TOL64)
    np.testing.assert_allclose(h.numpy(aux.constraint), want["constraint"], **TOL64)
    assert_grads_close(grads, want["grads"], GRAD_L2_TOL["float64"])


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("penalty", ["gp", "lp"])
@pytest.mark.parametrize("w_norm", [0.5, 1.0, 2.0])
def test_linear_critic_closed_form(framework: str, penalty: str, w_norm: float) -> None:
    """f(x) = <w, x>: every input gradient is w, so GP = lam (|w| - 1)^2 and
    LP = lam max(|w| - 1, 0)^2, with d/dw = 2 lam (|w| - 1) w / |w| (LP: 0 below 1)."""
    h = harness(framework)
    rs = np.random.default_rng(3)
    direction = rs.normal(size=(4, 1))
    w = w_norm * direction / np.linalg.norm(direction)
    real, fake = rs.normal(size=(6, 4)), rs.normal(size=(6, 4))
    loss, aux, grads = h.gp_loss_and_grads(PENALTIES[penalty](backend=framework, lam=10.0), "linear", {"w": w}, real, fake, None, "float64", rng=h.rng(0))
    excess = w_norm - 1 if penalty == "gp" else max(w_norm - 1, 0.0)
    np.testing.assert_allclose(loss, 10.0 * excess**2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h.numpy(aux.norms), w_norm, rtol=1e-12)
    np.testing.assert_allclose(grads["w"], 2 * 10.0 * excess * w / w_norm, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("penalty", ["gp", "lp"])
@pytest.mark.parametrize("kind", ["const", "quad"])
def test_zero_input_gradient_is_safe(framework: str, penalty: str, kind: str) -> None:
    """A critic with zero input gradient: norm 0, finite loss, finite (zero) gradients. For
    quad (f = b/2 |x|^2 at b = 0) the norm |b| |x| still depends on b: a plain sqrt gives NaN."""
    h = harness(framework)
    rs = np.random.default_rng(4)
    real, fake = rs.normal(size=(5, 3)), rs.normal(size=(5, 3))
    for dtype in DTYPES:
        for mode in MODES:
            pen = PENALTIES[penalty](backend=framework, mode=mode, rho=0.5)
            state = ALState(h.tensor(np.asarray(0.3), dtype)) if mode == "al" else None
            loss, aux, grads = h.gp_loss_and_grads(pen, kind, {"b": np.zeros(1)}, real, fake, None, dtype, state, rng=h.rng(1))
            np.testing.assert_array_equal(h.numpy(aux.norms), 0.0)
            expected = {"squared": 10.0, "linear": 10.0, "al": 0.3 + 0.25}[mode] if penalty == "gp" else 0.0
            np.testing.assert_allclose(loss, expected, rtol=1e-6)
            assert np.isfinite(grads["b"]).all(), (dtype, mode, grads["b"])
            np.testing.assert_array_equal(grads["b"], 0.0)


# ----------------------------------------------------------------------------- properties
def _quad_norms(framework: str, real: np.ndarray, fake: np.ndarray, alphas=None, rng=None, pen=None):
    """quad critic with b = 1: grad f(x_hat_i) = x_hat_i, so the norms show x_hat itself."""
    h = harness(framework)
    pen = pen or GP(backend=framework)
    loss, aux, _ = h.gp_loss_and_grads(pen, "quad", {"b": np.ones(1)}, real, fake, alphas, "float64", rng=rng)
    return h, loss, aux


def test_norms_are_per_sample(framework: str) -> None:
    rs = np.random.default_rng(5)
    real, fake = rs.normal(size=(6, 2, 3)), rs.normal(size=(6, 2, 3)) * 3
    alphas = rs.uniform(size=6)
    h, loss, aux = _quad_norms(framework, real, fake, alphas)
    x_hat = ref.interpolates(real, fake, alphas)
    np.testing.assert_allclose(h.numpy(aux.norms), np.linalg.norm(x_hat.reshape(6, -1), axis=1), rtol=1e-12)
    np.testing.assert_allclose(loss, 10.0 * np.mean((np.linalg.norm(x_hat.reshape(6, -1), axis=1) - 1) ** 2), rtol=1e-12)


def test_one_alpha_per_sample_and_fixed_alphas_reproduce_a_draw(framework: str) -> None:
    """With fake = 0 the norm of x_hat_i = alpha_i real_i is alpha_i |real_i|: one weight
    per sample, the one sample_alphas draws from the same state; passing those draws as
    ``alphas`` gives the same loss; the same seed gives the same loss."""
    h = harness(framework)
    rs = np.random.default_rng(6)
    real, fake = rs.normal(size=(7, 4)), np.zeros((7, 4))
    _, loss, aux = _quad_norms(framework, real, fake, rng=h.rng(11))
    drawn, _ = sample_alphas(framework, h.tensor(real, "float64"), h.rng(11))
    drawn = h.numpy(drawn)
    assert drawn.shape == (7,) and np.all((drawn >= 0) & (drawn < 1)) and len(np.unique(drawn)) == 7
    np.testing.assert_allclose(h.numpy(aux.norms) / np.linalg.norm(real, axis=1), drawn, rtol=1e-12)
    _, fixed_loss, _ = _quad_norms(framework, real, fake, alphas=drawn)
    np.testing.assert_allclose(fixed_loss, loss, rtol=1e-14)
    _, again, _ = _quad_norms(framework, real, fake, rng=h.rng(11))
    assert again == loss
    _, other, _ = _quad_norms(framework, real, fake, rng=h.rng(12))
    assert other != loss


def test_rng_advances(framework: str) -> None:
    h = harness(framework)
    rs = np.random.default_rng(8)
    real, fake = rs.normal(size=(5, 3)), rs.normal(size=(5, 3))
    _, first, aux = _quad_norms(framework, real, fake, rng=h.rng(2))
    _, second, _ = _quad_norms(framework, real, fake, rng=aux.rng)  # the next state
    assert second != first
    _, fixed, aux = _quad_norms(framework, real, fake, alphas=np.full(5, 0.5))
    assert aux.rng is None


def test_stats(framework: str) -> None:
    for name, cls in PENALTIES.items():
        h, loss, aux, _ = _run(framework, "mlp", "float64", cls(backend=framework, mode="al"), state=0.2)
        want = _reference("mlp", penalty=name, mode="al", mu=0.2)
        stats = {k: float(h.numpy(v)) for k, v in aux.stats.items()}
        assert set(stats) == {f"{name}/{s}" for s in ("penalty", "mean_violation", "max_violation", "violating_fraction", "mean_grad_norm", "max_grad_norm", "mu")}
        L, n = want["violations"], want["norms"]
        expected = [want["penalty"], L.mean(), L.max(), np.mean(L > 0), n.mean(), n.max(), 0.2]
        np.testing.assert_allclose([stats[f"{name}/{s}"] for s in ("penalty", "mean_violation", "max_violation", "violating_fraction", "mean_grad_norm", "max_grad_norm", "mu")], expected, rtol=1e-10)
        _, _, aux, _ = _run(framework, "mlp", "float64", cls(backend=framework))
        assert f"{name}/mu" not in aux.stats


@pytest.mark.parametrize("penalty", ["gp", "lp"])
def test_augmented_lagrangian_convention(framework: str, penalty: str) -> None:
    """Critic minimises mu R(L) + rho/2 R(L^2): a positive violation raises the loss, more
    with a larger mu; update is mu <- max(0, mu + rho R(L))."""
    pen = PENALTIES[penalty](backend=framework, mode="al", rho=0.05)
    h, low, aux, _ = _run(framework, "mlp", "float64", pen, state=0.1)
    _, high, _, _ = _run(framework, "mlp", "float64", pen, state=2.0)
    constraint = float(h.numpy(aux.constraint))
    assert constraint > 0 and low > 0 and high > low
    np.testing.assert_allclose(high - low, 1.9 * constraint, rtol=1e-10)
    new = pen.update(ALState(h.tensor(np.asarray(0.1), "float64")), aux.constraint)
    np.testing.assert_allclose(h.numpy(new.mu), 0.1 + 0.05 * constraint, rtol=1e-12)
    floor = pen.update(ALState(h.tensor(np.asarray(0.0), "float64")), h.tensor(np.asarray(-3.0), "float64"))
    assert float(h.numpy(floor.mu)) == 0.0
    assert pen.update(pen.init_state(), 2.0) == ALState(0.1)
    state = pen.init_state(h.tensor(np.ones((3, 2)), "float32"))
    assert h.numpy(state.mu).shape == () and float(h.numpy(state.mu)) == 0.0
    with pytest.raises(ValueError, match="mode='al' needs state"):
        _run(framework, "mlp", "float64", pen)


def test_max_gp_with_al_is_lp_max(framework: str) -> None:
    """[23]'s max-GP with AL: LP(mode="al", reduction="max") penalises the worst sample only."""
    pen = LP(backend=framework, mode="al", reduction="max", rho=0.05)
    h, loss, aux, _ = _run(framework, "mlp", "float64", pen, state=0.5)
    L = _reference("mlp", penalty="lp")["violations"]
    np.testing.assert_allclose(loss, 0.5 * L.max() + 0.025 * L.max() ** 2, rtol=1e-10)
    np.testing.assert_allclose(h.numpy(aux.constraint), L.max(), rtol=1e-10)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(framework: str) -> None:
    h = harness(framework)
    gp = GP(backend=framework)
    f = lambda x: x[:, :1] * 2.0  # noqa: E731
    real = h.tensor(np.ones((4, 3)), "float64")
    rng = h.rng(0)
    with pytest.raises(ValueError, match=r"real and fake must have the same shape, got real \(4, 3\) and fake \(4, 2\)"):
        gp.loss(f, real, h.tensor(np.ones((4, 2)), "float64"), rng)
    with pytest.raises(ValueError, match=r"real and fake must have the same shape, got real \(4, 3\) and fake \(5, 3\)"):
        gp.loss(f, real, h.tensor(np.ones((5, 3)), "float64"), rng)
    with pytest.raises(TypeError, match="real must be a floating-point tensor"):
        gp.loss(f, h.tensor(np.ones((4, 3)), "int32"), real, rng)
    with pytest.raises(TypeError, match="real and fake must have the same dtype"):
        gp.loss(f, real, h.tensor(np.ones((4, 3)), "float32"), rng)
    with pytest.raises(TypeError, match="fake is a numpy.ndarray"):
        gp.loss(f, real, np.ones((4, 3)), rng)
    with pytest.raises(ValueError, match="fake contains NaN or Inf"):
        gp.loss(f, real, h.tensor(np.full((4, 3), np.nan), "float64"), rng)
    with pytest.raises(ValueError, match="real must hold at least one sample"):
        gp.loss(f, h.tensor(np.ones((0, 3)), "float64"), h.tensor(np.ones((0, 3)), "float64"), rng)
    with pytest.raises(ValueError, match="pass rng"):
        gp.loss(f, real, real)
    with pytest.raises(TypeError, match="rng must be a random state"):
        gp.loss(f, real, real, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"alphas must have shape \(N,\) = \(4,\)"):
        gp.loss(f, real, real, alphas=h.tensor(np.ones(3), "float64"))
    with pytest.raises(TypeError, match="alphas must have real's dtype"):
        gp.loss(f, real, real, alphas=h.tensor(np.ones(4), "float32"))
    with pytest.raises(ValueError, match="one scalar per sample"):
        gp.loss(lambda x: x * 2.0, real, real, rng)
    with pytest.raises(ValueError, match="one output per sample"):
        gp.loss(lambda x: x[:2, :1], real, real, rng)


# ----------------------------------------------------------------------------- framework idioms
@pytest.mark.framework("torch")
def test_torch_leaves_parameter_grads_and_batchnorm_statistics_alone() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    real, fake = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    bn = net[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    loss, aux = GP(backend="torch").loss(net, real, fake, torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in net.parameters()), "GP itself must not write .grad"
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1]) and int(bn.num_batches_tracked) == stats[2]
    expected = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True, allow_unused=True, materialize_grads=True)
    loss.backward()  # the caller's backward goes through the input gradient (double backward)
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(torch.zeros_like(p) if p.grad is None else p.grad, g)
    assert net[0].weight.grad.abs().sum() > 0


@pytest.mark.framework("jax")
def test_jax_under_jit_matches_eager() -> None:
    import jax
    import jax.numpy as jnp

    h = harness("jax")
    p, real, fake, alphas = gp_inputs("mlp")
    f = h.critic_fn("mlp")
    ps = h.params("mlp", p, "float64")
    real_j, fake_j = jnp.asarray(real), jnp.asarray(fake)
    for cls in (GP, LP):
        pen = cls(backend="jax", mode="al")

        def objective(ps, key, pen=pen):
            return pen.loss(lambda z: f(ps, z), real_j, fake_j, key, ALState(jnp.asarray(0.3)))

        key = jax.random.key(0)
        (eager, aux_e), g_eager = jax.value_and_grad(objective, has_aux=True)(ps, key)
        (jitted, aux_j), g_jit = jax.jit(jax.value_and_grad(objective, has_aux=True))(ps, key)
        np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-12)
        for k in g_eager:
            np.testing.assert_allclose(np.asarray(g_jit[k]), np.asarray(g_eager[k]), rtol=1e-10, atol=1e-14)
        assert not np.array_equal(jax.random.key_data(aux_j.rng), jax.random.key_data(key))
        state = jax.jit(pen.update)(ALState(jnp.asarray(0.3)), aux_j.constraint)
        np.testing.assert_allclose(float(state.mu), 0.3 + 0.01 * float(aux_e.constraint), rtol=1e-12)


@pytest.mark.framework("tf")
def test_tf_function_matches_eager() -> None:
    import tensorflow as tf

    h = harness("tf")
    p, real, fake, alphas = gp_inputs("conv")
    critic, ps = h.critic("conv", p, "float64")
    real_t, fake_t, alphas_t = h.input(real, "float64"), h.input(fake, "float64"), h.tensor(alphas, "float64")
    for cls in (GP, LP):
        pen = cls(backend="tf")

        def step(real, fake, alphas, pen=pen):
            with tf.GradientTape() as tape:
                loss, aux = pen.loss(critic, real, fake, alphas=alphas)
            return loss, tape.gradient(loss, list(ps.values()), unconnected_gradients=tf.UnconnectedGradients.ZERO)

        eager, g_eager = step(real_t, fake_t, alphas_t)
        graph, g_graph = tf.function(step)(real_t, fake_t, alphas_t)
        np.testing.assert_allclose(float(graph), float(eager), rtol=1e-12)
        for a, b in zip(g_graph, g_eager, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-14)
        # Drawing inside a graph from a tf.random.Generator works too, and advances it.
        gen = tf.random.Generator.from_seed(3)
        drawn = tf.function(lambda r, f, g, pen=pen: pen.loss(critic, r, f, g)[0])
        first, second = float(drawn(real_t, fake_t, gen)), float(drawn(real_t, fake_t, gen))
        assert first != second and np.isfinite([first, second]).all()
