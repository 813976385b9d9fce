"""The Keras front door's keras.io conventions and persistence (WGANVALP, VALPCallback), and the TF
adapter's BatchNorm freezing for critics reached through a plain function.

(a) keyword-only construction with keras.io's names; (b) compile's names and docstring;
(c) built at construction; (d) .keras round trip; (e) two random streams; (f) the callback's
error; (g) statistic names; (h) BatchNorm behind a lambda over a global model."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from backends import tf_backend  # noqa: E402
from valr_core import VALP  # noqa: E402
from valr_core.frontends.keras_wgan import STAT_NAMES, WGANVALP, VALPCallback  # noqa: E402

pytestmark = pytest.mark.framework("tf")

CONFIG = {"mode": "al", "K": 0.0, "rho": 0.5, "eps_max": 1.0}


def _models(batchnorm: bool = True, inputs: bool = True) -> tuple[keras.Model, keras.Model]:
    """A tiny (generator, critic) pair, identical for every call."""
    keras.utils.set_random_seed(0)
    first = [keras.Input((2,))] if inputs else []
    gen = keras.Sequential([*first, keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    norm = [keras.layers.BatchNormalization()] if batchnorm else []
    critic = keras.Sequential([*first, keras.layers.Dense(8, activation="relu"), *norm, keras.layers.Dense(1)])
    return gen, critic


def _gan(**kwargs: object) -> WGANVALP:
    gen, critic = _models()
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=2, **{**CONFIG, **kwargs})
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), g_optimizer=keras.optimizers.Adam(1e-2))
    return gan


def _batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32) + 1.0


def _dataset() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(np.tile(_batch(), (2, 1))).batch(8).repeat()


def _z() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)


def _state(gan: WGANVALP) -> dict[str, np.ndarray]:
    return {"mu": gan.mu.numpy(), "latent": gan.latent_rng.state.numpy(), "valp": gan.valp_rng.state.numpy()}


# -- (a) keras.io's constructor ----------------------------------------------------------------
def test_keyword_only_construction_with_keras_io_names_and_aliases() -> None:
    gen, critic = _models()
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=3)
    assert gan.discriminator is critic and gan.critic is critic and gan.generator is gen
    assert gan.discriminator_extra_steps == gan.n_critic == 3
    with pytest.raises(TypeError) as info:
        WGANVALP(gen, critic, latent_dim=2)  # valr's former order
    message = str(info.value)
    assert "\n" not in message and "discriminator=" in message and "generator=" in message and "keyword" in message
    with pytest.raises(TypeError, match="keyword"):
        WGANVALP(critic, gen, latent_dim=2)  # keras.io's order, positionally
    with pytest.raises(TypeError, match="discriminator= or its alias critic="):
        WGANVALP(discriminator=critic, critic=critic, generator=gen, latent_dim=2)
    with pytest.raises(TypeError, match="discriminator_extra_steps= or its alias n_critic="):
        WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=2, n_critic=2)
    with pytest.raises(TypeError, match="generator="):
        WGANVALP(discriminator=critic, latent_dim=2)
    with pytest.raises(TypeError, match="latent_dim"):
        WGANVALP(discriminator=critic, generator=gen)


# -- (b) compile ---------------------------------------------------------------------------------
def test_compile_takes_keras_io_names_and_has_its_own_docstring() -> None:
    doc = inspect.getdoc(WGANVALP.compile)
    assert doc != inspect.getdoc(keras.Model.compile) and "d_optimizer" in doc and "g_optimizer" in doc
    gen, critic = _models()
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2)
    d_opt, g_opt = keras.optimizers.Adam(1e-3), keras.optimizers.SGD(1e-3)
    gan.compile(d_optimizer=d_opt, g_optimizer=g_opt)
    assert gan.d_optimizer is d_opt and gan.c_optimizer is d_opt and gan.g_optimizer is g_opt
    assert gan.optimizer is None  # Keras' own optimizer would be built on every weight, unused
    with pytest.raises(TypeError, match="d_optimizer= or its alias c_optimizer="):
        gan.compile(d_optimizer=d_opt, c_optimizer=d_opt, g_optimizer=g_opt)
    with pytest.raises(TypeError, match="g_optimizer"):
        gan.compile(d_optimizer=d_opt)
    with pytest.raises(TypeError, match="loss"):
        gan.compile(d_optimizer=d_opt, g_optimizer=g_opt, loss="mse")


def test_compile_accepts_keras_io_loss_functions() -> None:
    """keras.io's discriminator_loss / generator_loss give the default WGAN step; other losses
    are used (the penalty is added to d_loss_fn's value)."""

    def discriminator_loss(real_img, fake_img):
        return tf.reduce_mean(fake_img) - tf.reduce_mean(real_img)

    def generator_loss(fake_img):
        return -tf.reduce_mean(fake_img)

    runs = []
    for fns in ({}, {"d_loss_fn": discriminator_loss, "g_loss_fn": generator_loss}):
        gan = _gan()
        gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), g_optimizer=keras.optimizers.Adam(1e-2), **fns)
        runs.append(gan.train_on_batch(_batch(), return_dict=True))
    np.testing.assert_allclose([runs[1][k] for k in ("d_loss", "g_loss")], [runs[0][k] for k in ("d_loss", "g_loss")], rtol=1e-6)
    gan = _gan()
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), g_optimizer=keras.optimizers.Adam(1e-2),
                d_loss_fn=lambda real_img, fake_img: 0.0 * tf.reduce_mean(real_img), g_loss_fn=lambda fake_img: 7.0 + 0.0 * tf.reduce_mean(fake_img))
    logs = gan.train_on_batch(_batch(), return_dict=True)
    assert logs["g_loss"] == pytest.approx(7.0) and logs["d_loss"] > 0  # d_loss = 0 + penalty (K=0: positive)


