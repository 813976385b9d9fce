"""The Keras 3 front door on the TensorFlow backend: WGANVALP.fit on a tf.data pipeline, the AL
multiplier as a non-trainable variable, and VALPCallback's statistics in History."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from valr_core import VALP  # noqa: E402
from valr_core.frontends.keras_wgan import STAT_NAMES, WGANVALP, VALPCallback  # noqa: E402

pytestmark = pytest.mark.framework("tf")


def _models() -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(0)
    gen = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    critic = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"), keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    return gen, critic


def _dataset() -> tf.data.Dataset:
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) + 2.0
    return tf.data.Dataset.from_tensor_slices(data).shuffle(64, seed=0).batch(16, drop_remainder=True).repeat()


def test_fit_on_tf_data_trains_and_logs_valp_statistics() -> None:
    gen, critic = _models()
    gan = WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=2, mode="al", K=0.0, rho=0.5, eps_max=1.0)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    g_before = [w.copy() for w in gen.get_weights()]
    history = gan.fit(_dataset(), epochs=2, steps_per_epoch=3, verbose=0, shuffle=False, callbacks=[VALPCallback()])
    logs = history.history
    # keras.io's d_loss / g_loss, and VALP's statistics under the core's names only.
    assert set(logs) == {"d_loss", "g_loss", "wdist", *STAT_NAMES}
    for key in ("d_loss", "g_loss", "wdist", "valp/mu", *STAT_NAMES):
        assert key in logs and len(logs[key]) == 2 and np.isfinite(logs[key]).all(), (key, logs)
    # K=0: every pair violates, so mu grows every critic step; the log holds its end-of-epoch value.
    assert 0 < logs["valp/mu"][0] < logs["valp/mu"][1] == pytest.approx(float(gan.mu.numpy()))
    assert logs["valp/violating_fraction"][1] > 0.5
    assert logs["valp/max_violation"][1] >= logs["valp/mean_violation"][1]
    assert any(id(v) == id(gan.mu) for v in gan.non_trainable_variables)  # saved with the weights
    assert any(not np.array_equal(a, b) for a, b in zip(gen.get_weights(), g_before, strict=True))


def test_fit_without_callback_and_config_errors() -> None:
    gen, critic = _models()
    # valr's earlier keyword names (critic=, n_critic=, c_optimizer=) stay as aliases.
    gan = WGANVALP(critic=critic, generator=gen, latent_dim=2, n_critic=1, valp=VALP(backend="tf", eps_max=1.0))
    gan.compile(c_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    assert gan.discriminator is critic and gan.discriminator_extra_steps == 1 and gan.d_optimizer is gan.c_optimizer
    logs = gan.fit(_dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False).history
    assert set(logs) == {"d_loss", "g_loss", "wdist"}
    assert float(gan.mu.numpy()) == 0.0  # squared mode: no multiplier
    with pytest.raises(TypeError, match="either"):
        WGANVALP(discriminator=critic, generator=gen, latent_dim=2, valp=VALP(), K=0.0)
    with pytest.raises(ValueError, match="n_critic"):
        WGANVALP(discriminator=critic, generator=gen, latent_dim=2, n_critic=0)
    with pytest.raises(ValueError, match="discriminator_extra_steps"):
        WGANVALP(discriminator=critic, generator=gen, latent_dim=2, discriminator_extra_steps=0)
