"""VALP at the edges (issue 9): reduced precision, output shapes, fallbacks, clipping, eq. 18,
input scale, normalisation layers and StatefulVALP, in every framework's env.

Tolerances for float16 / bfloat16 (unit roundoff u = 2**-11 / 2**-8), derived rather than fitted:
the quotient |f(x) - f(x + r)| / d_X divides a difference of two critic outputs, each rounded
to the dtype with error ~u |f|, by a distance measured exactly (in float32) on the rounded pair;
so its relative error is about c * u * (1 + |f(x)| / |f(x) - f(x + r)|): the unit roundoff times
the cancellation's condition number, c a small count of roundings (direction, x + r, the two
forward passes, the final cast). We use c = 8. For the linear critic the truth is |w| (of w
rounded to the dtype); for the tanh MLP it is the float64 reference on the same rounded inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests import reference as ref
from tests.harness import harness, load
from valr_core import VALP, ALState, Draws, StatefulVALP, get_backend

U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
HALF = ("float16", "bfloat16")
C_ROUNDINGS = 8


def _np_round(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (bfloat16 by truncating float32 with round-to-nearest-even)."""
    if dtype != "bfloat16":
        return np.asarray(a).astype(dtype).astype(np.float64)
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def tensor(h, a, dtype: str):
    """A tensor of ``dtype`` in ``h``'s framework (bfloat16 via float32)."""
    if dtype == "bfloat16":
        t = h.tensor(np.asarray(a, np.float32), "float32")
        backend = get_backend(h.framework)
        from valr_core.precision import astype

        xp = backend.namespace(t)
        return astype(backend, t, getattr(xp, "bfloat16", None) or _bf16(h))
    return h.tensor(a, dtype)


def _bf16(h):
    if h.framework == "tf":
        import tensorflow as tf

        return tf.bfloat16
    import jax.numpy as jnp

    return jnp.bfloat16


def to_np(h, t) -> np.ndarray:
    backend = get_backend(h.framework)
    if backend.dtype_name(t) == "bfloat16":
        from valr_core.precision import astype

        t = astype(backend, t, "float32")
    return np.asarray(h.numpy(t), np.float64)


def linear(h, w: np.ndarray, dtype: str):
    wt = tensor(h, w, dtype)
    if h.framework == "tf":
        import tensorflow as tf

        return lambda x: tf.linalg.matvec(x, wt)
    return lambda x: x @ wt


def _problem(scale: float = 1.0, n: int = 16, dim: int = 7):
    rs = np.random.default_rng(5)
    return rs.uniform(-1, 1, size=(n, dim)), scale * rs.normal(size=dim) / np.sqrt(dim)