# -- (c) built at construction ---------------------------------------------------------------
def test_built_at_construction_so_save_weights_works_after_fit(tmp_path: Path) -> None:
    gen, critic = _models(inputs=False)  # never called: no variables yet
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=1, **CONFIG)
    assert gan.built and gen.built and critic.built and critic.layers[1].moving_mean is not None
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), g_optimizer=keras.optimizers.Adam(1e-2))
    gan.fit(_dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    path = tmp_path / "gan.weights.h5"
    gan.save_weights(path)
    other = _gan()
    assert not np.array_equal(other(_z()).numpy(), gan(_z()).numpy())
    other.load_weights(path)
    np.testing.assert_array_equal(other(_z()).numpy(), gan(_z()).numpy())
    for key, value in _state(gan).items():
        np.testing.assert_array_equal(_state(other)[key], value, err_msg=key)


# -- (d) the .keras round trip -----------------------------------------------------------------
def test_keras_file_round_trip_restores_everything_and_resumes_exactly(tmp_path: Path) -> None:
    gan = _gan()
    gan.fit(_dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    config = gan.get_config()
    for key in ("discriminator", "generator"):  # nested models, serialised by Keras
        assert config[key]["class_name"] == "Sequential" and "config" in config[key]
    assert float(gan.mu.numpy()) > 0
    path = tmp_path / "gan.keras"
    gan.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is WGANVALP and loaded.valp == gan.valp and loaded.latent_dim == 2
    assert loaded.discriminator_extra_steps == 2 and loaded.discriminator is not gan.discriminator
    np.testing.assert_array_equal(loaded(_z()).numpy(), gan(_z()).numpy())  # the generator's output
    for key, value in _state(gan).items():  # mu and both random streams, exactly
        np.testing.assert_array_equal(_state(loaded)[key], value, err_msg=key)
    # The next step (optimiser moments, BatchNorm statistics, mu, streams) is the same step.
    logs = [m.train_on_batch(_batch(), return_dict=True) for m in (gan, loaded)]
    assert logs[0] == pytest.approx(logs[1], rel=1e-6)
    for a, b in zip(gan.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    for key, value in _state(gan).items():
        np.testing.assert_array_equal(_state(loaded)[key], value, err_msg=key)


def test_round_trip_keeps_valp_settings_and_loss_functions(tmp_path: Path) -> None:
    gen, critic = _models(batchnorm=False)
    valp = VALP(backend="tf", mode="al", rho=0.25, clip=(-3.0, 3.0), d_X="l1", n_power=2)
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2, valp=valp, seed=7)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.RMSprop(1e-3),
                d_loss_fn=hinge_d_loss, g_loss_fn=hinge_g_loss)
    gan.save(tmp_path / "gan.keras")
    loaded = keras.models.load_model(tmp_path / "gan.keras")
    assert loaded.valp == valp and loaded.seed == 7
    assert isinstance(loaded.g_optimizer, keras.optimizers.RMSprop) and loaded.g_optimizer.built
    assert loaded.d_loss_fn is hinge_d_loss and loaded.g_loss_fn is hinge_g_loss


@keras.saving.register_keras_serializable(package="valr_tests")
def hinge_d_loss(real_img, fake_img):
    return keras.ops.mean(keras.ops.relu(1.0 - real_img)) + keras.ops.mean(keras.ops.relu(1.0 + fake_img))


@keras.saving.register_keras_serializable(package="valr_tests")
def hinge_g_loss(fake_img):
    return -keras.ops.mean(fake_img)


# -- (e) two random streams ------------------------------------------------------------------
class _Recorder:
    """A VALP stand-in that records the radii each call draws from the VALP stream."""

    def __init__(self, valp: VALP) -> None:
        self.valp, self.mode, self.eps = valp, valp.mode, []

    def pair_loss(self, *args, **kwargs):
        value, aux = self.valp.pair_loss(*args, **kwargs)
        self.eps.append(aux.violations.eps.numpy())
        return value, aux

    def update(self, *args):
        return self.valp.update(*args)


def test_latents_and_valp_draws_come_from_separate_streams() -> None:
    a, b = _gan(), _gan(latent_seed=12345)
    assert a.latent_rng is not a.valp_rng
    assert not np.array_equal(a.latent_rng.state.numpy(), a.valp_rng.state.numpy())
    np.testing.assert_array_equal(a.valp_rng.state.numpy(), b.valp_rng.state.numpy())
    assert not np.array_equal(a.latent_rng.state.numpy(), b.latent_rng.state.numpy())
    # Another latent seed changes the latents (so the fakes) but not one of VALP's draws.
    recorders = []
    for gan in (a, b):
        recorders.append(_Recorder(gan.valp))
        gan.valp = recorders[-1]
        gan.compile(d_optimizer=keras.optimizers.Adam(1e-2), g_optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
        gan.train_on_batch(_batch())
    assert len(recorders[0].eps) == 2
    for ea, eb in zip(recorders[0].eps, recorders[1].eps, strict=True):
        np.testing.assert_array_equal(ea, eb)
    np.testing.assert_array_equal(a.valp_rng.state.numpy(), b.valp_rng.state.numpy())
    assert not np.array_equal(a.generator(_z()).numpy(), b.generator(_z()).numpy())
    # Both streams advanced, and their variable mirrors (what Keras saves) follow them.
    for gan in (a, b):
        for rng, mirror in ((gan.latent_rng, gan.latent_rng_state), (gan.valp_rng, gan.valp_rng_state)):
            np.testing.assert_array_equal(mirror.numpy(), rng.state.numpy())
    assert not np.array_equal(a.valp_rng.state.numpy(), _gan().valp_rng.state.numpy())


def test_seed_policy_matches_the_trainers() -> None:
    seeds = pytest.importorskip("train.seeds")
    gan = _gan(seed=3)
    assert gan.latent_seed == seeds.stream_seed(3, "latents") and gan.valp_seed == seeds.stream_seed(3, "penalty")


# -- (f) the callback on a model without VALP -------------------------------------------------
def test_callback_refuses_a_model_without_valp_clearly() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="VALPCallback needs a model .*valp_stats.*Sequential"):
        model.fit(_batch(), _batch()[:, :1], epochs=1, verbose=0, shuffle=False, callbacks=[VALPCallback()])


# -- (g) statistic names -----------------------------------------------------------------------
def test_logged_names_are_the_cores_statistic_names() -> None:
    x = tf.constant(_batch())
    _, aux = VALP(backend="tf", mode="al", eps_max=1.0).loss(lambda v: tf.reduce_sum(v, 1), x, tf.random.Generator.from_seed(0),
                                                VALP(mode="al").init_state())
    assert set(STAT_NAMES) == set(aux.stats)
    gan = _gan()
    logs = gan.fit(_dataset(), epochs=2, steps_per_epoch=2, verbose=0, shuffle=False, callbacks=[VALPCallback()]).history
    assert set(logs) == {"d_loss", "g_loss", "wdist", *STAT_NAMES}
    assert logs["valp/mu"][-1] == pytest.approx(float(gan.mu.numpy()))
    batch_logs: list[dict] = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    gan.fit(_dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False, callbacks=[VALPCallback(), probe])
    assert set(STAT_NAMES) <= set(batch_logs[0]) and {"d_loss", "g_loss"} <= set(batch_logs[0])


# -- (h) BatchNorm reached through a plain function ------------------------------------------
GLOBAL_CRITIC: keras.Model | None = None


def _bn_critic() -> tuple[keras.Model, keras.layers.BatchNormalization]:
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8), keras.layers.BatchNormalization(momentum=0.5), keras.layers.Dense(1)])
    net(tf.constant(_batch()), training=True)
    return net, net.layers[1]


