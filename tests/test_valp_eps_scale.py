"""Data-scaled radii (issue 17 item 4; docs/conventions-eps-scale.md): VALP(eps_scale="auto")
multiplies the drawn radii (and xi) by s = median pairwise l2 distance of the batch / 40,
computed once in the core; the default keeps the paper's absolute radii and warns once when they
are far from the batch's scale (eager values only, never while tracing).

Every number is checked against the float64 NumPy reference (tests/reference.py), which takes
the median over the pairs by direct differences, not through the core's Gram matrix and sort.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

from tests import reference as ref
from tests.harness import harness, load
from tests.test_valp_edges import tensor, to_np
from valr_core import VALP, Draws, get_backend
from valr_core.algorithm import (
    EPS_SCALE_REFERENCE,
    EPS_SCALE_SAMPLES,
    data_scale,
    median_pairwise_distance,
)

TOL = {"float64": 1e-12, "float32": 2e-6, "bfloat16": 2e-6}  # bfloat16 x: the statistic is float32


def _x(n: int, shape: tuple[int, ...] = (5,), seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).normal(size=(n, *shape))


@pytest.mark.parametrize(("n", "shape"), [(2, (5,)), (9, (5,)), (10, (5,)), (7, (2, 3, 3)), (300, (3,))])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_median_pairwise_distance_matches_the_reference(framework: str, n: int, shape: tuple, dtype: str) -> None:
    """Odd (n = 2: 1 pair; 10: 45) and even (9: 36; 7: 21 is odd, images) pair counts, and
    n = 300 > 256: the median of x[::2]'s pairs (150 samples)."""
    h = harness(framework)
    x = _x(n, shape, scale=3.0)
    xt = tensor(h, x, dtype)
    seen = to_np(h, xt)  # x as rounded to dtype, in float64
    backend = get_backend(framework)
    got = float(to_np(h, median_pairwise_distance(backend, xt)))
    want = ref.median_pairwise_distance(seen)
    assert got == pytest.approx(want, rel=TOL[dtype])
    assert float(to_np(h, data_scale(backend, xt))) == pytest.approx(want / 40.0, rel=TOL[dtype])
    assert backend.dtype_name(median_pairwise_distance(backend, xt)) == ("float64" if dtype == "float64" else "float32")
    if n > EPS_SCALE_SAMPLES:  # the evenly strided subset's median, not the first 256 samples'
        i, j = np.triu_indices(EPS_SCALE_SAMPLES, k=1)
        first = float(np.median(np.linalg.norm(seen[i] - seen[j], axis=1)))
        assert ref.median_pairwise_distance(seen[::2]) == want and abs(first / want - 1) > 10 * TOL[dtype]


def test_degenerate_batches(framework: str) -> None:
    h = harness(framework)
    backend = get_backend(framework)
    assert data_scale(backend, h.tensor(_x(1), "float64")) is None  # no pair: absolute radii
    same = np.tile(_x(1), (6, 1))
    assert float(h.numpy(data_scale(backend, h.tensor(same, "float64")))) == 1.0  # median 0: s = 1
    bad = _x(6)
    bad[4, 2] = math.nan
    assert math.isnan(float(h.numpy(data_scale(backend, h.tensor(bad, "float64")))))


def test_cifar_like_images_keep_the_paper_radii(framework: str) -> None:
    """32x32x3 images in [-1, 1]: s within 15% of 1 (uniform noise images: 45.3 / 40 = 1.13;
    CIFAR-10's median is a little below its RMS distance 39.3)."""
    h = harness(framework)
    x = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3))
    s = float(h.numpy(data_scale(get_backend(framework), h.tensor(x, "float32"))))
    assert s == pytest.approx(ref.data_scale(x.astype(np.float32).astype(np.float64)), rel=1e-5)
    assert 0.85 < s < 1.15
    assert EPS_SCALE_REFERENCE == ref.EPS_SCALE_REFERENCE and EPS_SCALE_SAMPLES == ref.EPS_SCALE_SAMPLES


