"""TF WGAN trainer behind ``python -m train.tf_wgan``; semantics: docs/trainers.md "Per framework"."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from models import tf_dcgan, tf_resnet
from models.spec import ResNetConfig, is_stat, param_table
from train import cli, contract, loop, tf_distributed
from train.config import ConfigError, TrainConfig, build_parser, lr_at
from train.data import to_uint8
from train.penalties import penalty_from_config
from train.runs import checkpoint as ckpt
from train.seeds import stream_seed
from valr_core import ALState

FRAMEWORK = "tf"
ADAM_EPS = 1e-8  # torch/optax default; Keras's is 1e-7


def _layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, nested models followed (models/tf_*.py have no custom containers)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """--precision bf16: models built under Keras' mixed_bfloat16 policy (float32 variables)."""
    if precision != "bf16":
        yield
        return
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _device_name(device: str) -> str | None:
    """TF device for ``--device``: None = TF's default placement (the first GPU when present)."""
    if device == "auto":
        return None
    if device == "cpu":
        return "/CPU:0"
    kind, _, index = device.partition(":")
    if kind in ("cuda", "gpu"):
        gpus = tf.config.list_physical_devices("GPU")
        if int(index or 0) >= len(gpus):
            raise ConfigError(f"--device {device}: TensorFlow sees {len(gpus)} GPU(s)")
        return f"/GPU:{int(index or 0)}"
    raise ConfigError(f"--device {device} is not supported by the TF trainer (use auto, cpu or gpu[:N])")


def named_variables(model: keras.Model) -> dict[str, tf.Variable]:
    """Canonical name (``models.spec``) -> the model's tf.Variable, in the canonical table's order."""
    # ``.value`` of a Keras 3 variable is the tf.Variable itself (what tapes can watch).
    return {name: tf_resnet._variable(model, name).value for name in param_table(model.valr_kind, model.valr_cfg)}


def _seeded_init(model: keras.Model, seed: int) -> None:
    """Re-draw every kernel (and SN vector) under a seed derived from ``seed``, not Keras' global one."""
    for name, var in named_variables(model).items():
        layer_name, leaf = name.rsplit(".", 1)
        if leaf != "kernel":
            continue  # biases and BatchNorm start at constants
        init = tf_resnet.inner_layer(model, layer_name).kernel_initializer  # inside SpectralNormalization too
        seeded = init.__class__.from_config({**init.get_config(), "seed": _derive_seed(seed, model.valr_kind, name)})
        var.assign(seeded(var.shape, var.dtype))
    for name, u in tf_resnet.sn_variables(model).items():  # SN's power-iteration vectors, seeded too
        draw = keras.initializers.TruncatedNormal(stddev=0.02, seed=_derive_seed(seed, model.valr_kind, name))
        u.assign(draw(u.shape, u.dtype))


def _derive_seed(seed: int, *parts: str) -> int:
    return int(np.random.SeedSequence([seed, *(zlib.crc32(p.encode()) for p in parts)]).generate_state(1)[0] >> 1)


class Adam:
    """Adam with checkpointable slots and lr per call, updating as torch/optax (docs/trainers.md)."""

    def __init__(self, variables: Mapping[str, tf.Variable], beta1: float, beta2: float, eps: float = ADAM_EPS) -> None:
        self.variables = dict(variables)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in self.variables.items()}
        self.v = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in self.variables.items()}
        self.t = tf.Variable(tf.zeros([], tf.int64), trainable=False)

    def apply(self, grads: Sequence[tf.Tensor], lr: tf.Tensor) -> None:
        t = tf.cast(self.t.assign_add(1), tf.float32)
        c1 = 1.0 - tf.pow(self.beta1, t)
        c2 = 1.0 - tf.pow(self.beta2, t)
        for (k, p), g in zip(self.variables.items(), grads, strict=True):
            m = self.m[k].assign(self.beta1 * self.m[k] + (1.0 - self.beta1) * g)
            v = self.v[k].assign(self.beta2 * self.v[k] + (1.0 - self.beta2) * tf.square(g))
            p.assign_sub(lr * (m / c1) / (tf.sqrt(v / c2) + self.eps))

    def state(self, prefix: str) -> dict[str, tf.Variable]:
        return {f"{prefix}/t": self.t, **{f"{prefix}/m/{k}": v for k, v in self.m.items()},
                **{f"{prefix}/v/{k}": v for k, v in self.v.items()}}


