"""Loads the fixture critics into each framework, natively, and runs VALP on them.

The fixtures are NCHW / OIHW (torch's layout); TF and JAX get NHWC / HWIO copies and hand
results back in NCHW so every comparison happens in one layout.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from valr_core import VALP, ALState, Draws

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MLP_KEYS = ("w1", "b1", "w2", "b2")
CONV_KEYS = ("c1", "c1b", "c2", "c2b", "w", "b")
# Tiny closed-form critics for GP/LP, on (N, D) inputs: linear f(x) = x @ w; const f(x) = b
# (x unused); quad f(x) = b/2 * |x|^2 (grad b*x, so b = 0 is a zero input gradient that
# still depends on a parameter: sqrt's derivative at 0 is what would give NaN).
KEYS = {"mlp": MLP_KEYS, "conv": CONV_KEYS, "linear": ("w",), "const": ("b",), "quad": ("b",)}


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# GP/LP inputs: the last layer is scaled so that the gradient norms at the interpolates
# straddle 1 (MLP: 0.41..2.03, conv: 0.88..1.09), so LP differs from GP and both branches
# of |n - 1| are exercised.
GP_LAST_LAYER = {"mlp": ("w2", 0.15), "conv": ("w", 0.7)}


def gp_inputs(kind: str, dtype: str = "float64") -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Parameters, real, fake and alphas for GP/LP, rounded to ``dtype`` (held in float64)."""
    p = load(kind)
    name, scale = GP_LAST_LAYER[kind]
    p[name] = p[name] * scale
    real = p["x"]
    fake = np.roll(real, 1, axis=0) + p["d0"]
    alphas = np.random.default_rng(7).uniform(size=len(real))

    def rounded(a: np.ndarray) -> np.ndarray:
        return a.astype(dtype).astype(np.float64)

    return {k: rounded(v) if v.dtype.kind == "f" else v for k, v in p.items()}, rounded(real), rounded(fake), rounded(alphas)