def _linear_tolerance(dtype: str, x: np.ndarray, w: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """c * u * (1 + |f(x)| / |f(x) - f(x + r)|) with |f(x + r) - f(x)| = eps |w| on the optimal pair."""
    fx = np.abs(x @ w)
    return C_ROUNDINGS * U[dtype] * (1 + fx / (eps * np.linalg.norm(w)))


# ============================================================================ precision


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_linear_critic_closed_form_in_half_precision(framework: str, dtype: str, scale: float) -> None:
    """One power iteration lands on +-w/|w|: the quotient is |w|. scale=1e-3 is the tiny-gradient
    case (|grad f| = 1e-3: squaring float16 elements of ~4e-4 underflows): no random fallback."""
    h = harness(framework)
    x, w = _problem(scale)
    x, w = _np_round(x, dtype), _np_round(w, dtype)
    valp = VALP(K=0.0, eps_min=1.0, eps_max=3.0)
    loss, aux = valp.loss(linear(h, w, dtype), tensor(h, x, dtype), h.rng(0))
    res = aux.violations
    backend = get_backend(framework)
    assert backend.dtype_name(res.quotients) == "float32" and backend.dtype_name(loss) == "float32"
    q, eps = to_np(h, res.quotients), to_np(h, res.eps)
    truth = np.linalg.norm(w)
    tol = _linear_tolerance(dtype, x, w, eps)
    err = np.abs(q / truth - 1)
    assert np.all(err <= tol), (err.max(), tol.min())
    assert float(h.numpy(aux.stats["valp/dropped_fraction"])) == 0.0
    # A random direction would give |cos| ~ 0.3 on average: 70% off, not ~1e-3.
    r = to_np(h, res.r_adv)
    cos = np.abs(r @ w) / (np.linalg.norm(r, axis=1) * truth)
    assert np.all(cos > 1 - 10 * U[dtype])


def _mlp_abs_forward(p: dict, x: np.ndarray) -> np.ndarray:
    """The forward pass with every term's magnitude: sum_j |w2_j| (|h_j| + h_j' (|x| |W1| + |b1|)_j)
    + |b2|, the scale the rounding errors of f(x) have (the condition of its dot products)."""
    h = np.tanh(x @ p["w1"] + p["b1"])
    inner = np.abs(x) @ np.abs(p["w1"]) + np.abs(p["b1"])
    return (np.abs(h) + (1 - h**2) * inner) @ np.abs(p["w2"][:, 0]) + np.abs(p["b2"][0])


def _mlp_grad_condition(p: dict, z: np.ndarray) -> np.ndarray:
    """|| |W1| (|w2| (s + 2 h^2)) || / ||W1 (s * w2)||, h = tanh(z W1 + b1), s = 1 - h^2: the
    condition of the input gradient (autodiff forms s from the rounded h: 1 - h^2 cancels)."""
    h = np.tanh(z @ p["w1"] + p["b1"])
    s = 1 - h**2
    v = s * p["w2"][:, 0]
    mag = np.abs(p["w2"][:, 0]) * (s + 2 * h**2)
    return np.linalg.norm(mag @ np.abs(p["w1"]).T, axis=1) / np.linalg.norm(v @ p["w1"].T, axis=1)


def _point_sensitivity(p: dict, z: np.ndarray, u: float) -> np.ndarray:
    """The largest angle the input gradient turns by when the point z (= x + xi * d, itself
    rounded to the dtype) moves by u |z| per element: 8 random sign patterns, float64."""
    g = ref.mlp_input_grad(p, z)
    worst = np.zeros(len(z))
    for seed in range(8):
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=z.shape)
        g2 = ref.mlp_input_grad(p, z + u * np.abs(z) * signs)
        cos = (g * g2).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(g2, axis=1))
        worst = np.maximum(worst, np.arccos(np.clip(cos, -1, 1)))
    return worst


@pytest.mark.parametrize("dtype", HALF)
def test_mlp_matches_float64_reference_in_half_precision(framework: str, dtype: str) -> None:
    """The tanh MLP fixture against the float64 reference on the same (rounded) inputs.

    Direction: the angle to the reference's is at most c * u * kappa_g (kappa_g: the condition of
    the input gradient at x + xi * d0). Quotient, on the pair the framework evaluated: at most
    c * u * (1 + (|f|(x) + |f|(x_adv)) / |f(x) - f(x_adv)|), |f| the forward pass in magnitudes.
    (One power iteration from a random start is not a maximiser, so the quotient is first-order
    sensitive to the direction: comparing it at the reference's own pair would mix both errors.)"""
    h = harness(framework)
    fx = load("mlp")
    p = {k: _np_round(v, dtype) if v.dtype.kind == "f" else v for k, v in fx.items()}
    draws = Draws(tensor(h, p["d0"], dtype), tensor(h, p["eps"], dtype), None)
    critic, _ = _critic(h, "mlp", p, dtype)
    loss, aux = VALP(backend=framework).loss(critic, tensor(h, p["x"], dtype), draws=draws)
    want = ref.valp(ref.MLP, p, p["x"], p["d0"], p["eps"])
    r = to_np(h, aux.violations.r_adv)
    d0, _ = ref._unit(p["d0"])
    angle = np.arccos(np.clip((r * want["r_adv"]).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(want["r_adv"], axis=1)), -1, 1))
    z = p["x"] + 10.0 * d0
    bound = C_ROUNDINGS * U[dtype] * _mlp_grad_condition(p, z) + 2 * _point_sensitivity(p, z, U[dtype])
    assert np.all(angle <= bound), (angle, bound)
    x_adv = p["x"] + r  # the pair the framework evaluated, exactly (dtype values are float64 values)
    f0, fa = ref.mlp_forward(p, p["x"])[0][:, 0], ref.mlp_forward(p, x_adv)[0][:, 0]
    q_pair = np.abs(f0 - fa) / np.linalg.norm(r, axis=1)
    tol = C_ROUNDINGS * U[dtype] * (1 + (_mlp_abs_forward(p, p["x"]) + _mlp_abs_forward(p, x_adv)) / np.abs(f0 - fa))
    err = np.abs(to_np(h, aux.violations.quotients) / q_pair - 1)
    assert np.all(err <= tol), (err, tol)
    L = np.maximum(q_pair - 1.0, 0.0)
    rel_pen = abs(float(to_np(h, loss)) / (10.0 * np.mean(L**2)) - 1)
    bound = 2 * np.max(tol * q_pair / np.maximum(L, 1e-30) * (L > 0))  # d(L^2)/L^2 = 2 dq/L
    assert rel_pen <= bound, (rel_pen, bound)