class TfWGAN:
    """The TF trainer of the shared loop (see :class:`train.loop.Trainer`)."""

    framework = FRAMEWORK

    def __init__(self, cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.device = None if strategy is not None else _device_name(cfg.device)
        self.penalty = penalty_from_config(cfg, FRAMEWORK)
        self.replicas = 1 if strategy is None else tf_distributed.check_divisible(
            strategy, batch_size=cfg.batch_size, gen_batch_size=cfg.gen_batch_size)
        self.is_chief = True if strategy is None else bool(strategy.extended.should_checkpoint)
        rc = ResNetConfig(latent_dim=cfg.z_dim, gen_channels=cfg.gen_channels,
                          critic_channels=cfg.critic_channels, image_size=cfg.image_size, arch=cfg.arch)
        models = tf_dcgan if cfg.arch == "dcgan" else tf_resnet
        with self._on_device(), _dtype_policy(cfg.precision):
            self.gen = models.build_generator(rc)
            self.critic = models.build_critic(rc, norm=cfg.critic_norm)
            self.gen_ema = models.build_generator(rc)
            _seeded_init(self.gen, stream_seed(cfg.seed, "init"))
            _seeded_init(self.critic, stream_seed(cfg.seed, "init"))
            self.g_vars, self.d_vars = named_variables(self.gen), named_variables(self.critic)
            self.ema_vars = named_variables(self.gen_ema)
            for k, v in self.ema_vars.items():
                v.assign(self.g_vars[k])
            self.opt_g = Adam({k: v for k, v in self.g_vars.items() if not is_stat(k)}, cfg.beta1, cfg.beta2)
            self.opt_d = Adam({k: v for k, v in self.d_vars.items() if not is_stat(k)}, cfg.beta1, cfg.beta2)
            self.mu = tf.Variable(contract.initial_multiplier(self.penalty, tf.zeros([])).mu, trainable=False)
        if strategy is not None:
            # Batch statistics of the global batch: what one process computes.
            for layer in _layers(self.gen):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        # Plain (not mirrored) variables: with a strategy, used in cross-replica context only.
        with self._on_device(scoped=False):
            self.rng_z = tf.random.Generator.from_seed(stream_seed(cfg.seed, "latents"), alg="philox")
            self.rng_pen = tf.random.Generator.from_seed(stream_seed(cfg.seed, "penalty"), alg="philox")
        self._critic_keys: list[str] = []
        self._critic_fn = tf.function(self._critic_step, autograph=False)
        self._gen_fn = tf.function(self._generator_step, autograph=False)
        self._sample_fn = tf.function(lambda z: tf.cast(self.gen_ema(z, training=False), tf.float32),
                                      reduce_retracing=True, autograph=False)

    def _on_device(self, scoped: bool = True) -> contextlib.AbstractContextManager:
        if self.strategy is not None:
            return self.strategy.scope() if scoped else contextlib.nullcontext()
        return tf.device(self.device) if self.device else contextlib.nullcontext()

    def _critic_step(self, real: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        z = self.rng_z.normal([self.cfg.batch_size, self.cfg.z_dim])  # the global batch's latents
        if self.strategy is None:
            return self._critic_update(real, z, self.rng_pen, lr)
        z = tf_distributed.distribute_batch(self.strategy, z)
        # One penalty seed per step, into which each replica folds its id.
        seed = self.rng_pen.make_seeds(1)[:, 0] if self.penalty is not None else tf.zeros([2], tf.int64)
        out = self.strategy.run(lambda r, zz, s: self._critic_update(r, zz, tf_distributed.replica_stream(s), lr),
                                args=(real, z, seed))
        return tf_distributed.local_result(self.strategy, out)

    def _critic_update(self, real: tf.Tensor, z: tf.Tensor, rng: object, lr: tf.Tensor) -> tf.Tensor:
        replicas, how = self.replicas, contract.reduction_of(self.penalty)
        fake = tf.stop_gradient(tf.cast(self.gen(z, training=True), real.dtype))
        critic_vars = list(self.opt_d.variables.values())
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(critic_vars)
            # One pass over both halves (the critic has no BatchNorm); VALP reuses these scores.
            scores = tf.cast(self.critic(tf.concat([real, fake], axis=0), training=True), tf.float32)
            loss, metrics, out = contract.critic_objective(
                self.penalty, self.critic, real, fake, rng, ALState(self.mu.read_value()), scores,
                wdist_weight=1.0 / replicas,
                penalty_weight=1.0 if replicas == 1 else (lambda v: tf_distributed.penalty_weight(v, how, replicas)))
        grads = tape.gradient(loss, critic_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        constraint = out.constraint
        if replicas > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            metrics, constraint = contract.reduce_over_replicas(metrics, constraint, how, tf_distributed.cross_replica)
        self.opt_d.apply(grads, lr)  # identical on every replica: each updates its own copy
        self.mu.assign(contract.multiplier_step(self.penalty, ALState(self.mu.read_value()), constraint).mu)
        metrics = contract.with_multiplier(metrics, self.penalty, ALState(self.mu.read_value()))
        self._critic_keys = list(metrics)  # trace-time bookkeeping: the order of the stacked vector
        return tf.stack([tf.cast(v, tf.float32) for v in metrics.values()])

    def _generator_step(self, lr: tf.Tensor) -> tf.Tensor:
        z = self.rng_z.normal([self.cfg.gen_batch_size, self.cfg.z_dim])
        if self.strategy is None:
            return self._generator_update(z, lr)
        z = tf_distributed.distribute_batch(self.strategy, z)
        out = self.strategy.run(lambda zz: self._generator_update(zz, lr), args=(z,))
        return tf_distributed.local_result(self.strategy, out)

    def _generator_update(self, z: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        gen_vars = list(self.opt_g.variables.values())
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(gen_vars)
            loss = contract.generator_objective(tnp, tf.cast(self.critic(self.gen(z, training=True), training=True), tf.float32))
            share = loss / self.replicas
        grads = tape.gradient(share, gen_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if self.replicas > 1:
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss)
        self.opt_g.apply(grads, lr)
        d = self.cfg.ema_decay
        for k, e in self.ema_vars.items():  # weights and BatchNorm statistics alike
            e.assign(d * e + (1.0 - d) * self.g_vars[k])
        return tf.reshape(loss, [1])

    def _lr(self, base: float, step: int) -> tf.Tensor:
        # A tensor, not a Python float: a new float would retrace the graph every step.
        return tf.constant(lr_at(base, step, self.cfg.steps, self.cfg.lr_decay), tf.float32)

    def _run(self, fn: tf.types.experimental.PolymorphicFunction, *args: tf.Tensor) -> np.ndarray:
        with self._on_device():
            return fn(*args).numpy()  # the one host transfer of the step

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        batch = (tf.convert_to_tensor(real, tf.float32) if self.strategy is None
                 else tf_distributed.distribute_batch(self.strategy, np.asarray(real, np.float32)))
        values = self._run(self._critic_fn, batch, self._lr(self.cfg.lr_d, step))
        return dict(zip(self._critic_keys, values.tolist(), strict=True))

    def generator_step(self, step: int) -> dict[str, float]:
        return {contract.GEN_LOSS: float(self._run(self._gen_fn, self._lr(self.cfg.lr_g, step))[0])}

    def sync_stop(self, requested: bool) -> bool:
        """True on every worker when any worker was asked to stop."""
        return requested if self.strategy is None else tf_distributed.any_replica(self.strategy, requested)

    def sample(self, z: np.ndarray) -> np.ndarray:
        return to_uint8(self._run(self._sample_fn, tf.convert_to_tensor(z, tf.float32)))

    def clip_critic_weights(self, c: float) -> None:
        """``--clip-weights C``: every critic parameter clipped to [-C, C]."""
        with self._on_device():
            for v in self.opt_d.variables.values():
                v.assign(tf.clip_by_value(v, -c, c))

    def critic_scores(self, images: np.ndarray) -> np.ndarray:
        """The critic's scores f(x) on NHWC images in [-1, 1], shape (N,)."""
        with self._on_device():
            return np.reshape(self.critic(tf.convert_to_tensor(images, tf.float32), training=False).numpy(), -1)

    def _state_variables(self) -> dict[str, tf.Variable]:
        out: dict[str, tf.Variable] = {}
        for prefix, named in (("gen", self.g_vars), ("critic", self.d_vars), ("ema", self.ema_vars)):
            out.update({f"{prefix}/{k}": v for k, v in named.items()})
        out.update({f"critic/{k}": v.value for k, v in tf_resnet.sn_variables(self.critic).items()})
        return {**out, **self.opt_g.state("opt_g"), **self.opt_d.state("opt_d"), contract.MU_KEY: self.mu,
                contract.RNG_LATENTS_KEY: self.rng_z.state, contract.RNG_PENALTY_KEY: self.rng_pen.state}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.numpy()) for k, v in self._state_variables().items()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        variables = self._state_variables()
        arrays = ckpt.restore_arrays(arrays, self.state_arrays(), context="tf trainer state")
        for k, v in variables.items():
            v.assign(np.reshape(arrays[k], v.shape.as_list()))


TRAINER = TfWGAN

def build_tf_parser():
    """The shared command line plus the TF trainer's distribution flags (they land in cfg.extra)."""
    parser = build_parser(FRAMEWORK)
    g = parser.add_argument_group("distributed (TensorFlow)")
    g.add_argument("--distribute", choices=tf_distributed.DISTRIBUTE_MODES, default=None,
                   help="none (default), mirrored (all local GPUs; the CPU with --cpu-replicas) or "
                        "multi_worker (MultiWorkerMirroredStrategy; cluster from TF_CONFIG)")
    g.add_argument("--cpu-replicas", type=int, default=None,
                   help="with --distribute mirrored: split the CPU into N logical devices, one replica each")
    return parser


def make_trainer(cfg: TrainConfig) -> TfWGAN:
    mode = cfg.extra.get("distribute") or "none"
    strategy = tf_distributed.make_strategy(mode, cpu_replicas=int(cfg.extra.get("cpu_replicas") or 0),
                                            device=cfg.device)
    if strategy is not None:
        loop.log.info("tf.distribute: %s", tf_distributed.describe(strategy))
    return TfWGAN(cfg, strategy)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(FRAMEWORK, make_trainer, argv, parser=build_tf_parser())

