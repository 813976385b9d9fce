"""``pair_loss``: the one call per WGAN critic step that the trainers and the Keras front door
share. VALP on concat([real, fake]), GP/LP at interpolates, equal to the plain ``loss`` calls
on the same draws; unequal batches refused once, here."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import harness
from valr_core import GP, LP, VALP, ALState


def _linear(h, w: np.ndarray):
    wt = h.tensor(w, "float64")
    if h.framework == "tf":
        import tensorflow as tf

        return lambda x: tf.linalg.matvec(x, wt)
    return lambda x: x @ wt


def _pair(framework: str):
    rs = np.random.default_rng(5)
    h = harness(framework)
    real, fake, w = rs.normal(size=(6, 4)), rs.normal(size=(6, 4)), rs.normal(size=4)
    return h, h.tensor(real, "float64"), h.tensor(fake, "float64"), _linear(h, w), real, fake


def test_valp_pair_loss_is_loss_on_the_concatenation(framework: str) -> None:
    h, real, fake, critic, real_np, fake_np = _pair(framework)
    valp = VALP(mode="al", K=0.5, eps_min=0.5, eps_max=2.0)
    state = ALState(h.tensor(np.float64(0.3), "float64"))
    draws, _ = valp.pair_draws(real, fake, h.rng(0))
    got, aux = valp.pair_loss(critic, real, fake, None, state, draws=draws)
    want, want_aux = valp.loss(critic, h.tensor(np.concatenate([real_np, fake_np]), "float64"), None, state, draws=draws)
    np.testing.assert_allclose(h.numpy(got), h.numpy(want), rtol=1e-12)
    assert set(aux.stats) == set(want_aux.stats) and "valp/mu" in aux.stats
    assert h.numpy(aux.violations.violations).shape == (12,)  # both batches regularised


@pytest.mark.parametrize("cls", [GP, LP])
def test_gradient_penalty_pair_loss_is_loss_at_interpolates(framework: str, cls: type) -> None:
    h, real, fake, critic, _, _ = _pair(framework)
    pen = cls()
    alphas, _ = pen.pair_draws(real, fake, h.rng(1))
    got, aux = pen.pair_loss(critic, real, fake, draws=alphas)
    want, _ = pen.loss(critic, real, fake, alphas=alphas)
    np.testing.assert_allclose(h.numpy(got), h.numpy(want), rtol=1e-12)
    assert h.numpy(alphas).shape == (6,) and f"{cls.prefix}/mean_grad_norm" in aux.stats


@pytest.mark.parametrize("cls", [VALP, GP])
def test_unequal_batches_are_refused(framework: str, cls: type) -> None:
    h, real, _, critic, _, _ = _pair(framework)
    short = h.tensor(np.zeros((5, 4)), "float64")
    with pytest.raises(ValueError, match=r"real and fake batches must have equal shapes, got \(6, 4\) and \(5, 4\)"):
        cls().pair_loss(critic, real, short, h.rng(0))
