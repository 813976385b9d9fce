"""The TensorFlow WGAN trainer behind ``python -m train.tf_wgan [--preset smoke] [--penalty valp|gp|lp|none]``.

Implements :class:`train.loop.Trainer` for the reference setup (paper section 4, README "Training"
setup"): the Keras ResNet generator/critic of ``models.tf_resnet``, critic loss
E f(G(z)) - E f(x) + penalty (``train.contract``, ``train.penalties``), generator
loss -E f(G(z)), Adam(beta1, beta2) with the loop's linear lr decay, an EMA of all generator
weights (BatchNorm statistics included) for sampling, and the AL multiplier updated after every
critic step. Both steps are ``tf.function`` graphs with the lr fed as a tensor, so they trace once;
everything stays on TF's default device (the GPU when present) and the only host transfer per
step is the vector of returned metrics. All randomness comes from two explicit
``tf.random.Generator`` streams (latents, penalty) whose states are checkpointed with everything
else, so a resumed run continues the uninterrupted one exactly.

Data-parallel (``--distribute mirrored|multi_worker``, see ``train.tf_distributed`` and README):
with a ``tf.distribute`` strategy every variable, optimiser slot and the AL multiplier is created
under ``strategy.scope()`` and each step is ``strategy.run`` over the replicas. The global batch
stays ``batch_size`` (replica r takes rows [r*b, (r+1)*b)); the latents of the global batch are
drawn once from the latent stream and split the same way, and the generator's BatchNorm is
synchronised, so the models see what one process would. Each replica takes its share of the
global losses (means by the global batch), per-replica gradients are summed, the AL constraint
and the logged statistics are reduced across replicas (MEAN for the default ``mean`` reduction),
and every replica draws its own penalty randomness (``fold_in(step seed, replica id)``). One
distributed step equals the single-process step on the same global batch when the penalty draws
agree (tests/test_distributed_tf.py). Only the chief writes (``is_chief``).
"""

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
from train.penalties import penalty_from_config, reductions_for
from train.runs import checkpoint as ckpt
from train.seeds import stream_seed
from valr_core import ALState

FRAMEWORK = "tf"
ADAM_EPS = 1e-8  # torch/optax default; Keras's is 1e-7