def _moving(bn: keras.layers.BatchNormalization) -> list[np.ndarray]:
    return [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]


def test_batchnorm_behind_a_lambda_over_a_global_model_is_frozen_with_a_warning() -> None:
    global GLOBAL_CRITIC
    GLOBAL_CRITIC, bn = _bn_critic()
    before = _moving(bn)
    x = tf.constant(_batch())
    valp = VALP(backend="tf", n_power=2, eps_max=1.0)
    try:
        with pytest.warns(RuntimeWarning, match="freeze="):
            with tf.GradientTape() as tape:
                loss, _ = valp.loss(lambda v: GLOBAL_CRITIC(v, training=True), x, tf.random.Generator.from_seed(0))
        grads = tape.gradient(loss, GLOBAL_CRITIC.trainable_variables)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
        for a, b in zip(_moving(bn), before, strict=True):
            np.testing.assert_array_equal(a, b)
        # Inside tf.function as well (the warning comes when tracing).
        step = tf.function(lambda v, g: valp.loss(lambda u: GLOBAL_CRITIC(u, training=True), v, g)[0])
        with pytest.warns(RuntimeWarning, match="freeze="):
            step(x, tf.random.Generator.from_seed(1))
        for a, b in zip(_moving(bn), before, strict=True):
            np.testing.assert_array_equal(a, b)
        GLOBAL_CRITIC(x, training=True)  # an ordinary pass still updates them
        assert not np.array_equal(_moving(bn)[0], before[0])
    finally:
        GLOBAL_CRITIC = None


