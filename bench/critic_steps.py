"""One WGAN critic step per method and framework, on the CIFAR-10 ResNet critic of ``models``.

A step is: scores of real and fake in one forward pass, the Wasserstein loss
``mean f(fake) - mean f(real)`` plus the method's penalty, gradients, one Adam step (and the
AL multiplier update for VALP). torch runs eagerly; TF runs as a ``tf.function``; JAX as
``jax.jit``. Every ``run()`` returned by ``steps.step(method)`` synchronises the device before
returning. Each method gets its own copy of the critic and optimiser (same initial weights).

VALP, GP and LP are the trainers' own penalties (``train.penalties.make_penalty``, i.e.
valr_core's): VALP in the paper's form, augmented Lagrangian (rho = 0.01) on real and fake
samples reusing the forward pass's scores, defaults of section 4; GP/LP with lam = 10.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import native_valp
from bench.common import Method
from train.contract import multiplier_step

LR, BETAS = 2e-4, (0.0, 0.9)


def _seed(seed: int, method: Method) -> int:
    return (seed * 1_000_003 + zlib.crc32(method.name.encode())) % 2**31


def _images(seed: int, batch: int, size: int, channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fixed real and fake batches in [-1, 1] (data loading is not part of the step)."""
    rng = np.random.default_rng(seed)
    shape = (batch, size, size, 3) if channels_last else (batch, 3, size, size)
    return (rng.uniform(-1, 1, shape).astype(np.float32), rng.uniform(-1, 1, shape).astype(np.float32))


def make_penalty(backend: str, method: Method) -> Any:
    """The trainers' penalty for ``method`` (None for the no-penalty and hand-written rows)."""
    from train.penalties import make_penalty as shared_penalty

    if method.kind == "valp":
        return shared_penalty("valp", backend, check_finite=method.check_finite, mode="al", rho=native_valp.RHO,
                              fraction=method.fraction, n_power=method.n_power)
    if method.kind in ("gp", "lp"):
        return shared_penalty(method.kind, backend, check_finite=method.check_finite)
    return None


# ============================================================================ torch
class TorchSteps:
    framework = "torch"

    def __init__(self, device: str = "cpu", width: int = 128, batch: int = 64, seed: int = 0, image_size: int = 32) -> None:
        import torch

        from models.spec import ResNetConfig
        from models.torch_resnet import Critic

        self.torch = torch
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        self.batch, self.seed, self.image_size = batch, seed, image_size
        torch.manual_seed(seed)
        self.base = Critic(ResNetConfig(critic_channels=width, image_size=image_size)).to(self.device)
        self._data: dict[int, tuple[Any, Any]] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def data(self, batch: int) -> tuple[Any, Any]:
        if batch not in self._data:
            real, fake = _images(self.seed + batch, batch, self.image_size, channels_last=False)
            self._data[batch] = (self.torch.from_numpy(real).to(self.device), self.torch.from_numpy(fake).to(self.device))
        return self._data[batch]

    def step(self, method: Method) -> Callable[[], Any]:
        torch = self.torch
        critic = copy.deepcopy(self.base)
        opt = torch.optim.Adam(critic.parameters(), lr=LR, betas=BETAS)
        b = method.batch or self.batch
        real, fake = self.data(b)
        gen = torch.Generator(device=self.device).manual_seed(_seed(self.seed, method))
        penalty = make_penalty("torch", method)
        state = [penalty.init_state(real) if penalty else torch.zeros((), device=self.device)]

        def run() -> Any:
            opt.zero_grad(set_to_none=True)
            x = torch.cat([real, fake])
            fx = critic(x)
            loss = fx[b:].mean() - fx[:b].mean()
            constraint = None
            if penalty is not None:
                pen, out = penalty.pair_loss(critic, real, fake, gen, state[0], fx=fx)
                loss, constraint = loss + pen, out.constraint
            elif method.kind == "native":
                pen, constraint, _ = native_valp.torch_valp(critic, x, fx, gen, state[0], method.fraction, method.n_power)
                loss = loss + pen
            loss.backward()
            opt.step()
            if penalty is not None:
                state[0] = multiplier_step(penalty, state[0], constraint)
            elif constraint is not None:
                state[0] = torch.clamp(state[0] + native_valp.RHO * constraint, min=0.0)
            self.sync()
            return loss.detach()

        return run

    def peak_memory(self, method: Method) -> dict[str, float]:
        """GPU only: peak bytes allocated by one step above what was allocated before it."""
        torch = self.torch
        run = self.step(method)
        run()
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        run()
        peak = torch.cuda.max_memory_allocated(self.device) - before
        return {"peak_mib": peak / 2**20}


