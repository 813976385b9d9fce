"""Ties in the power iteration (SPEC "Ties", docs/conventions-ties.md): where f(x + xi d) - f(x)
is exactly 0 (an exact tie, or one rounding made, common in bfloat16/float16), d_Y's derivative
is taken in the +1 direction (for |.|: sign(0) := +1), so the step still follows grad f.

The bug this guards: in TF bfloat16 a linear critic (|w| = 3, K = 1, xi = 1) gave L = 0 for 1
of 16 samples: its finite difference rounded to 0, |.|'(0) = 0 made the gradient 0, and the
direction fell back to the random start.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.harness import harness
from tests.test_valp_edges import U, tensor, to_np
from valr_core import VALP, Draws, get_backend
from valr_core.distances import OUTPUT_DISTANCES

W = np.array([2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # |w| = 3 exactly
# A bias at which one unit in the last place is 8 (bfloat16: [1024, 2048); float16: [8192,
# 16384)): |w . xi d| <= 3 < 4 for any unit d, so f(x + xi d) rounds back to f(x) = B exactly.
BIAS = {"bfloat16": 1536.0, "float16": 12288.0}


def _tie_batch(n: int = 16) -> np.ndarray:
    """Rows with w . x = 0 exactly (dyadic values: every product and sum is exact in every
    dtype), so f(x) = B exactly; the other coordinates are random eighths in [-1, 1]."""
    rs = np.random.default_rng(3)
    x = rs.integers(-8, 9, (n, len(W))) / 8.0
    x[:, 2] = -2.0 * (x[:, 0] + x[:, 1])
    assert np.all(x @ W == 0.0)
    return x


def _critic(h: Any, dtype: str, bias: float) -> Any:
    wt, bt = tensor(h, W, dtype), tensor(h, np.asarray(bias), dtype)
    xp = get_backend(h.framework).namespace(wt)
    return lambda z: xp.sum(z * wt, axis=1) + bt


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rounded_tie_follows_the_critic_gradient_in_half_precision(framework: str, dtype: str) -> None:
    """The issue's case: linear critic, |w| = 3, K = 1, xi = 1, 16 samples whose finite
    difference rounds to exactly 0. Every sample gets w's direction: q = |w| (to the dtype's
    rounding of the final pair), L = |w| - K > 0 for all 16."""
    h = harness(framework)
    x = _tie_batch()
    critic = _critic(h, dtype, BIAS[dtype])
    xt = tensor(h, x, dtype)
    d0 = np.random.default_rng(4).normal(size=x.shape)
    unit = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
    # The premise, in the framework: every finite difference is exactly 0.
    fd = to_np(h, critic(tensor(h, x + unit, dtype))) - to_np(h, critic(xt))
    np.testing.assert_array_equal(fd, 0.0)
    valp = VALP(K=1.0, xi=1.0, eps_min=64.0, eps_max=128.0)
    draws = Draws(tensor(h, d0, dtype), tensor(h, np.linspace(64.0, 128.0, len(x)), dtype), None)
    for res in (valp.violations(critic, xt, draws=draws)[0], valp.violations(critic, xt, h.rng(0))[0]):
        q, L, r = to_np(h, res.quotients), to_np(h, res.violations), to_np(h, res.r_adv)
        eps = to_np(h, res.eps)
        # c * u * (1 + |f| / |f(x + r) - f(x)|): the final pair's outputs are rounded near B + 3 eps.
        tol = 8 * U[dtype] * (1 + (BIAS[dtype] + 3 * eps) / (3 * eps))
        assert np.all(np.abs(q / 3.0 - 1) <= tol), (q, tol)
        assert np.all(L > 0), L
        np.testing.assert_allclose(L, q - 1.0, rtol=1e-6)
        cos = np.abs(r @ W) / (np.linalg.norm(r, axis=1) * 3.0)
        assert np.all(cos > 1 - 10 * U[dtype]), cos  # w's direction, not a random one (|cos| ~ 0.35)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16"])
def test_exact_tie_follows_the_critic_gradient_in_every_dtype(framework: str, dtype: str) -> None:
    """A start direction orthogonal to w (a coordinate w ignores, so x + xi d is exact too):
    f(x + xi d) - f(x) = 0 exactly in any dtype. The subgradient +1 gives grad f = +w, so the
    direction is w / |w| (not -w, nor the start) and q = |w| = 3 for all."""
    h = harness(framework)
    x = _tie_batch(8)
    critic = _critic(h, dtype, 0.5)
    d0 = np.zeros_like(x)
    d0[:, 3] = 1.0  # w_3 = 0
    valp = VALP(K=1.0, xi=1.0)
    res, _ = valp.violations(critic, tensor(h, x, dtype), draws=Draws(tensor(h, d0, dtype), tensor(h, np.full(8, 2.0), dtype), None))
    r = to_np(h, res.r_adv)
    want = 2.0 * W / 3.0
    u = U[dtype]
    np.testing.assert_allclose(r, np.tile(want, (8, 1)), rtol=0, atol=8 * u * 2.0)
    np.testing.assert_allclose(to_np(h, res.quotients), 3.0, rtol=8 * u * (1 + 7.0 / 6.0))  # f: 0.5 -> 6.5
    assert np.all(to_np(h, res.violations) > 1.9)


# d_Y's derivative w.r.t. b = f(x + r) at a tie b = a, per sample of k outputs: +1 for |.|
# (sign(0) := +1); l1 the same per output; l2 the unit all +1 direction ones / sqrt(k); linf
# the max's tied entries share it (ones / k, the same in torch, TF and JAX); KL is smooth with
# a minimum there: 0 (its power iteration falls back instead).
def _tie_gradient(name: str, k: int) -> np.ndarray:
    return {"abs": np.ones(k), "l1": np.ones(k), "l2": np.ones(k) / np.sqrt(k), "linf": np.ones(k) / k, "kl": np.zeros(k)}[name]


# KL compares distributions over k > 1 classes: no k = 1 case.
@pytest.mark.parametrize(("name", "k"), [(n, k) for n in sorted(OUTPUT_DISTANCES) for k in (1, 3) if (n, k) != ("kl", 1)])
def test_output_distances_take_the_plus_one_subgradient_at_ties(framework: str, name: str, k: int) -> None:
    h = harness(framework)
    backend = get_backend(framework)
    distance = OUTPUT_DISTANCES[name]
    rs = np.random.default_rng(0)
    a = rs.normal(size=(4, k))
    b = a.copy()
    b[2:] += rs.normal(size=(2, k))  # rows 0, 1 tied; rows 2, 3 not
    at = h.tensor(a[:, 0] if k == 1 else a, "float64")
    shape = (4,) if k == 1 else (4, k)
    g = h.numpy(backend.grad(lambda bb: backend.namespace(bb).sum(distance(at, bb)), h.tensor(b.reshape(shape), "float64")))
    g = np.asarray(g).reshape(4, k)
    np.testing.assert_allclose(g[:2], np.tile(_tie_gradient(name, k), (2, 1)), rtol=1e-12, atol=1e-15)
    diff = b[2:] - a[2:]
    away = {"abs": np.sign(diff), "l1": np.sign(diff), "l2": diff / np.linalg.norm(diff, axis=1, keepdims=True)}
    if name in away:
        np.testing.assert_allclose(g[2:], away[name], rtol=1e-12)
    values = np.asarray(h.numpy(distance(at, h.tensor(b.reshape(shape), "float64"))))
    assert np.all(values[:2] <= 2e-12) and np.all(values[:2] >= 0)  # l2: sqrt of its floor


@pytest.mark.parametrize("d_Y", ["l2", "linf"])
def test_vector_critic_tie_steps_along_the_sum_of_its_output_gradients(framework: str, d_Y: str) -> None:
    """A k-output linear critic W at an exact tie (start orthogonal to every column): the step
    is W ones / |W ones| for l2 and linf (both of their tie subgradients are along ones)."""
    h = harness(framework)
    Wm = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.0]])
    x = np.random.default_rng(1).normal(size=(3, 4))
    d0 = np.tile([0.0, 0.0, 1.0, 0.0], (3, 1))  # W^T d0 = 0
    wt = h.tensor(Wm, "float64")
    xp = get_backend(framework).namespace(wt)
    res, _ = VALP(d_Y=d_Y, n_power=1).violations(lambda z: xp.matmul(z, wt), h.tensor(x, "float64"),
                                                 draws=Draws(h.tensor(d0, "float64"), h.tensor(np.ones(3), "float64"), None))
    want = Wm.sum(1) / np.linalg.norm(Wm.sum(1))
    np.testing.assert_allclose(h.numpy(res.r_adv), np.tile(want, (3, 1)), rtol=1e-12, atol=1e-15)
