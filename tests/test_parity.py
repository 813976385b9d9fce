"""Cross-framework parity: the same VALP on the same weights and draws in torch, TF and JAX,
compared with each other directly (run by the tox `parity` env, which has all three)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.harness import gp_inputs, harness, load
from valr_core import GP, LP, VALP, ALState

pytestmark = pytest.mark.parity
FRAMEWORKS = ("torch", "tf", "jax")


def l2_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _results(kind: str, dtype: str, valp: VALP, mu: float | None = None) -> dict:
    """Per framework: loss, r_adv, violations, gradients and (for eps_scale="auto") the data scale."""
    fx = load(kind)
    out = {}
    for fw in FRAMEWORKS:
        h = harness(fw)
        draws = h.draws(fx["d0"], fx["eps"], None, dtype)
        state = None if mu is None else ALState(h.tensor(np.asarray(mu), dtype))
        loss, aux, grads = h.loss_and_grads(valp, kind, fx, fx["x"], draws, dtype, state)
        scale = aux.violations.scale
        out[fw] = {"loss": loss, "r_adv": h.output(aux.violations.r_adv), "L": h.numpy(aux.violations.violations), "grads": grads,
                   "scale": None if scale is None else float(h.numpy(scale))}
    return out


@pytest.mark.parametrize(("dtype", "tol", "grad_tol"), [("float64", 1e-10, 1e-9), ("float32", 2e-5, 1e-4)])
@pytest.mark.parametrize("mode", ["squared", "al"])
def test_conv_critic_agrees_across_frameworks(dtype: str, tol: float, grad_tol: float, mode: str) -> None:
    res = _results("conv", dtype, VALP(mode=mode, rho=0.05), mu=0.3 if mode == "al" else None)
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        np.testing.assert_allclose(res[a]["loss"], res[b]["loss"], rtol=tol, err_msg=f"{a} vs {b}")
        np.testing.assert_allclose(res[a]["r_adv"], res[b]["r_adv"], rtol=tol, atol=tol, err_msg=f"{a} vs {b}")
        for name in res[a]["grads"]:
            assert l2_rel(res[a]["grads"][name], res[b]["grads"][name]) < grad_tol, f"{name}: {a} vs {b}"


@pytest.mark.parametrize(("dtype", "tol", "grad_tol"), [("float64", 1e-10, 1e-9), ("float32", 2e-5, 1e-4)])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_eps_scale_auto_agrees_across_frameworks_and_with_the_reference(dtype: str, tol: float, grad_tol: float, kind: str) -> None:
    """eps_scale="auto": the data scale (median pairwise distance / 40, via each framework's
    Gram matrix and sort), the radii and xi it scales, the penalty and its gradients agree in
    torch, TF and JAX, and with the float64 NumPy reference (direct differences, np.median)."""
    from tests import reference as ref

    res = _results(kind, dtype, VALP(eps_scale="auto", K=0.5, mode="al", rho=0.05), mu=0.3)
    fx = load(kind)
    x = fx["x"].astype(dtype).astype(np.float64)
    want = ref.data_scale(x)
    assert want < 0.5  # the fixtures are far from CIFAR's scale: the radii really change
    for fw in FRAMEWORKS:
        np.testing.assert_allclose(res[fw]["scale"], want, rtol=tol, err_msg=fw)
    # float32 tanh MLP: TF's oneDNN tanh is an approximation (tests/test_valp_reference.py: up to
    # 1.8e-4 from float64), hence 25x (loss) and 10x (gradients) there; exact in float64 anyway.
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        np.testing.assert_allclose(res[a]["loss"], res[b]["loss"], rtol=tol * (25 if kind == "mlp" else 1), err_msg=f"{a} vs {b}")
        np.testing.assert_allclose(res[a]["r_adv"], res[b]["r_adv"], rtol=tol, atol=tol, err_msg=f"{a} vs {b}")
        for name in res[a]["grads"]:
            assert l2_rel(res[a]["grads"][name], res[b]["grads"][name]) < grad_tol * (10 if kind == "mlp" else 1), f"{name}: {a} vs {b}"
    if dtype == "float64":
        p = {k: v.astype(np.float64) for k, v in fx.items()}
        ref_out = ref.valp(ref.MLP if kind == "mlp" else ref.CONV, p, p["x"], p["d0"], p["eps"], K=0.5, mode="al", rho=0.05,
                           mu=0.3, eps_scale="auto")
        assert ref_out["penalty"] > 0
        np.testing.assert_allclose(res["torch"]["loss"], ref_out["penalty"], rtol=1e-10)
        np.testing.assert_allclose(res["jax"]["r_adv"], ref_out["r_adv"], rtol=1e-10, atol=1e-12)


def test_resnet_critic_penalty_agrees_across_frameworks() -> None:
    """The converted WGAN-GP ResNet critic (models/) gives the same VALP penalty everywhere."""
    import jax.numpy as jnp
    import tensorflow as tf
    import torch

    import models
    from tests.test_models import SMALL, _converted
    from valr_core import Draws

    nets = _converted("critic")
    rs = np.random.default_rng(5)
    x = rs.uniform(-1, 1, size=(6, 32, 32, 3)).astype(np.float32)  # NHWC
    d0 = rs.uniform(-0.5, 0.5, size=x.shape).astype(np.float32)
    eps = rs.uniform(0.1, 10.0, size=6).astype(np.float32)
    valp = VALP(K=0.0, clip=(-1.0, 1.0))  # K=0: every quotient counts, so the penalty is > 0
    nchw = (0, 3, 1, 2)
    losses = {}
    torch_x = torch.from_numpy(x.transpose(nchw).copy())
    d = Draws(torch.from_numpy(d0.transpose(nchw).copy()), torch.from_numpy(eps), None)
    losses["torch"] = float(valp.loss(models.critic_fn("torch", nets["torch"].obj), torch_x, draws=d)[0].detach())
    d = Draws(tf.constant(d0), tf.constant(eps), None)
    losses["tf"] = float(valp.loss(models.critic_fn("tf", nets["tf"].obj), tf.constant(x), draws=d)[0])
    d = Draws(jnp.asarray(d0), jnp.asarray(eps), None)
    losses["jax"] = float(valp.loss(models.critic_fn("jax", nets["jax"].obj), jnp.asarray(x), draws=d)[0])
    assert losses["torch"] > 0, "the comparison needs a positive penalty"
    assert SMALL is not None
    for fw in ("tf", "jax"):
        np.testing.assert_allclose(losses[fw], losses["torch"], rtol=1e-4, err_msg=fw)


@pytest.mark.parametrize(("dtype", "tol", "grad_tol"), [("float64", 1e-10, 1e-10), ("float32", 2e-5, 1e-4)])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("penalty", ["gp", "lp"])
def test_gradient_penalties_agree_across_frameworks(dtype: str, tol: float, grad_tol: float, kind: str, penalty: str) -> None:
    """GP and LP on the same weights, real/fake batches and alphas in torch, TF and JAX."""
    p, real, fake, alphas = gp_inputs(kind)
    pen = (GP if penalty == "gp" else LP)(mode="al", rho=0.05)
    res = {}
    for fw in FRAMEWORKS:
        h = harness(fw)
        state = ALState(h.tensor(np.asarray(0.3), dtype))
        loss, aux, grads = h.gp_loss_and_grads(pen, kind, p, real, fake, alphas, dtype, state)
        res[fw] = {"loss": loss, "norms": h.numpy(aux.norms), "grads": grads}
    scale = max(np.linalg.norm(g) for g in res["torch"]["grads"].values())
    for a, b in itertools.combinations(FRAMEWORKS, 2):
        np.testing.assert_allclose(res[a]["loss"], res[b]["loss"], rtol=tol, err_msg=f"{a} vs {b}")
        np.testing.assert_allclose(res[a]["norms"], res[b]["norms"], rtol=tol, err_msg=f"{a} vs {b}")
        for name, g in res[b]["grads"].items():
            # the output bias's gradient is 0: measure it against the whole gradient's size
            err = np.linalg.norm(res[a]["grads"][name] - g) / max(np.linalg.norm(g), 1e-6 * scale)
            assert err < grad_tol, f"{name}: {a} vs {b}: {err}"