# ============================================================================ tf
class _NoRetracingWarning(logging.Filter):
    """TF warns that "N out of the last N calls ... triggered tf.function retracing" when it
    sees several tf.function objects traced once each, which is exactly what this benchmark
    builds (one per method); drop that message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _drop_retracing_warning(tf: Any) -> None:
    logger = tf.get_logger()
    if not any(isinstance(f, _NoRetracingWarning) for f in logger.filters):
        logger.addFilter(_NoRetracingWarning())


class TfSteps:
    framework = "tf"

    def __init__(self, device: str = "cpu", width: int = 128, batch: int = 64, seed: int = 0, image_size: int = 32) -> None:
        import keras
        import tensorflow as tf

        from models.spec import ResNetConfig
        from models.tf_resnet import build_critic

        self.tf, self.keras = tf, keras
        _drop_retracing_warning(tf)
        self.device_name = "/GPU:0" if device == "gpu" else "/CPU:0"
        self.batch, self.seed, self.image_size = batch, seed, image_size
        self.cfg = ResNetConfig(critic_channels=width, image_size=image_size)
        keras.utils.set_random_seed(seed)
        self._build = build_critic
        with tf.device(self.device_name):
            self.base_weights = build_critic(self.cfg).get_weights()
        self._data: dict[int, tuple[Any, Any]] = {}

    def data(self, batch: int) -> tuple[Any, Any]:
        if batch not in self._data:
            real, fake = _images(self.seed + batch, batch, self.image_size, channels_last=True)
            with self.tf.device(self.device_name):
                self._data[batch] = (self.tf.constant(real), self.tf.constant(fake))
        return self._data[batch]

    def _compiled(self, method: Method) -> tuple[Callable[[], Any], Any]:
        tf, keras = self.tf, self.keras
        b = method.batch or self.batch
        real, fake = self.data(b)
        with tf.device(self.device_name):
            model = self._build(self.cfg)
            model.set_weights(self.base_weights)
            opt = keras.optimizers.Adam(LR, beta_1=BETAS[0], beta_2=BETAS[1])
            opt.build(model.trainable_variables)
            gen = tf.random.Generator.from_seed(_seed(self.seed, method))
            mu = tf.Variable(0.0, dtype=tf.float32)
        penalty = make_penalty("tf", method)

        def critic(z: Any) -> Any:
            return model(z, training=True)

        @tf.function(autograph=False)  # plain Python loops only; autograph would warn on valr_core
        def step(real: Any, fake: Any) -> Any:
            from valr_core import ALState

            constraint = None
            with tf.GradientTape() as tape:
                x = tf.concat([real, fake], 0)
                fx = critic(x)
                loss = tf.reduce_mean(fx[b:]) - tf.reduce_mean(fx[:b])
                if penalty is not None:
                    pen, out = penalty.pair_loss(critic, real, fake, gen, ALState(mu.read_value()), fx=fx)
                    loss, constraint = loss + pen, out.constraint
                elif method.kind == "native":
                    pen, constraint, _ = native_valp.tf_valp(critic, x, fx, gen, mu.read_value(), method.fraction, method.n_power)
                    loss += pen
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            if penalty is not None:
                mu.assign(multiplier_step(penalty, ALState(mu.read_value()), constraint).mu)
            elif constraint is not None:
                mu.assign(tf.maximum(mu + native_valp.RHO * constraint, 0.0))
            return loss

        def run() -> Any:
            with tf.device(self.device_name):
                return step(real, fake).numpy()  # .numpy() waits for the step

        return run, step

    def step(self, method: Method) -> Callable[[], Any]:
        return self._compiled(method)[0]

    def peak_memory(self, method: Method) -> dict[str, float]:
        """TF's allocator peak during one step above the bytes in use before it (CPU or GPU)."""
        tf = self.tf
        device = self.device_name.strip("/")
        run = self.step(method)
        run()
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        run()
        return {"peak_mib": (tf.config.experimental.get_memory_info(device)["peak"] - before) / 2**20}


