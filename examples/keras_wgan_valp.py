"""WGAN-VALP on 2-D data with the Keras 3 front door: ``WGANVALP.fit`` on a ``tf.data`` pipeline.

A generator learns 8 Gaussians; after each epoch a callback prints the critic's estimate
E f(real) - E f(fake) on fixed evaluation sets next to the exact W1 between those sets, with
VALP's statistics as ``VALPCallback`` logs them (the core's names: ``valp/mean_violation``, ...).
Needs Keras' TensorFlow backend (the default when TensorFlow is installed).

    python -m examples.keras_wgan_valp --steps 300     # or: python examples/keras_wgan_valp.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

if __package__:  # python -m examples.keras_wgan_valp, or imported
    from .common import eight_gaussians, exact_w1, parse_args, report
else:  # python examples/keras_wgan_valp.py: common.py is beside this file, on sys.path
    from common import eight_gaussians, exact_w1, parse_args, report


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    # The settings first: a bad value is refused before TensorFlow loads (and prints its notices).
    args = parse_args(__doc__, argv)

    import keras
    import tensorflow as tf

    from valr_core.frontends.keras_wgan import WGANVALP, VALPCallback

    def mlp(n_in: int, n_out: int, hidden: int = 64) -> keras.Model:
        return keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(n_out)])

    class W1Monitor(keras.callbacks.Callback):
        """Critic estimate vs exact W1 on fixed evaluation sets, after every epoch; listed after
        VALPCallback, it finds VALP's statistics in the epoch's logs."""

        def __init__(self, real: np.ndarray, z: np.ndarray, every: int) -> None:
            super().__init__()
            self.real, self.z, self.every, self.history = real, z, every, []

        def evaluate(self, step: int, logs: dict[str, Any]) -> None:
            gan = self.model
            fake = gan.generator(self.z, training=False).numpy()
            estimate = float(np.mean(gan.discriminator(self.real, training=False)) - np.mean(gan.discriminator(fake, training=False)))
            self.history.append(report(step, estimate, exact_w1(self.real, fake), {**logs, "valp/mu": float(gan.mu.numpy())}))

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.evaluate(0, {})

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.evaluate((epoch + 1) * self.every, logs or {})

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = eight_gaussians(rng, 20_000)
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(20_000, seed=args.seed).batch(args.batch, drop_remainder=True).repeat()

    gan = WGANVALP(discriminator=mlp(2, 1), generator=mlp(2, 2), latent_dim=2, discriminator_extra_steps=args.n_critic,
                   seed=args.seed, mode="al", rho=args.rho, xi=1.0, eps_min=args.eps_min, eps_max=args.eps_max)
    gan.compile(d_optimizer=keras.optimizers.Adam(args.lr_critic, beta_1=0.5, beta_2=0.9),
                g_optimizer=keras.optimizers.Adam(args.lr_gen, beta_1=0.5, beta_2=0.9))
    every = min(args.eval_every, args.steps)
    monitor = W1Monitor(eight_gaussians(rng, 512), rng.standard_normal((512, 2)).astype(np.float32), every)
    # One epoch per evaluation; --steps is rounded up to a multiple of --eval-every.
    gan.fit(dataset, epochs=-(-args.steps // every), steps_per_epoch=every, verbose=0, shuffle=False,
            callbacks=[VALPCallback(), monitor])
    return monitor.history


if __name__ == "__main__":
    main()