def _to_channels_last(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


def _to_channels_first(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 1) if a.ndim == 4 else a


class Harness:
    """One framework's view of the fixtures. ``kind`` is "mlp" or "conv"."""

    framework: str
    channels_last = False

    def tensor(self, a: np.ndarray, dtype: str) -> Any: ...
    def numpy(self, t: Any) -> np.ndarray: ...
    def rng(self, seed: int) -> Any: ...

    def input(self, a: np.ndarray, dtype: str) -> Any:
        return self.tensor(_to_channels_last(a) if self.channels_last else a, dtype)

    def output(self, t: Any) -> np.ndarray:
        a = self.numpy(t)
        return _to_channels_first(a) if self.channels_last else a

    def draws(self, d0: np.ndarray, eps: np.ndarray, index: np.ndarray | None, dtype: str) -> Draws:
        return Draws(self.input(d0, dtype), self.tensor(eps, dtype), None if index is None else self.index(index))

    def index(self, index: np.ndarray) -> Any:
        return self.tensor(index, "int64")

    def gp_loss_and_grads(
        self, pen: Any, kind: str, params: dict, real: np.ndarray, fake: np.ndarray, alphas: np.ndarray | None, dtype: str,
        state: ALState | None = None, rng: Any = None,
    ) -> tuple[float, Any, dict[str, np.ndarray]]:
        """GP/LP ``pen`` on (real, fake) with fixed ``alphas`` (or drawn from ``rng``): loss, aux,
        parameter gradients in fixture layout."""
        raise NotImplementedError

    def _gp_args(self, real: np.ndarray, fake: np.ndarray, alphas: np.ndarray | None, dtype: str) -> tuple[Any, Any, Any]:
        return self.input(real, dtype), self.input(fake, dtype), None if alphas is None else self.tensor(alphas, dtype)

    def loss_and_grads(
        self, valp: VALP, kind: str, params: dict, x: np.ndarray, draws: Draws, dtype: str, state: ALState | None = None
    ) -> tuple[float, Any, dict[str, np.ndarray]]:
        """Penalty, aux (numpy-converted lazily by caller) and parameter gradients in fixture layout."""
        raise NotImplementedError


def _canon_param(name: str, a: np.ndarray) -> np.ndarray:
    """Fixture (OIHW) kernel -> HWIO for channels-last frameworks."""
    return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else a


def _uncanon_param(name: str, a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a


# --------------------------------------------------------------------------- torch
class TorchHarness(Harness):
    framework = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def tensor(self, a: np.ndarray, dtype: str) -> Any:
        return self.torch.as_tensor(np.asarray(a), dtype=getattr(self.torch, dtype))

    def numpy(self, t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()

    def rng(self, seed: int) -> Any:
        return self.torch.Generator().manual_seed(seed)

    def critic(self, kind: str, params: dict, dtype: str) -> tuple[Callable, dict]:
        torch = self.torch
        ps = {k: torch.nn.Parameter(self.tensor(params[k], dtype)) for k in KEYS[kind]}
        if kind == "mlp":
            return (lambda x: torch.tanh(x @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]), ps
        if kind == "linear":
            return (lambda x: x @ ps["w"]), ps
        if kind == "const":
            return (lambda x: ps["b"].expand(x.shape[0], 1)), ps
        if kind == "quad":
            return (lambda x: 0.5 * ps["b"] * (x * x).flatten(1).sum(1)), ps
        F = torch.nn.functional

        def conv(x: Any) -> Any:
            h = F.softplus(F.conv2d(x, ps["c1"], ps["c1b"], padding=1))
            h = F.softplus(F.conv2d(h, ps["c2"], ps["c2b"], padding=1))
            return h.mean((2, 3)) @ ps["w"] + ps["b"]

        return conv, ps

    def loss_and_grads(self, valp, kind, params, x, draws, dtype, state=None):
        critic, ps = self.critic(kind, params, dtype)
        loss, aux = valp.loss(critic, self.input(x, dtype), None, state, draws=draws)
        grads = dict(zip(ps, self.torch.autograd.grad(loss, list(ps.values()), allow_unused=True, materialize_grads=True), strict=True))
        return float(loss.detach()), aux, {k: self.numpy(g) for k, g in grads.items()}

    def gp_loss_and_grads(self, pen, kind, params, real, fake, alphas, dtype, state=None, rng=None):
        critic, ps = self.critic(kind, params, dtype)
        r, f, a = self._gp_args(real, fake, alphas, dtype)
        loss, aux = pen.loss(critic, r, f, rng, state, alphas=a)
        if loss.requires_grad:
            grads = self.torch.autograd.grad(loss, list(ps.values()), allow_unused=True, materialize_grads=True)
        else:  # the penalty does not depend on the parameters (e.g. a constant critic)
            grads = [self.torch.zeros_like(p) for p in ps.values()]
        return float(loss.detach()), aux, {k: self.numpy(g) for k, g in zip(ps, grads, strict=True)}


# --------------------------------------------------------------------------- jax
class JaxHarness(Harness):
    framework = "jax"
    channels_last = True

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

    def tensor(self, a: np.ndarray, dtype: str) -> Any:
        return self.jnp.asarray(np.asarray(a), dtype=dtype)

    def numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)

    def rng(self, seed: int) -> Any:
        return self.jax.random.key(seed)

    def critic_fn(self, kind: str) -> Callable:
        jax, jnp = self.jax, self.jnp
        if kind == "mlp":
            return lambda ps, x: jnp.tanh(x @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]
        if kind == "linear":
            return lambda ps, x: x @ ps["w"]
        if kind == "const":
            return lambda ps, x: jnp.ones((x.shape[0], 1), x.dtype) * ps["b"]
        if kind == "quad":
            return lambda ps, x: 0.5 * ps["b"] * (x * x).reshape(x.shape[0], -1).sum(1)

        def conv(ps: dict, x: Any) -> Any:
            dn = ("NHWC", "HWIO", "NHWC")
            h = jax.nn.softplus(jax.lax.conv_general_dilated(x, ps["c1"], (1, 1), "SAME", dimension_numbers=dn) + ps["c1b"])
            h = jax.nn.softplus(jax.lax.conv_general_dilated(h, ps["c2"], (1, 1), "SAME", dimension_numbers=dn) + ps["c2b"])
            return h.mean((1, 2)) @ ps["w"] + ps["b"]

        return conv

    def params(self, kind: str, params: dict, dtype: str) -> dict:
        return {k: self.tensor(_canon_param(k, params[k]), dtype) for k in KEYS[kind]}

    def loss_and_grads(self, valp, kind, params, x, draws, dtype, state=None):
        f = self.critic_fn(kind)

        def objective(ps):
            return valp.loss(lambda z: f(ps, z), self.input(x, dtype), None, state, draws=draws)

        (loss, aux), grads = self.jax.value_and_grad(objective, has_aux=True)(self.params(kind, params, dtype))
        return float(loss), aux, {k: _uncanon_param(k, np.asarray(g)) for k, g in grads.items()}

    def gp_loss_and_grads(self, pen, kind, params, real, fake, alphas, dtype, state=None, rng=None):
        f = self.critic_fn(kind)
        r, fk, a = self._gp_args(real, fake, alphas, dtype)

        def objective(ps):
            return pen.loss(lambda z: f(ps, z), r, fk, rng, state, alphas=a)

        (loss, aux), grads = self.jax.value_and_grad(objective, has_aux=True)(self.params(kind, params, dtype))
        return float(loss), aux, {k: _uncanon_param(k, np.asarray(g)) for k, g in grads.items()}


# --------------------------------------------------------------------------- tf
class TfHarness(Harness):
    framework = "tf"
    channels_last = True

    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf

    def tensor(self, a: np.ndarray, dtype: str) -> Any:
        return self.tf.constant(np.asarray(a), dtype=dtype)

    def numpy(self, t: Any) -> np.ndarray:
        return t.numpy()

    def rng(self, seed: int) -> Any:
        return self.tf.random.Generator.from_seed(seed)

    def critic(self, kind: str, params: dict, dtype: str) -> tuple[Callable, dict]:
        tf = self.tf
        ps = {k: tf.Variable(_canon_param(k, params[k]).astype(dtype)) for k in KEYS[kind]}
        if kind == "mlp":
            return (lambda x: tf.tanh(x @ ps["w1"] + ps["b1"]) @ ps["w2"] + ps["b2"]), ps
        if kind == "linear":
            return (lambda x: x @ ps["w"]), ps
        if kind == "const":
            return (lambda x: tf.ones([tf.shape(x)[0], 1], x.dtype) * ps["b"]), ps
        if kind == "quad":
            return (lambda x: 0.5 * ps["b"] * tf.reduce_sum(tf.reshape(x * x, [tf.shape(x)[0], -1]), 1)), ps

        def conv(x: Any) -> Any:
            h = tf.nn.softplus(tf.nn.conv2d(x, ps["c1"], 1, "SAME") + ps["c1b"])
            h = tf.nn.softplus(tf.nn.conv2d(h, ps["c2"], 1, "SAME") + ps["c2b"])
            return tf.reduce_mean(h, (1, 2)) @ ps["w"] + ps["b"]

        return conv, ps

    def loss_and_grads(self, valp, kind, params, x, draws, dtype, state=None):
        critic, ps = self.critic(kind, params, dtype)
        xt = self.input(x, dtype)
        with self.tf.GradientTape() as tape:
            loss, aux = valp.loss(critic, xt, None, state, draws=draws)
        grads = tape.gradient(loss, ps, unconnected_gradients=self.tf.UnconnectedGradients.ZERO)
        return float(loss), aux, {k: _uncanon_param(k, g.numpy()) for k, g in grads.items()}

    def gp_loss_and_grads(self, pen, kind, params, real, fake, alphas, dtype, state=None, rng=None):
        critic, ps = self.critic(kind, params, dtype)
        r, f, a = self._gp_args(real, fake, alphas, dtype)
        with self.tf.GradientTape() as tape:
            loss, aux = pen.loss(critic, r, f, rng, state, alphas=a)
        grads = tape.gradient(loss, ps, unconnected_gradients=self.tf.UnconnectedGradients.ZERO)
        return float(loss), aux, {k: _uncanon_param(k, g.numpy()) for k, g in grads.items()}


HARNESSES = {"torch": TorchHarness, "jax": JaxHarness, "tf": TfHarness}


def harness(framework: str) -> Harness:
    return HARNESSES[framework]()