def _linear(h: Any, w: np.ndarray) -> Any:
    wt = h.tensor(w, "float64")
    xp = get_backend(h.framework).namespace(wt)
    return lambda z: xp.sum(xp.reshape(z, (z.shape[0], -1)) * wt, axis=1)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_auto_radii_are_the_drawn_ones_times_the_batch_scale(framework: str, fraction: float) -> None:
    """||r_adv|| = eps * s with s of the whole batch (also when only half is regularised), the
    quotient of a linear critic is still |w|; the default is the drawn radii themselves."""
    h = harness(framework)
    x = _x(12, scale=0.2)  # small data: s ~ 0.02
    w = np.random.default_rng(1).normal(size=5)
    s = ref.data_scale(x)
    xt = h.tensor(x, "float64")
    res, _ = VALP(eps_scale="auto", fraction=fraction).violations(_linear(h, w), xt, h.rng(0))
    r = np.linalg.norm(h.numpy(res.r_adv), axis=1)
    np.testing.assert_allclose(r, h.numpy(res.eps), rtol=1e-12)
    assert float(h.numpy(res.scale)) == pytest.approx(s, rel=1e-12)
    assert np.all(r >= 0.1 * s * (1 - 1e-12)) and np.all(r <= 10.0 * s * (1 + 1e-12))
    np.testing.assert_allclose(h.numpy(res.quotients), np.linalg.norm(w), rtol=1e-9)
    # Fixed draws: the same radii scaled; eps_scale="none" and None leave them as drawn.
    m = len(h.numpy(res.eps))
    eps = np.linspace(0.1, 10.0, 12)
    draws = Draws(h.tensor(_x(12, seed=2), "float64"), h.tensor(eps, "float64"), None)
    for setting, factor in (("auto", s), ("none", 1.0), (None, 1.0)):
        res, _ = VALP(eps_scale=setting).violations(_linear(h, w), xt, draws=draws)
        np.testing.assert_allclose(np.linalg.norm(h.numpy(res.r_adv), axis=1), eps * factor, rtol=1e-12)
        assert (res.scale is None) == (setting != "auto")
    assert m == (12 if fraction == 1.0 else 6)
    loss, aux = VALP(eps_scale="auto", K=0.0).loss(_linear(h, w), xt, draws=draws)
    assert float(h.numpy(aux.stats["valp/eps_scale"])) == pytest.approx(s, rel=1e-12)
    assert "valp/eps_scale" not in VALP(K=0.0).loss(_linear(h, w), xt, draws=draws)[1].stats