def _critic(h, kind, p, dtype):
    if dtype != "bfloat16":
        return h.critic(kind, p, dtype) if h.framework != "jax" else (lambda z: h.critic_fn(kind)(h.params(kind, p, dtype), z), None)
    # bfloat16 parameters: built in float32, cast once (harness.tensor knows no bfloat16).
    if h.framework == "jax":
        import jax.numpy as jnp

        ps = {k: jnp.asarray(np.asarray(p[k], np.float32), jnp.bfloat16) for k in ("w1", "b1", "w2", "b2")}
        return (lambda z: jnp.tanh(z @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]), None
    ps = {k: tensor(h, p[k], "bfloat16") for k in ("w1", "b1", "w2", "b2")}
    if h.framework == "tf":
        import tensorflow as tf

        return (lambda z: tf.tanh(z @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]), None
    import torch

    return (lambda z: torch.tanh(z @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]), None


@pytest.mark.parametrize("dtype", HALF)
def test_fully_clipped_sample_is_dropped_not_nan(framework: str, dtype: str) -> None:
    """x at the clip bound, pushed outward: d_X = 0. It used to be floored at 1e-12 (0 in
    float16: a NaN penalty); now the pair is dropped and counted."""
    h = harness(framework)
    w = np.abs(_problem()[1]) + 0.1
    x = np.ones((4, 7))
    x[2:] = 0.0  # two ordinary samples beside two fully clipped ones
    draws = Draws(tensor(h, np.tile(w, (4, 1)), dtype), tensor(h, np.full(4, 2.0), dtype), None)
    loss, aux = VALP(K=0.0, clip=(-1.0, 1.0)).loss(linear(h, w, dtype), tensor(h, x, dtype), draws=draws)
    assert np.isfinite(float(to_np(h, loss)))
    kept = np.asarray(h.numpy(aux.violations.kept))
    np.testing.assert_array_equal(kept, [False, False, True, True])
    assert float(to_np(h, aux.stats["valp/dropped_fraction"])) == 0.5
    q = to_np(h, aux.violations.quotients)
    assert np.all(q[:2] == 0.0) and np.all(np.abs(q[2:] / np.linalg.norm(_np_round(w, dtype)) - 1) < 8 * U[dtype])


@pytest.mark.parametrize("dtype", HALF + ("float32",))
def test_multiplier_stays_float32_and_moves(framework: str, dtype: str) -> None:
    """mu in bfloat16 could not move from 2.0 by +0.001 steps; it is float32 whatever x's dtype."""
    h = harness(framework)
    valp = VALP(mode="al", rho=0.01)
    x = tensor(h, np.zeros((3, 2)), dtype)
    state = valp.init_state(x)
    backend = get_backend(framework)
    assert backend.dtype_name(state.mu) == "float32"
    state = ALState(state.mu + 2.0)
    c = tensor(h, np.asarray(0.1), dtype)
    for _ in range(100):
        state = valp.update(state, c)
    assert backend.dtype_name(state.mu) == "float32"
    np.testing.assert_allclose(float(h.numpy(state.mu)), 2.0 + 100 * 0.01 * float(to_np(h, c)), rtol=1e-5)


# ============================================================================ shapes


def test_fx_of_shape_n_next_to_a_critic_of_shape_n1(framework: str) -> None:
    """A trailing 1 is squeezed: fx (N,) with a critic returning (N, 1) gives |w|, not a (N, N)
    broadcast (quotients 21-35 where the truth was 4.72)."""
    h = harness(framework)
    x, w = _problem()
    w2 = w[:, None]
    critic = linear(h, w2, "float64") if framework != "tf" else _tf_matmul(h, w2)
    xt = h.tensor(x, "float64")
    fx = h.tensor(x @ w, "float64")  # (N,)
    loss, aux = VALP().loss(critic, xt, h.rng(0), fx=fx)
    np.testing.assert_allclose(h.numpy(aux.violations.quotients), np.linalg.norm(w), rtol=1e-12)
    with pytest.raises(ValueError, match=r"critic\(x \+ r_adv\) must have the shape of critic\(x\): got \(16, 2\)"):
        VALP(n_power=0).loss(_tf_matmul(h, np.ones((7, 2))) if framework == "tf" else linear(h, np.ones((7, 2)), "float64"),
                             xt, h.rng(0), fx=fx)


