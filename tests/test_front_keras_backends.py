"""Keras 3 on its JAX and torch backends: what works (VALP on a Keras critic's tensors) and what
does not (WGANVALP's train_step, which raises a clear NotImplementedError). Each backend runs in
a subprocess (KERAS_BACKEND is read once, at import); needs Keras, JAX and torch: parity env."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.parity, pytest.mark.framework("torch", "tf", "jax")]
REPO = Path(__file__).resolve().parents[1]

_COMMON = """
import keras, numpy as np
from valr_core.frontends.keras_wgan import WGANVALP
keras.utils.set_random_seed(0)
critic = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
gen = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
for args, kwargs in (((), dict(discriminator=critic, generator=gen, latent_dim=2)), ((gen, critic), dict(latent_dim=2))):
    try:
        WGANVALP(*args, **kwargs)
        raise SystemExit("WGANVALP did not refuse a non-TensorFlow backend")
    except NotImplementedError as e:
        assert "TensorFlow backend" in str(e) and BACKEND in str(e), e
x_np = np.random.default_rng(0).normal(size=(6, 2)).astype("float32")
"""

_JAX = """
import jax, jax.numpy as jnp
from valr_core import VALP
valp = VALP(backend="jax", K=0.0)
tv, ntv = [v.value for v in critic.trainable_variables], [v.value for v in critic.non_trainable_variables]
def penalty(tv):
    f = lambda z: critic.stateless_call(tv, ntv, z, training=True)[0]
    return valp.loss(f, jnp.asarray(x_np), jax.random.key(0))[0]
value, grads = jax.jit(jax.value_and_grad(penalty))(tv)
assert float(value) > 0 and all(bool(jnp.isfinite(g).all()) for g in grads) and any(float(jnp.abs(g).sum()) > 0 for g in grads)
print("ok", float(value))
"""

_TORCH = """
import torch
from valr_core.frontends.torch_module import VALPModule
valp = VALPModule(K=0.0)
loss = valp(critic, torch.tensor(x_np))
loss.backward()
grads = [v.value.grad for v in critic.trainable_variables]
assert float(loss) > 0 and all(g is not None and torch.isfinite(g).all() for g in grads)
print("ok", float(loss))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_backend_penalty_works_and_wgan_model_refuses_clearly(backend: str, tmp_path: Path) -> None:
    code = f"BACKEND = {backend!r}\n" + _COMMON + (_JAX if backend == "jax" else _TORCH)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO), "KERAS_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