# ============================================================================ jax
class JaxSteps:
    framework = "jax"

    def __init__(self, device: str = "cpu", width: int = 128, batch: int = 64, seed: int = 0, image_size: int = 32) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        from models.jax_resnet import Critic, init
        from models.spec import ResNetConfig

        self.jax, self.jnp, self.optax = jax, jnp, optax
        self.device = jax.devices("gpu" if device == "gpu" else "cpu")[0]
        self.batch, self.seed, self.image_size = batch, seed, image_size
        module, variables = init(Critic(ResNetConfig(critic_channels=width, image_size=image_size)), jax.random.key(seed))
        self.module = module
        self.params = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables["params"]), self.device)
        self.opt = optax.adam(LR, b1=BETAS[0], b2=BETAS[1])
        self._data: dict[int, tuple[Any, Any]] = {}
        self._executables: dict[Method, Any] = {}

    def data(self, batch: int) -> tuple[Any, Any]:
        if batch not in self._data:
            real, fake = _images(self.seed + batch, batch, self.image_size, channels_last=True)
            self._data[batch] = (self.jax.device_put(real, self.device), self.jax.device_put(fake, self.device))
        return self._data[batch]

    def _compiled(self, method: Method) -> tuple[Callable[..., Any], list[Any], tuple[Any, Any]]:
        jax, jnp, optax = self.jax, self.jnp, self.optax
        from valr_core import ALState

        b = method.batch or self.batch
        module, opt = self.module, self.opt
        penalty = make_penalty("jax", method)

        def loss_fn(params: Any, real: Any, fake: Any, key: Any, mu: Any) -> Any:
            def critic(z: Any) -> Any:
                return module.apply({"params": params}, z)

            x = jnp.concatenate([real, fake])
            fx = critic(x)
            loss = jnp.mean(fx[b:]) - jnp.mean(fx[:b])
            constraint = jnp.zeros((), jnp.float32)
            if penalty is not None:
                pen, out = penalty.pair_loss(critic, real, fake, key, ALState(mu), fx=fx)
                loss, constraint, key = loss + pen, out.constraint, out.rng
            elif method.kind == "native":
                pen, constraint, key = native_valp.jax_valp(critic, x, fx, key, mu, method.fraction, method.n_power)
                loss += pen
            return loss, (key, constraint)

        @jax.jit
        def step(params: Any, opt_state: Any, key: Any, mu: Any, real: Any, fake: Any) -> Any:
            (loss, (key, constraint)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, real, fake, key, mu)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if penalty is not None:
                mu = multiplier_step(penalty, ALState(mu), constraint).mu
            else:
                mu = jnp.maximum(mu + native_valp.RHO * constraint, 0.0)
            return params, opt_state, key, mu, loss

        params = jax.tree.map(jnp.copy, self.params)
        key = jax.random.key(_seed(self.seed, method))
        mu = jnp.zeros((), jnp.float32)
        # Everything committed to the device, like the step's outputs: otherwise the second
        # call (committed inputs) compiles again, inside the timed rounds.
        state = self.jax.device_put([params, opt.init(params), key, mu], self.device)
        return step, state, self.data(b)

    def step(self, method: Method) -> Callable[[], Any]:
        step, state, (real, fake) = self._compiled(method)
        # Compiled ahead of time (here, not in the first call); kept for peak_memory.
        compiled = step.lower(*state, real, fake).compile()
        self._executables[method] = compiled

        def run() -> Any:
            out = compiled(*state, real, fake)
            state[:] = out[:4]
            return self.jax.block_until_ready(out[4])

        return run

    def peak_memory(self, method: Method) -> dict[str, float]:
        """XLA's compiled memory analysis of the step: temporary buffers (CPU and GPU)."""
        if method not in self._executables:
            self.step(method)
        analysis = self._executables[method].memory_analysis()
        return {"xla_temp_mib": analysis.temp_size_in_bytes / 2**20}


STEPS = {"torch": TorchSteps, "tf": TfSteps, "jax": JaxSteps}


def steps_for(framework: str, **kwargs: Any) -> Any:
    return STEPS[framework](**kwargs)