def _tf_matmul(h, w):
    wt = h.tensor(w, "float64")
    return lambda x: x @ wt


def test_scalar_and_wrong_batch_outputs_name_the_shapes(framework: str) -> None:
    h = harness(framework)
    x, w = _problem()
    xt, critic = h.tensor(x, "float64"), linear(h, w, "float64")
    xp = get_backend(framework).namespace(xt)
    with pytest.raises(ValueError, match=r"critic\(x\) must return one output per sample.*got a scalar of shape \(\)"):
        VALP().loss(lambda z: xp.sum(critic(z)), xt, h.rng(0))
    with pytest.raises(ValueError, match=r"critic\(x\) must return one output per sample: got shape \(3,\) for a batch of 16"):
        VALP().loss(lambda z: critic(z)[:3], xt, h.rng(0))
    with pytest.raises(ValueError, match=r"fx must return one output per sample: got shape \(4,\)"):
        VALP().loss(critic, xt, h.rng(0), fx=h.tensor(np.zeros(4), "float64"))


@pytest.mark.framework("tf")
def test_tf_graph_shape_and_empty_batch_checks() -> None:
    import tensorflow as tf

    w = tf.constant(np.ones(7))
    valp = VALP()

    def loss(x, g):
        return valp.loss(lambda z: tf.linalg.matvec(z, w)[:3], x, g)[0]

    with pytest.raises(ValueError, match=r"one output per sample: got shape \(3,\) for a batch of 16"):
        tf.function(loss)(tf.constant(np.ones((16, 7))), tf.random.Generator.from_seed(0))
    gen = tf.random.Generator.from_seed(0)
    spec = [tf.TensorSpec([None, 7], tf.float64)]
    wrong = tf.function(lambda x: valp.loss(lambda z: tf.linalg.matvec(z, w)[:3], x, gen)[0], input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size differs"):
        wrong(tf.constant(np.ones((16, 7))))
    empty = tf.function(lambda x: valp.loss(lambda z: tf.linalg.matvec(z, w), x, gen)[0], input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        empty(tf.constant(np.ones((0, 7))))
    assert np.isfinite(empty(tf.constant(np.ones((5, 7)))).numpy())


# ============================================================================ fallback


def test_critics_that_ignore_x_fall_back_to_the_random_start(framework: str) -> None:
    """Constant critics (with or without parameters) keep the random start, in every framework
    (torch used to raise): their gradient is itself zero. An exact tie with a nonzero gradient
    does not (SPEC "Ties"): d|t|/dt at t = f(x + xi d) - f(x) = 0 is +1, so the step follows
    grad f(x + xi d), in every framework alike (JAX's |.|'(0) used to differ)."""
    h = harness(framework)
    rs = np.random.default_rng(0)
    x = h.tensor(rs.normal(size=(4, 5)), "float64")
    xp = get_backend(framework).namespace(x)
    d0 = rs.normal(size=(4, 5))
    draws = Draws(h.tensor(d0, "float64"), h.tensor(np.full(4, 2.0), "float64"), None)
    start = 2.0 * d0 / np.linalg.norm(d0, axis=1, keepdims=True)
    b = h.tensor(np.asarray([0.5]), "float64")
    for critic in (lambda z: xp.zeros_like(z[:, 0]) + 3.0, lambda z: xp.zeros_like(z[:, 0]) + b):
        loss, aux = VALP().loss(critic, x, draws=draws)
        np.testing.assert_allclose(h.numpy(aux.violations.r_adv), start, rtol=1e-12)
        assert float(h.numpy(loss)) == 0.0
    # An exact tie: f(z) = z_1^2 + z_2 with x = (-2.5, 0) and xi * d = (5, 0): f(x + xi d) = f(x)
    # = 6.25 (all values exact in binary), though grad f = (5, 1) there: the direction is
    # (5, 1) / sqrt(26), not the start (1, 0).
    xt = h.tensor(np.tile([-2.5, 0.0], (2, 1)), "float64")
    tie = Draws(h.tensor(np.tile([1.0, 0.0], (2, 1)), "float64"), h.tensor(np.full(2, 1.0), "float64"), None)
    res, _ = VALP(xi=5.0).violations(lambda z: z[:, 0] * z[:, 0] + z[:, 1], xt, draws=tie)
    np.testing.assert_allclose(h.numpy(res.r_adv), np.tile([5.0, 1.0], (2, 1)) / np.sqrt(26.0), rtol=1e-12)


# ============================================================================ eq. 18, dropped pairs, scale


@pytest.mark.parametrize("d_X", ["l1", "l2", "linf"])
def test_norm_distances_follow_eq18(framework: str, d_X: str) -> None:
    h = harness(framework)
    x, w = _problem(dim=48)
    valp = VALP(d_X=d_X, eps_min=1.0, eps_max=1.0)
    res, _ = valp.violations(linear(h, w, "float64"), h.tensor(x, "float64"), h.rng(0))
    r = h.numpy(res.r_adv)
    norm = {"l1": np.abs(r).sum(1), "l2": np.linalg.norm(r, axis=1), "linf": np.abs(r).max(1)}[d_X]
    np.testing.assert_allclose(norm, 1.0, rtol=1e-12)
    # A linear critic's quotient is the dual norm of w: linf for l1, l2 for l2, l1 for linf.
    dual = {"l1": np.abs(w).max(), "l2": np.linalg.norm(w), "linf": np.abs(w).sum()}[d_X]
    q = h.numpy(res.quotients)
    assert np.all(q <= dual * (1 + 1e-12))
    if d_X == "l2":
        np.testing.assert_allclose(q, dual, rtol=1e-12)


def test_callable_distance_keeps_the_l2_radius(framework: str) -> None:
    h = harness(framework)
    x, w = _problem()
    xp = get_backend(framework).namespace(h.tensor(x, "float64"))
    res, _ = VALP(d_X=lambda a, b: xp.sum(xp.abs(a - b), axis=1), eps_min=2.0, eps_max=2.0).violations(
        linear(h, w, "float64"), h.tensor(x, "float64"), h.rng(0))
    np.testing.assert_allclose(np.linalg.norm(h.numpy(res.r_adv), axis=1), 2.0, rtol=1e-12)


def test_batch_mixing_critic_with_clipping_is_not_divided_by_a_floor(framework: str) -> None:
    """A train-mode-BatchNorm-like critic (batch mean subtracted) on a sample clipping erases:
    the old floor gave quotients ~1e11; the pair is dropped instead."""
    h = harness(framework)
    x = np.zeros((6, 5))
    x[0] = 1.0  # at the clip bound
    w = np.ones(5)
    xt = h.tensor(x, "float64")
    xp = get_backend(framework).namespace(xt)
    wt = h.tensor(w, "float64")

    def critic(z):
        y = xp.sum(z * wt, axis=1)
        return y - xp.mean(y)

    d0 = np.tile(w, (6, 1))
    draws = Draws(h.tensor(d0, "float64"), h.tensor(np.full(6, 3.0), "float64"), None)
    res, _ = VALP(clip=(-1.0, 1.0), n_power=0).violations(critic, xt, draws=draws)
    q = h.numpy(res.quotients)
    assert q.max() < 10 and not bool(np.asarray(h.numpy(res.kept))[0])


def test_partly_clipped_pairs_above_the_threshold_are_kept(framework: str) -> None:
    h = harness(framework)
    x = np.zeros((2, 4))
    x[:, 0] = 1.0
    w = np.ones(4)
    d0 = np.tile(w, (2, 1))  # the first coordinate is clipped away: 3/4 of r_adv's l2^2 remains
    draws = Draws(h.tensor(d0, "float64"), h.tensor(np.full(2, 2.0), "float64"), None)
    res, _ = VALP(clip=(-1.0, 1.0), n_power=0).violations(linear(h, w, "float64"), h.tensor(x, "float64"), draws=draws)
    assert np.all(np.asarray(h.numpy(res.kept)))
    np.testing.assert_allclose(h.numpy(res.quotients), np.sqrt(3.0), rtol=1e-12)


def test_inputs_too_large_for_their_dtype_raise(framework: str) -> None:
    h = harness(framework)
    x, w = _problem()
    with pytest.raises(ValueError, match=r"x's scale is too large for float32"):
        VALP().loss(linear(h, w, "float32"), h.tensor(x * 1e8, "float32"), h.rng(0))
    # Without the check, rounding erased every perturbation: all pairs dropped, counted.
    big = np.sign(x) * 1e10  # every entry's float32 ulp (1024) is far above any radius (<= 10)
    loss, aux = VALP(check_finite=False).loss(linear(h, w, "float32"), h.tensor(big, "float32"), h.rng(0))
    assert float(h.numpy(aux.stats["valp/dropped_fraction"])) == 1.0 and float(h.numpy(loss)) == 0.0
    VALP().loss(linear(h, w, "float32"), h.tensor(x * 1e4, "float32"), h.rng(0))  # fine in float32


# ============================================================================ StatefulVALP


@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
def test_stateful_accumulates_every_call_and_resumes_exactly(framework: str, reduction: str) -> None:
    h = harness(framework)
    rs = np.random.default_rng(1)
    real, fake = rs.normal(size=(6, 7)), rs.normal(size=(4, 7))
    w = rs.normal(size=7)
    valp = VALP(mode="al", rho=0.1, K=0.5, reduction=reduction)
    holder = StatefulVALP(valp, h.rng(0))
    critic = linear(h, w, "float64")
    holder(critic, h.tensor(real, "float64"))
    c_real = float(h.numpy(holder.last.constraint))
    holder(critic, h.tensor(fake, "float64"))
    c_fake = float(h.numpy(holder.last.constraint))
    holder.step()
    combined = {"mean": (6 * c_real + 4 * c_fake) / 10, "sum": c_real + c_fake, "max": max(c_real, c_fake)}[reduction]
    np.testing.assert_allclose(float(h.numpy(holder.state.mu)), 0.1 * combined, rtol=1e-12)
    # Resume: a fresh holder with another seed, loaded from the state dict, continues identically.
    holder(critic, h.tensor(real, "float64"))  # pending at save time
    saved = holder.state_dict()
    other = StatefulVALP(valp, h.rng(99))
    other.load_state_dict(saved)
    a = [float(h.numpy(holder(critic, h.tensor(fake, "float64"))))]
    b = [float(h.numpy(other(critic, h.tensor(fake, "float64"))))]
    holder.step()
    other.step()
    assert a == b and float(h.numpy(holder.state.mu)) == float(h.numpy(other.state.mu))
    np.testing.assert_array_equal(h.numpy(holder.last.violations.r_adv), h.numpy(other.last.violations.r_adv))


# ============================================================================ framework idioms


@pytest.mark.framework("torch")
def test_torch_autocast_bf16_critic() -> None:
    import torch

    x, w = _problem()
    net = torch.nn.Linear(7, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(w)[None])
    net = net.float()
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, aux = VALP(K=0.0, eps_min=1.0, eps_max=3.0).loss(net, xt, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    wb = _np_round(w, "bfloat16")
    tol = _linear_tolerance("bfloat16", _np_round(x, "bfloat16"), wb, aux.violations.eps.double().numpy())
    err = np.abs(aux.violations.quotients.detach().double().numpy() / np.linalg.norm(wb) - 1)
    assert np.all(err <= tol), (err.max(), tol.min())
    loss.backward()
    assert torch.isfinite(net.weight.grad).all() and net.weight.grad.abs().sum() > 0


@pytest.mark.framework("torch")
def test_torch_running_statistics_of_every_norm_module_are_left_alone() -> None:
    import torch

    torch.manual_seed(0)
    inorm = torch.nn.InstanceNorm1d(4, track_running_stats=True, affine=True)
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), inorm, torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(24, 1)).train()
    x = torch.randn(5, 2, 6)
    before = [b.clone() for b in inorm.buffers()]
    VALP(n_power=2).loss(net, x, torch.Generator().manual_seed(0))
    for a, b in zip(inorm.buffers(), before, strict=True):
        assert torch.equal(a, b)
    # A plain function closing over a BatchNorm module: frozen (it is in the closure).
    bn_net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)).train()
    bn = bn_net[1]
    saved = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    z = torch.randn(6, 3)
    VALP().loss(lambda v: bn_net(v), z, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, saved[0]) and int(bn.num_batches_tracked) == saved[1]
    # One VALP cannot see (a global-like attribute lookup): frozen by the hook, with one warning.
    holder = type("Holder", (), {})()
    holder.net = bn_net

    def hidden(v):
        return holder.net(v)

    with pytest.warns(RuntimeWarning, match="freeze="):
        loss, _ = VALP().loss(hidden, z, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, saved[0]) and int(bn.num_batches_tracked) == saved[1]
    loss.backward()  # nothing the freeze did invalidated the graph
    bn_net(z)
    assert int(bn.num_batches_tracked) == saved[1] + 1  # ordinary passes still update


