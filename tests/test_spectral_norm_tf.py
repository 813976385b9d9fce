"""Spectral normalisation of the Keras critics (``norm="spectral"``): Keras'
``SpectralNormalization`` around every conv and dense layer, its u a non-trainable weight."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import spec, tf_dcgan, tf_resnet  # noqa: E402
from models.spec import ResNetConfig  # noqa: E402

ARCHS = {"resnet": tf_resnet, "dcgan": tf_dcgan}
TOL = 1e-2  # |sigma_max(kernel) - 1| after the power iterations below


def _cfg(arch: str) -> ResNetConfig:
    return ResNetConfig(critic_channels=8, arch=arch)


def _critic(arch: str, norm: str = "spectral", seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return ARCHS[arch].build_critic(_cfg(arch), norm=norm)


def _x(n: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _layers(arch: str) -> dict[str, tuple[int, ...]]:
    table = spec.param_table("critic", _cfg(arch))
    return {k[: -len(".kernel")]: s for k, s in table.items() if k.endswith(".kernel")}


def _model_state(model: keras.Model) -> dict[str, np.ndarray]:
    """What the TF trainer checkpoints for a critic: the canonical variables plus SN's u."""
    named = {n: tf_resnet._variable(model, n) for n in spec.param_table("critic", model.valr_cfg)}
    named |= tf_resnet.sn_variables(model)
    return {k: np.array(v.numpy()) for k, v in named.items()}


def _train_passes(model: keras.Model, x: np.ndarray, n: int) -> None:
    step = tf.function(lambda a: model(a, training=True), autograph=False)
    for _ in range(n):
        step(x)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_names_shapes_and_counts(arch: str) -> None:
    plain, sn = _critic(arch, "none"), _critic(arch)
    x = _x()
    assert sn(x).shape == plain(x).shape == (2, 1)
    layers = _layers(arch)
    n_params = spec.trainable_count(spec.param_table("critic", _cfg(arch)))
    for m in (plain, sn):
        assert sum(int(np.prod(w.shape)) for w in m.trainable_weights) == n_params
    # The canonical variables are exactly the trainable ones (what the trainer's Adam updates).
    canonical = [tf_resnet._variable(sn, n) for n in spec.param_table("critic", _cfg(arch))]
    assert {id(v) for v in canonical} == {id(v) for v in sn.trainable_weights}
    u = tf_resnet.sn_variables(sn)
    assert {k: tuple(v.shape) for k, v in u.items()} == {f"{k}.sn_u": (1, s[-1]) for k, s in layers.items()}
    assert {id(v) for v in u.values()} == {id(v) for v in sn.non_trainable_weights}
    assert tf_resnet.sn_variables(plain) == {} and plain.non_trainable_weights == []
    for name in layers:  # the wrapper carries the canonical name, the inner layer keeps it
        assert tf_resnet.inner_layer(sn, name).name == name
        assert isinstance(sn.get_layer(name), keras.layers.SpectralNormalization)


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_spectral_norm(arch: str) -> None:
    critic = _critic(arch)
    # Keras normalises the kernel variable in place in every training=True call.
    _train_passes(critic, _x(1), 150)
    for layer in _layers(arch):
        k = tf_resnet._variable(critic, f"{layer}.kernel").numpy()
        top = np.linalg.svd(k.reshape(-1, k.shape[-1]).astype(np.float64), compute_uv=False)[0]
        assert abs(top - 1) < TOL, (layer, top)


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_pass_leaves_state(arch: str) -> None:
    """VALP's passes call the model without ``training``: neither u nor the kernel may move."""
    critic, x = _critic(arch), _x()
    critic(x, training=True)
    before = _model_state(critic)
    critic(x)
    critic(x, training=False)
    tf.function(lambda a: critic(a), autograph=False)(x)
    after = _model_state(critic)
    assert all(np.array_equal(v, after[k]) for k, v in before.items())
    critic(x, training=True)
    assert any(not np.array_equal(v, _model_state(critic)[k]) for k, v in before.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip(arch: str) -> None:
    src, x = _critic(arch, seed=0), _x()
    _train_passes(src, x, 3)
    saved = _model_state(src)
    dst = _critic(arch, seed=1)
    named = {n: tf_resnet._variable(dst, n) for n in spec.param_table("critic", dst.valr_cfg)}
    for k, v in (named | tf_resnet.sn_variables(dst)).items():
        v.assign(saved[k])
    assert np.array_equal(src(x), dst(x))
    assert np.array_equal(src(x, training=True), dst(x, training=True))  # one step each
    a, b = _model_state(src), _model_state(dst)
    for k in saved:
        assert np.array_equal(a[k], b[k]), k  # the same next u (and in-place normalised kernel)
    assert any(not np.array_equal(a[k], saved[k]) for k in saved)