def test_auto_is_scale_equivariant(framework: str) -> None:
    """The defining property of data-scaled radii: rescaling the data by c (x -> c x, critic
    g(z) = c f(z / c), the same function in the new units) rescales r_adv by c and leaves every
    quotient as it was; absolute radii change the quotients. A nonlinear critic, so the
    quotients depend on where r_adv lands, and xi's scaling is exercised too."""
    h = harness(framework)
    x, w = _x(12, scale=0.2), np.random.default_rng(1).normal(size=(5,))
    draws = Draws(h.tensor(_x(12, seed=2), "float64"), h.tensor(np.linspace(0.1, 10.0, 12), "float64"), None)
    wt = h.tensor(w, "float64")
    xp = get_backend(framework).namespace(wt)

    def results(c: float, setting: str) -> tuple[np.ndarray, np.ndarray]:
        def critic(z: Any) -> Any:
            return c * xp.sum(xp.tanh(3.0 * (z / c) * wt), axis=1)

        res, _ = VALP(eps_scale=setting, K=0.0).violations(critic, h.tensor(c * x, "float64"), draws=draws)
        return h.numpy(res.quotients), h.numpy(res.r_adv)

    (q1, r1), (q7, r7) = results(1.0, "auto"), results(7.3, "auto")
    np.testing.assert_allclose(q7, q1, rtol=1e-10)
    np.testing.assert_allclose(r7, 7.3 * r1, rtol=1e-10, atol=1e-14)
    with pytest.warns(UserWarning, match="absolute radii"):  # x's median distance is 0.56 here
        assert np.abs(results(7.3, "none")[0] / results(1.0, "none")[0] - 1).max() > 1e-2


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_auto_penalty_and_gradients_match_the_reference(framework: str, kind: str, dtype: str) -> None:
    """The whole penalty with eps_scale="auto" (radii and xi times s) against the float64
    reference: penalty, r_adv, quotients and parameter gradients."""
    h = harness(framework)
    fx = load(kind)
    p = {k: v.astype(dtype).astype(np.float64) if v.dtype.kind == "f" else v for k, v in fx.items()}
    valp = VALP(eps_scale="auto", K=0.5)
    draws = h.draws(fx["d0"], fx["eps"], None, dtype)
    loss, aux, grads = h.loss_and_grads(valp, kind, fx, fx["x"], draws, dtype)
    want = ref.valp(ref.MLP if kind == "mlp" else ref.CONV, p, p["x"], p["d0"], p["eps"], K=0.5, eps_scale="auto")
    assert want["penalty"] > 0 and want["scale"] < 0.5  # violations exist; radii really rescaled
    # float32: the scaled radii (down to 0.04 here) make f(x + r) - f(x) cancel ~10x more than at
    # the fixture's own radii, so the reference tests' 2e-5 (conv) becomes the MLP's 5e-4.
    rtol = {"float64": 1e-10, "float32": 5e-4}[dtype]
    assert loss == pytest.approx(want["penalty"], rel=rtol)
    np.testing.assert_allclose(h.output(aux.violations.r_adv), want["r_adv"], rtol=rtol, atol=rtol * 1e-1)
    np.testing.assert_allclose(h.numpy(aux.violations.quotients), want["quotients"], rtol=rtol)
    for name, g in want["grads"].items():
        err = np.linalg.norm(grads[name] - g) / max(np.linalg.norm(g), 1e-30)
        assert err < {"float64": 1e-9, "float32": 1e-3}[dtype], (name, err)


def test_auto_is_the_same_under_compilation(framework: str) -> None:
    """jax.jit and tf.function trace the statistic (static positions, no boolean mask): the
    same penalty as eagerly."""
    h = harness(framework)
    x, w = _x(10), np.random.default_rng(1).normal(size=5)
    d0 = _x(10, seed=2)
    valp = VALP(eps_scale="auto", K=0.0)

    def run(z: Any) -> Any:
        return valp.loss(_linear(h, w), z, draws=Draws(h.tensor(d0, "float64"), h.tensor(np.linspace(1, 9, 10), "float64"), None))[0]

    eager = float(h.numpy(run(h.tensor(x, "float64"))))
    if framework == "jax":
        import jax

        compiled = float(jax.jit(run)(h.tensor(x, "float64")))
    elif framework == "tf":
        import tensorflow as tf

        compiled = float(tf.function(run)(h.tensor(x, "float64")))
    else:
        compiled = eager
    assert eager > 0 and compiled == pytest.approx(eager, rel=1e-12)
    # By hand: K = 0 and a linear critic: every quotient is |w|, whatever the radii.
    assert eager == pytest.approx(10.0 * np.linalg.norm(w) ** 2, rel=1e-9)


# ============================================================================ the warning


def _warnings_of(fn: Any) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [c for c in caught if "absolute radii" in str(c.message)]