def test_batchnorm_behind_an_attribute_is_frozen_and_explicit_forms_do_not_warn() -> None:
    net, bn = _bn_critic()
    before = _moving(bn)
    x = tf.constant(_batch())
    holder = type("Holder", (), {})()
    holder.net = net

    def hidden(v):
        return holder.net(v, training=True)

    with pytest.warns(RuntimeWarning, match="freeze="):
        VALP(backend="tf", eps_max=1.0).loss(hidden, x, tf.random.Generator.from_seed(0))
    for a, b in zip(_moving(bn), before, strict=True):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        VALP(backend="tf", eps_max=1.0).loss(hidden, x, tf.random.Generator.from_seed(0), freeze=net)  # said explicitly
        VALP(backend="tf", eps_max=1.0).loss(lambda v: net(v, training=True), x, tf.random.Generator.from_seed(0))  # in the closure
        VALP(backend="tf", eps_max=1.0).loss(net, x, tf.random.Generator.from_seed(0))
    for a, b in zip(_moving(bn), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batchnorm_inside_a_custom_layer_is_frozen() -> None:
    """The snapshot uses the public, recursive ``non_trainable_variables`` (not Keras' private
    ``_flatten_layers``), so a BatchNorm held by a custom layer's attribute is found too."""

    class Block(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.norm = keras.layers.Dense(4), keras.layers.BatchNormalization()

        def call(self, v, training=False):
            return self.norm(self.dense(v), training=training)

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((2,)), Block(), keras.layers.Dense(1)])
    x = tf.constant(_batch())
    net(x, training=True)
    bn = net.layers[0].norm
    before = _moving(bn)
    VALP(backend="tf", eps_max=1.0).loss(net, x, tf.random.Generator.from_seed(0))
    for a, b in zip(_moving(bn), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert "._flatten_layers(" not in inspect.getsource(tf_backend)
