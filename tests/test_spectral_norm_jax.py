"""Spectral normalisation of the flax critics (``norm="spectral"``): flax.linen's own
``SpectralNorm`` around every conv and dense layer, its u and sigma in ``batch_stats``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import jax_dcgan, jax_resnet, spec
from models.spec import ResNetConfig

ARCHS = {"resnet": jax_resnet, "dcgan": jax_dcgan}
TOL = 1e-2  # |sigma_max(W / sigma) - 1| after the power iterations below


def _cfg(arch: str) -> ResNetConfig:
    return ResNetConfig(critic_channels=8, arch=arch)


def _critic(arch: str, norm: str = "spectral", seed: int = 0):
    return jax_resnet.init(ARCHS[arch].Critic(_cfg(arch), norm=norm), jax.random.PRNGKey(seed))


def _x(n: int = 2, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)), jnp.float32)


def _layers(arch: str) -> dict[str, tuple[int, ...]]:
    table = spec.param_table("critic", _cfg(arch))
    return {k[: -len(".kernel")]: s for k, s in table.items() if k.endswith(".kernel")}


def _stats_path(layer: str, leaf: str) -> tuple[str, ...]:
    """Where flax SpectralNorm keeps ``leaf`` (u or sigma) of canonical ``layer`` in batch_stats."""
    *parents, name = layer.split(".")
    return (*parents, f"{name}_sn", f"{name}/kernel/{leaf}")


def _flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    return {tuple(p.key for p in path): np.array(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@functools.cache
def _jitted(module, train: bool):
    if train:
        return jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))
    return jax.jit(module.apply)  # one compilation, not op-by-op dispatch (2 CPU cores)


def _train(module, variables, x):
    """One training pass (update_stats): the scores and the variables with the new u, sigma."""
    y, upd = _jitted(module, True)(variables, x)
    return y, {**variables, **upd}


def _apply(module, variables, x):
    return _jitted(module, False)(variables, x)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_names_shapes_and_counts(arch: str) -> None:
    (pm, plain), (sm, sn) = _critic(arch, "none"), _critic(arch)
    x = _x()
    assert _apply(sm, sn, x).shape == _apply(pm, plain, x).shape == (2, 1)
    # Params: the same tree (canonical paths) and count; u (1, out) and sigma () are extra.
    assert jax.tree.map(jnp.shape, sn["params"]) == jax.tree.map(jnp.shape, plain["params"])
    assert set(plain) == {"params"} and set(sn) == {"params", "batch_stats"}
    expected = {}
    for layer, shape in _layers(arch).items():
        expected[_stats_path(layer, "u")] = (1, shape[-1])
        expected[_stats_path(layer, "sigma")] = ()
    assert {k: v.shape for k, v in _flat(sn["batch_stats"]).items()} == expected
    n_params = sum(int(np.prod(a.shape)) for a in _flat(sn["params"]).values())
    assert n_params == spec.trainable_count(spec.param_table("critic", _cfg(arch)))


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_spectral_norm(arch: str) -> None:
    module, variables = _critic(arch)
    x = _x(1)
    for _ in range(50):
        _, variables = _train(module, variables, x)
    params, stats = _flat(variables["params"]), _flat(variables["batch_stats"])
    for layer in _layers(arch):
        k = params[(*layer.split("."), "kernel")].astype(np.float64)
        top = np.linalg.svd(k.reshape(-1, k.shape[-1]), compute_uv=False)[0]
        sigma = float(stats[_stats_path(layer, "sigma")])
        assert abs(top / sigma - 1) < TOL, (layer, top, sigma)  # sigma_max(W / sigma) = 1


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_pass_takes_no_step(arch: str) -> None:
    """VALP's passes (train=False, no mutable) compute the weights of the training pass that
    just ran from the same stored u, and can store nothing."""
    module, variables = _critic(arch)
    x = _x()
    _, variables = _train(module, variables, x)
    trained, after = _train(module, variables, x)
    scores = _apply(module, variables, x)
    np.testing.assert_allclose(scores, trained, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(v, _flat(after["batch_stats"])[k])
               for k, v in _flat(variables["batch_stats"]).items())
    with pytest.raises(Exception, match="batch_stats"):  # update_stats without mutable fails loudly
        module.apply(variables, x, train=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip(arch: str) -> None:
    module, src = _critic(arch, seed=0)
    x = _x()
    for _ in range(3):
        _, src = _train(module, src, x)
    # As the trainer checkpoints: every leaf to NumPy and back into a fresh model's tree.
    saved = [np.array(a, copy=True) for a in jax.tree_util.tree_leaves(src)]
    _, fresh = _critic(arch, seed=1)
    treedef = jax.tree_util.tree_structure(fresh)
    dst = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in saved])
    assert np.array_equal(_apply(module, src, x), _apply(module, dst, x))
    (ya, a), (yb, b) = _train(module, src, x), _train(module, dst, x)
    assert np.array_equal(ya, yb)
    fa, fb = _flat(a["batch_stats"]), _flat(b["batch_stats"])
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k  # the same next u, sigma ...
    assert any(not np.array_equal(v, _flat(src["batch_stats"])[k]) for k, v in fa.items())  # ... moved


def test_gradient_and_critic_fn() -> None:
    import models

    module, variables = _critic("resnet")
    x = _x()

    def loss(params):
        return module.apply({**variables, "params": params}, x).sum()

    grads = _flat(jax.jit(jax.grad(loss))(variables["params"]))
    assert all(np.isfinite(g).all() for g in grads.values())
    assert all(np.abs(g).sum() > 0 for k, g in grads.items() if k[-1] == "kernel")
    # critic_fn on the variables alone recognises the spectral critic by its batch_stats.
    ref = _apply(module, variables, x)
    np.testing.assert_allclose(jax.jit(models.critic_fn("jax", variables))(x), ref, rtol=1e-5, atol=1e-6)