@pytest.mark.framework("tf")
def test_keras_mixed_bfloat16_policy_and_unbuilt_batchnorm() -> None:
    import keras
    import tensorflow as tf

    x, w = _problem()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = keras.Sequential([keras.Input((7,)), keras.layers.Dense(1, use_bias=False)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    net.layers[0].kernel.assign(w[:, None].astype(np.float32))
    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        loss, aux = VALP(K=0.0, eps_min=1.0, eps_max=3.0).loss(lambda z: net(z), xt, tf.random.Generator.from_seed(0))
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
    wb = _np_round(w, "bfloat16")
    tol = _linear_tolerance("bfloat16", _np_round(x, "bfloat16"), wb, aux.violations.eps.numpy().astype(np.float64))
    err = np.abs(aux.violations.quotients.numpy() / np.linalg.norm(wb) - 1)
    assert np.all(err <= tol), (err.max(), tol.min())
    assert np.isfinite(tape.gradient(loss, net.trainable_variables)[0].numpy()).all()
    # README order: VALP before the model was ever called (BatchNorm not built yet).
    fresh = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    VALP().loss(lambda z: fresh(z, training=True), xt, tf.random.Generator.from_seed(0), freeze=fresh)
    bn = fresh.layers[1]
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)
    # A plain function closing over the model: found without freeze=.
    fresh(xt, training=True)
    before = bn.moving_mean.numpy().copy()
    VALP().loss(lambda z: fresh(z, training=True), xt, tf.random.Generator.from_seed(0))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


@pytest.mark.framework("jax")
def test_flax_bf16_params_and_nnx_batchnorm_pattern() -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    x, w = _problem()
    lin = nnx.Linear(7, 1, use_bias=False, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    lin.kernel.value = jnp.asarray(w[:, None], jnp.bfloat16)
    xt = jnp.asarray(x, jnp.bfloat16)
    valp = VALP(K=0.0, eps_min=1.0, eps_max=3.0)
    graphdef, params = nnx.split(lin)

    def objective(p):
        return valp.loss(lambda z: nnx.merge(graphdef, p)(z), xt, jax.random.key(0))

    (loss, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    wb = _np_round(w, "bfloat16")
    tol = _linear_tolerance("bfloat16", _np_round(x, "bfloat16"), wb, np.asarray(aux.violations.eps, np.float64))
    err = np.abs(np.asarray(aux.violations.quotients, np.float64) / np.linalg.norm(wb) - 1)
    assert np.all(err <= tol), (err.max(), tol.min())
    assert np.isfinite(np.asarray(jax.tree.leaves(grads)[0], np.float32)).all()

    # NNX with BatchNorm in train mode: calling the stateful module (or a merge of the split
    # state itself) inside VALP's jax.grad raises TraceContextError. The pattern: split once,
    # merge a fresh copy of the state (jax.tree.map) inside the critic, so the statistics
    # VALP's passes compute are discarded; update them with your own forward pass.
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(7, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.out = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, z):
            return self.out(jax.nn.relu(self.bn(self.lin(z))))

    net = Net(nnx.Rngs(1))
    gdef, state = nnx.split(net)
    before = np.asarray(net.bn.mean.value).copy()
    xf = jnp.asarray(x, jnp.float32)

    def critic_loss(st):
        return valp.loss(lambda z: nnx.merge(gdef, jax.tree.map(lambda a: a, st))(z), xf, jax.random.key(0))[0]

    value, _ = jax.value_and_grad(critic_loss)(state)
    assert np.isfinite(float(value))
    np.testing.assert_array_equal(np.asarray(net.bn.mean.value), before)


def test_no_warnings_on_the_default_path(framework: str) -> None:
    h = harness(framework)
    x, w = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VALP().loss(linear(h, w, "float32"), h.tensor(x, "float32"), h.rng(0))
