"""NaN never hides (SPEC "NaN"): a non-finite x or critic output gives a non-finite penalty, in
every framework, eagerly and compiled (jax.jit, tf.function; torch runs eagerly here).

The bug this guards: under jax.jit (where the input check cannot read values) a NaN row of x
made its pair's d_X NaN, the dropped-pair rule (d_X not finite -> dropped) removed it, and the
penalty came out finite (1522.7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.harness import harness
from valr_core import VALP, Draws, get_backend


def _compiled(framework: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """``fn`` compiled: jax.jit or tf.function; None for torch (checked eagerly only: a
    torch.compile of the whole penalty takes minutes on a 2-core machine)."""
    if framework == "jax":
        import jax

        return jax.jit(fn)
    if framework == "tf":
        import tensorflow as tf

        return tf.function(fn)
    return None


def _penalties(h: Any, valp: VALP, critic: Callable[[Any], Any], x: Any, draws: Draws | None = None) -> dict[str, float]:
    """The penalty, eager and (where the framework compiles) compiled, as floats."""

    rng = h.rng(0)  # outside: tf.function may not create a tf.random.Generator's variable

    def run(z: Any) -> Any:
        state = valp.init_state(z) if valp.mode == "al" else None
        if draws is not None:
            return valp.loss(critic, z, None, state, draws=draws)[0]
        return valp.loss(critic, z, rng, state)[0]

    out = {"eager": float(h.numpy(run(x)))}
    compiled = _compiled(h.framework, run)
    if compiled is not None:
        out["compiled"] = float(h.numpy(compiled(x)))
    return out


def _data(n: int = 16, dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.default_rng(0)
    return rs.uniform(-1, 1, (n, dim)), 3 * rs.normal(size=dim)


def _linear(h: Any, w: np.ndarray, mask: np.ndarray | None = None) -> Callable[[Any], Any]:
    """f(z) = z @ w (times a per-row mask: NaN rows of the output)."""
    wt = h.tensor(w, "float64")
    mt = None if mask is None else h.tensor(mask, "float64")
    xp = get_backend(h.framework).namespace(wt)

    def f(z: Any) -> Any:
        y = xp.sum(z * wt, axis=1)
        return y if mt is None else y * mt

    return f


SETTINGS = {
    "paper": {},
    "clip": {"clip": (-1.0, 1.0)},  # the clipping branch of the dropped-pair rule
    "half-batch": {"fraction": 0.5},  # the NaN row may be outside the regularised subset
    "max-al": {"reduction": "max", "mode": "al"},
    "linf": {"d_X": "linf"},  # eq. 18's branch of the rule
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_x_gives_a_non_finite_penalty(framework: str, setting: str, bad: float) -> None:
    """Input checks off: nothing raises, so the value itself must carry the NaN."""
    h = harness(framework)
    x, w = _data()
    x[3, 1] = bad
    valp = VALP(check_finite=False, **SETTINGS[setting])
    values = _penalties(h, valp, _linear(h, w), h.tensor(x, "float64"))
    assert all(math.isnan(v) for v in values.values()), values
    # The same batch without the bad entry is finite: the NaN is the input's, not VALP's.
    x[3, 1] = 0.5
    values = _penalties(h, valp, _linear(h, w), h.tensor(x, "float64"))
    assert all(math.isfinite(v) for v in values.values()), values


def test_nan_x_with_input_checks_raises_or_is_nan_never_finite(framework: str) -> None:
    """Default VALP: eagerly the check raises; jax.jit cannot read values, so the penalty is
    NaN; tf.function asserts when the graph runs."""
    h = harness(framework)
    x, w = _data()
    x[3, 1] = math.nan
    valp = VALP()
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        valp.loss(_linear(h, w), h.tensor(x, "float64"), h.rng(0))
    rng = h.rng(0)
    compiled = _compiled(framework, lambda z: valp.loss(_linear(h, w), z, rng)[0])
    if framework == "jax":
        assert math.isnan(float(compiled(h.tensor(x, "float64"))))
    elif framework == "tf":
        import tensorflow as tf

        with pytest.raises(tf.errors.InvalidArgumentError, match="x contains NaN or Inf"):
            compiled(h.tensor(x, "float64"))


@pytest.mark.parametrize("where", ["f(x)", "f(x + r)"])
def test_nan_critic_outputs_give_a_nan_penalty(framework: str, where: str) -> None:
    """Critic outputs are not checked up front: a NaN output (at x, or only at the perturbed
    point) reaches the penalty."""
    h = harness(framework)
    x, w = _data()
    if where == "f(x)":
        mask = np.ones(len(x))
        mask[5] = math.nan
        critic = _linear(h, w, mask)
    else:
        # sqrt(4 - z_0^2): finite on the data (|x_0| <= 1), NaN once r_adv moves z_0 past 2.
        wt = h.tensor(w, "float64")
        xp = get_backend(framework).namespace(wt)
        critic = lambda z: xp.sum(z * wt, axis=1) + xp.sqrt(4.0 - z[:, 0] * z[:, 0])  # noqa: E731
    valp = VALP(eps_min=5.0, eps_max=5.0, n_power=0)  # r_adv = 5 * d0: |r_0| > 2 for some rows
    d0 = np.zeros_like(x)
    d0[:, 0] = 1.0
    draws = Draws(h.tensor(d0, "float64"), h.tensor(np.full(len(x), 5.0), "float64"), None)
    values = _penalties(h, valp, critic, h.tensor(x, "float64"), draws)
    assert all(math.isnan(v) for v in values.values()), values


def test_a_dropped_pair_never_swallows_a_nan_output(framework: str) -> None:
    """Rows at the clip bound pushed outward have d_X = 0 and are dropped; when the critic's
    output on such a row is NaN the penalty is NaN (it used to be dropped, hence finite)."""
    h = harness(framework)
    w = np.abs(_data()[1]) + 0.1
    x = np.zeros((4, 5))
    x[:2] = 1.0  # at the bound: x + r_adv clips back to x
    draws = Draws(h.tensor(np.tile(w, (4, 1)), "float64"), h.tensor(np.full(4, 2.0), "float64"), None)
    valp = VALP(K=0.0, clip=(-1.0, 1.0), n_power=0)
    finite = _penalties(h, valp, _linear(h, w), h.tensor(x, "float64"), draws)
    assert all(math.isfinite(v) and v > 0 for v in finite.values()), finite
    res, _ = valp.violations(_linear(h, w), h.tensor(x, "float64"), draws=draws)
    np.testing.assert_array_equal(np.asarray(h.numpy(res.kept)), [False, False, True, True])
    mask = np.array([math.nan, 1.0, 1.0, 1.0])  # NaN on a dropped row
    values = _penalties(h, valp, _linear(h, w, mask), h.tensor(x, "float64"), draws)
    assert all(math.isnan(v) for v in values.values()), values
    res, _ = valp.violations(_linear(h, w, mask), h.tensor(x, "float64"), draws=draws)
    q = np.asarray(h.numpy(res.quotients))
    assert math.isnan(q[0]) and bool(np.asarray(h.numpy(res.kept))[0])  # not dropped
    assert q[1] == 0.0 and not bool(np.asarray(h.numpy(res.kept))[1])  # the finite one still is