def test_absolute_radii_far_from_the_data_warn_once_per_instance(framework: str) -> None:
    """2-D-toy-sized data (median distance ~0.3) under the paper's eps_max = 10: one warning per
    VALP instance, naming the remedy; none with eps_scale="auto", none on CIFAR-like data."""
    h = harness(framework)
    x, w = _x(16, scale=0.2), np.random.default_rng(1).normal(size=5)
    xt = h.tensor(x, "float64")
    valp = VALP()
    first = _warnings_of(lambda: valp.loss(_linear(h, w), xt, h.rng(0)))
    assert len(first) == 1 and first[0].category is UserWarning
    text = str(first[0].message)
    assert "eps_scale='auto'" in text and f"{ref.median_pairwise_distance(x):.3g}" in text
    assert _warnings_of(lambda: valp.loss(_linear(h, w), xt, h.rng(0))) == []  # once
    assert len(_warnings_of(lambda: VALP().violations(_linear(h, w), xt, h.rng(0)))) == 1  # a new instance
    assert _warnings_of(lambda: VALP(eps_scale="auto").loss(_linear(h, w), xt, h.rng(0))) == []
    # Just inside the threshold: eps_max = 5 * median does not warn, slightly above does.
    m = ref.median_pairwise_distance(x)
    assert _warnings_of(lambda: VALP(eps_min=0.01, eps_max=5 * m * (1 - 1e-6)).loss(_linear(h, w), xt, h.rng(0))) == []
    assert len(_warnings_of(lambda: VALP(eps_min=0.01, eps_max=5 * m * (1 + 1e-6)).loss(_linear(h, w), xt, h.rng(0)))) == 1
    images = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32))
    w_img = np.random.default_rng(2).normal(size=3 * 32 * 32) / 55
    assert _warnings_of(lambda: VALP().loss(_linear(h, w_img), h.tensor(images, "float64"), h.rng(0))) == []


@pytest.mark.framework("jax")
def test_the_warning_never_breaks_jax_jit() -> None:
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(_x(16, scale=0.2))
    w = jnp.asarray(np.random.default_rng(1).normal(size=5))
    valp = VALP()
    fn = jax.jit(lambda z: valp.loss(lambda v: v @ w, z, jax.random.key(0))[0])
    assert _warnings_of(lambda: fn(x)) == []  # values unknown while tracing: not checked
    assert math.isfinite(float(fn(x)))
    assert _warnings_of(lambda: valp.loss(lambda v: v @ w, x, jax.random.key(0))) == []  # first call was traced
    assert len(_warnings_of(lambda: VALP().loss(lambda v: v @ w, x, jax.random.key(0)))) == 1  # eagerly


@pytest.mark.framework("tf")
def test_the_warning_never_breaks_tf_function() -> None:
    import tensorflow as tf

    x = tf.constant(_x(16, scale=0.2))
    w = tf.constant(np.random.default_rng(1).normal(size=5))
    valp = VALP()
    gen = tf.random.Generator.from_seed(0)
    for autograph in (True, False):
        fn = tf.function(lambda z: valp.loss(lambda v: tf.linalg.matvec(v, w), z, gen)[0], autograph=autograph)
        assert _warnings_of(lambda f=fn: f(x)) == []
        assert math.isfinite(float(fn(x)))
    dynamic = tf.function(lambda z: valp.loss(lambda v: tf.linalg.matvec(v, w), z, gen)[0],
                          input_signature=[tf.TensorSpec([None, 5], tf.float64)])
    assert math.isfinite(float(dynamic(x)))  # a dynamic batch: no static pairs, still no error
    assert len(_warnings_of(lambda: valp.loss(lambda v: tf.linalg.matvec(v, w), x, gen))) == 1


@pytest.mark.framework("torch")
def test_torch_eager_warns_and_no_grad_is_kept() -> None:
    import torch

    x = torch.tensor(_x(16, scale=0.2), requires_grad=True)  # a generator's output, say
    w = torch.tensor(np.random.default_rng(1).normal(size=5))
    caught = _warnings_of(lambda: VALP().loss(lambda v: v @ w, x, torch.Generator().manual_seed(0)))
    assert len(caught) == 1
    loss, aux = VALP(eps_scale="auto").loss(lambda v: v @ w, x, torch.Generator().manual_seed(0))
    assert not aux.violations.scale.requires_grad  # a stop-gradient statistic