def _layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``: ``keras.Model.layers`` (public) followed into nested models;
    the models (models/tf_*.py) are functional, with no custom layers holding sub-layers."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """--precision bf16: models built under Keras' mixed_bfloat16 policy (bfloat16 compute,
    float32 variables); the trainer casts their outputs to float32 for the losses."""
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
    """Re-draw every kernel with its own initializer under an explicit seed, so initial weights
    depend on ``seed`` only (Keras would otherwise draw from its global generator)."""
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
    """Adam with explicit, checkpointable slots; lr is a call argument (the loop's schedule).

    Bias-corrected as in torch/optax: p -= lr * m_hat / (sqrt(v_hat) + eps). Why not
    ``keras.optimizers.Adam``: it adds eps to sqrt(v) before the bias correction (lr_t * m /
    (sqrt(v) + eps), Kingma & Ba's "epsilon hat"), so the same settings update differently from
    the torch and JAX trainers early in training, and its slots carry Keras' own names; the three
    trainers are held to one update rule (tests/test_trainer_contract.py)."""

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
        out: dict[str, tf.Variable] = {f"{prefix}/t": self.t}
        out.update({f"{prefix}/m/{k}": v for k, v in self.m.items()})
        out.update({f"{prefix}/v/{k}": v for k, v in self.v.items()})
        return out


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
        # Only the chief writes checkpoints, logs and samples (train.loop reads this).
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
            trainable = {"gen": {k: v for k, v in self.g_vars.items() if not is_stat(k)},
                         "critic": {k: v for k, v in self.d_vars.items() if not is_stat(k)}}
            self.opt_g = Adam(trainable["gen"], cfg.beta1, cfg.beta2)
            self.opt_d = Adam(trainable["critic"], cfg.beta1, cfg.beta2)
            self.mu = tf.Variable(self.penalty.init_state(tf.zeros([])).mu, trainable=False)
        if strategy is not None:
            # Batch statistics of the global batch: what one process computes.
            for layer in _layers(self.gen):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        # Separate streams, so the latents do not depend on how much randomness a penalty uses.
        # Plain (not mirrored) variables: with a strategy they are only used in cross-replica
        # context, identically on every worker.
        with self._on_device(scoped=False):
            self.rng_z = tf.random.Generator.from_seed(stream_seed(cfg.seed, "latents"), alg="philox")
            self.rng_pen = tf.random.Generator.from_seed(stream_seed(cfg.seed, "penalty"), alg="philox")
        self._critic_keys: list[str] = []
        if strategy is None:
            self._critic_fn = tf.function(self._critic_step, autograph=False)
            self._gen_fn = tf.function(self._generator_step, autograph=False)
        else:
            self._critic_fn = tf.function(self._distributed_critic_step, autograph=False)
            self._gen_fn = tf.function(self._distributed_generator_step, autograph=False)
        self._sample_fn = tf.function(lambda z: tf.cast(self.gen_ema(z, training=False), tf.float32),
                                      reduce_retracing=True, autograph=False)

    def _on_device(self, scoped: bool = True) -> contextlib.AbstractContextManager:
        if self.strategy is not None:
            return self.strategy.scope() if scoped else contextlib.nullcontext()
        return tf.device(self.device) if self.device else contextlib.nullcontext()

    # -- graphs ------------------------------------------------------------------------------
    # One critic step and one generator step, run directly on one device or by strategy.run on
    # every replica; with R > 1 replicas each takes its share of the global loss and the
    # gradients and statistics are reduced across replicas.

    def _critic_step(self, real: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        z = self.rng_z.normal([self.cfg.batch_size, self.cfg.z_dim])
        return self._critic_update(real, z, self.rng_pen, lr)

    def _distributed_critic_step(self, real: tf.distribute.DistributedValues, lr: tf.Tensor) -> tf.Tensor:
        # Cross-replica context: the global batch's latents (the single-process draw) and one
        # penalty seed per step, both from the checkpointed generators.
        z = tf_distributed.distribute_batch(self.strategy, self.rng_z.normal([self.cfg.batch_size, self.cfg.z_dim]))
        seed = self.rng_pen.make_seeds(1)[:, 0] if self.penalty.name != "none" else tf.zeros([2], tf.int64)
        out = self.strategy.run(lambda r, zz, s: self._critic_update(r, zz, tf_distributed.replica_stream(s), lr),
                                args=(real, z, seed))
        return tf_distributed.local_result(self.strategy, out)

    def _critic_update(self, real: tf.Tensor, z: tf.Tensor, rng: object, lr: tf.Tensor) -> tf.Tensor:
        replicas, how = self.replicas, self.penalty.reduction
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
            local = {**{k: v for k, v in metrics.items() if k != "loss"}, "constraint": constraint}
            reduced = tf_distributed.cross_replica(local, reductions_for(local, how))
            constraint = reduced.pop("constraint")
            metrics = {"loss": reduced["penalty"] - reduced["wdist"], **reduced}
        self.opt_d.apply(grads, lr)  # identical on every replica: each updates its own copy
        # AL multiplier step with this step's constraint, after the optimiser step (README "The augmented-Lagrangian convention").
        self.mu.assign(self.penalty.update(ALState(self.mu.read_value()), constraint).mu)
        metrics = contract.with_multiplier(metrics, ALState(self.mu.read_value()))
        self._critic_keys = list(metrics)  # trace-time bookkeeping: the order of the stacked vector
        return tf.stack([tf.cast(v, tf.float32) for v in metrics.values()])

    def _generator_step(self, lr: tf.Tensor) -> tf.Tensor:
        return self._generator_update(self.rng_z.normal([self.cfg.gen_batch_size, self.cfg.z_dim]), lr)

    def _distributed_generator_step(self, lr: tf.Tensor) -> tf.Tensor:
        z = tf_distributed.distribute_batch(self.strategy, self.rng_z.normal([self.cfg.gen_batch_size, self.cfg.z_dim]))
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

    # -- Trainer protocol --------------------------------------------------------------------

    def _lr(self, base: float, step: int) -> tf.Tensor:
        # A tensor, not a Python float: a new float would retrace the graph every step.
        return tf.constant(lr_at(base, step, self.cfg.steps, self.cfg.lr_decay), tf.float32)

    def _run(self, fn: tf.types.experimental.PolymorphicFunction, *args: tf.Tensor) -> np.ndarray:
        with self._on_device():
            return fn(*args).numpy()  # the one host transfer of the step

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        if self.strategy is not None:
            batch = tf_distributed.distribute_batch(self.strategy, np.asarray(real, np.float32))
        else:
            batch = tf.convert_to_tensor(real, tf.float32)
        values = self._run(self._critic_fn, batch, self._lr(self.cfg.lr_d, step))
        return dict(zip(self._critic_keys, values.tolist(), strict=True))

    def generator_step(self, step: int) -> dict[str, float]:
        return {"loss": float(self._run(self._gen_fn, self._lr(self.cfg.lr_g, step))[0])}

    def sync_stop(self, requested: bool) -> bool:
        """True on every worker when any worker was asked to stop (train.loop calls it each iteration)."""
        return requested if self.strategy is None else tf_distributed.any_replica(self.strategy, requested)

    def sample(self, z: np.ndarray) -> np.ndarray:
        return to_uint8(self._run(self._sample_fn, tf.convert_to_tensor(z, tf.float32)))

    def clip_critic_weights(self, c: float) -> None:
        """``--clip-weights C`` (the loop calls it after each critic step): every critic
        parameter clipped to [-C, C]."""
        with self._on_device():
            for v in self.opt_d.variables.values():
                v.assign(tf.clip_by_value(v, -c, c))

    def critic_scores(self, images: np.ndarray) -> np.ndarray:
        """The critic's scores f(x) on float32 NHWC images in [-1, 1], shape (N,)."""
        with self._on_device():
            return np.reshape(self.critic(tf.convert_to_tensor(images, tf.float32), training=False).numpy(), -1)

    def _state_variables(self) -> dict[str, tf.Variable]:
        out: dict[str, tf.Variable] = {}
        for prefix, named in (("gen", self.g_vars), ("critic", self.d_vars), ("ema", self.ema_vars)):
            out.update({f"{prefix}/{k}": v for k, v in named.items()})
        # Spectral normalisation's power-iteration vectors (critic/<layer>.sn_u; none without SN).
        out.update({f"critic/{k}": v.value for k, v in tf_resnet.sn_variables(self.critic).items()})
        out.update(self.opt_g.state("opt_g"))
        out.update(self.opt_d.state("opt_d"))
        out[contract.MU_KEY] = self.mu
        out[contract.RNG_LATENTS_KEY] = self.rng_z.state
        out[contract.RNG_PENALTY_KEY] = self.rng_pen.state
        return out

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

