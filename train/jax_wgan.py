"""JAX/flax WGAN trainer (``python -m train.jax_wgan``): pure jitted steps over one
:class:`TrainState` pytree; its semantics: docs/trainers.md "Per framework"."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import jax_dcgan
from models.jax_resnet import Critic, Generator, init
from models.spec import ResNetConfig
from train import cli, contract, loop
from train import jax_distributed as jd
from train.config import ConfigError, TrainConfig, build_parser, lr_at
from train.data import to_uint8
from train.penalties import Penalty, penalty_from_config
from train.runs import checkpoint as ckpt
from train.seeds import stream_seed
from valr_core import ALState

ADAM_EPS = 1e-8  # torch's and the original WGAN-GP code's default
Params = Any


def classic_threefry() -> Any:
    """Context for all the trainer's JAX calls: the classic threefry, fast to compile on XLA:CPU
    and with draws independent of the sharding (docs/trainers.md "Per framework")."""
    return jax.threefry_partitionable(False)


class Streams(NamedTuple):
    """The PRNG keys of the independent streams (train.seeds): latents and penalty draws."""

    latents: jax.Array
    penalty: jax.Array


class TrainState(NamedTuple):
    """The complete training state; field names are the checkpoint key prefixes (train.contract)."""

    gen: Params
    gen_stats: Params
    critic: Params
    critic_stats: Params  # SN's u, sigma (flax batch_stats); {} for critic_norm none (no leaves)
    opt_g: Any
    opt_d: Any
    ema: Params
    ema_stats: Params
    penalty: ALState
    rng: Streams


@dataclass(frozen=True)
class StepSpec:
    """The static (hashable) settings the jitted steps depend on; equal specs share compilations."""

    model: ResNetConfig
    penalty: Penalty
    gen_batch_size: int
    beta1: float
    beta2: float
    ema_decay: float
    batch_sharding: Any = None  # data-parallel: per-sample work is kept on P("data"); None: one device
    precision: str = "fp32"  # bf16: forward passes with bfloat16 params and activations
    critic_norm: str = "none"

    @property
    def generator(self) -> Generator:
        return (jax_dcgan.Generator if self.model.arch == "dcgan" else Generator)(self.model)

    @property
    def critic(self) -> Critic:
        return (jax_dcgan.Critic if self.model.arch == "dcgan" else Critic)(self.model, norm=self.critic_norm)

    @property
    def adam(self) -> optax.GradientTransformation:
        # Without the lr: _adam_step applies the decayed lr as a traced argument (no retracing).
        return optax.scale_by_adam(b1=self.beta1, b2=self.beta2, eps=ADAM_EPS)


def step_spec(cfg: TrainConfig) -> StepSpec:
    model = ResNetConfig(latent_dim=cfg.z_dim, gen_channels=cfg.gen_channels,
                         critic_channels=cfg.critic_channels, image_size=cfg.image_size, arch=cfg.arch)
    return StepSpec(model, penalty_from_config(cfg, "jax"), cfg.gen_batch_size, cfg.beta1, cfg.beta2, cfg.ema_decay,
                    precision=cfg.precision, critic_norm=cfg.critic_norm)


def init_state(spec: StepSpec, key: jax.Array, streams: Streams) -> TrainState:
    """Fresh models (flax default init from ``key``), zero Adam slots, EMA = initial weights, mu = 0."""
    k_gen, k_critic = jax.random.split(key)
    _, g_vars = init(spec.generator, k_gen)
    _, c_vars = init(spec.critic, k_critic)
    g_params, g_stats, c_params = g_vars["params"], g_vars["batch_stats"], c_vars["params"]
    c_stats = c_vars.get("batch_stats", {})
    copy = jax.tree.map(jnp.array, (g_params, g_stats))  # EMA starts equal but in its own buffers
    mu = contract.initial_multiplier(spec.penalty, jnp.zeros(()))
    return TrainState(g_params, g_stats, c_params, c_stats, spec.adam.init(g_params), spec.adam.init(c_params),
                      copy[0], copy[1], mu, streams)


def _adam_step(spec: StepSpec, grads: Params, opt_state: Any, params: Params, lr: jax.Array) -> tuple[Params, Any]:
    updates, opt_state = spec.adam.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state


def _ema(ema: Params, new: Params, decay: float) -> Params:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def _shard(spec: StepSpec, x: jax.Array) -> jax.Array:
    """Keep a batch split over the data axis, so per-sample work runs where its sample lives."""
    return x if spec.batch_sharding is None else jax.lax.with_sharding_constraint(x, spec.batch_sharding)


def _compute(spec: StepSpec, tree: Any) -> Any:
    """--precision bf16: a forward pass's floats in bfloat16 (gradients reach the float32 masters)."""
    if spec.precision != "bf16":
        return tree
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _generate(spec: StepSpec, params: Params, stats: Params, z: jax.Array) -> tuple[jax.Array, Params]:
    """Training-mode generator pass: float32 images and the updated running statistics."""
    fake, updates = spec.generator.apply({"params": _compute(spec, params), "batch_stats": stats},
                                         _compute(spec, z), train=True, mutable=["batch_stats"])
    stats_new = jax.tree.map(lambda new, old: new.astype(old.dtype), updates["batch_stats"], stats)
    return fake.astype(jnp.float32), stats_new


def _critic_apply(spec: StepSpec, params: Params, stats: Params, x: jax.Array,
                  train: bool = False) -> tuple[jax.Array, Params]:
    """The critic's scores (bfloat16 under bf16) and its SN state, advanced one step when ``train``."""
    variables = {"params": _compute(spec, params), "batch_stats": _compute(spec, stats)}
    if not train or not stats:
        return spec.critic.apply(variables, _compute(spec, x)), stats
    y, upd = spec.critic.apply(variables, _compute(spec, x), train=True, mutable=["batch_stats"])
    return y, jax.tree.map(lambda new, old: new.astype(old.dtype), upd["batch_stats"], stats)


def critic_step(spec: StepSpec, state: TrainState, real: jax.Array, lr: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One critic update on ``real`` against a fresh fake batch of the same size, then the AL step."""
    latents, k_z = jax.random.split(state.rng.latents)
    z = _shard(spec, jax.random.normal(k_z, (real.shape[0], spec.model.latent_dim), jnp.float32))
    fake, g_stats = _generate(spec, state.gen, state.gen_stats, z)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params: Params) -> tuple[jax.Array, tuple[Any, ...]]:
        def critic(x: jax.Array) -> jax.Array:  # the penalty's passes: SN's stored u, no step
            return _critic_apply(spec, params, state.critic_stats, _shard(spec, x))[0]

        # One pass over real and fake together; VALP reuses these scores (no BatchNorm in the critic).
        scores, c_stats = _critic_apply(spec, params, state.critic_stats,
                                        _shard(spec, jnp.concatenate([real, fake], axis=0)), train=True)
        loss, metrics, out = contract.critic_objective(spec.penalty, critic, real, fake, state.rng.penalty,
                                                       state.penalty, scores.astype(jnp.float32))
        return loss, (metrics, out, c_stats)

    (_, (metrics, out, c_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic)
    c_params, c_opt = _adam_step(spec, grads, state.opt_d, state.critic, lr)
    mu = contract.multiplier_step(spec.penalty, state.penalty, out.constraint)
    new = state._replace(critic=c_params, critic_stats=c_stats, opt_d=c_opt, gen_stats=g_stats, penalty=mu,
                         rng=Streams(latents, out.rng))
    return new, contract.with_multiplier(metrics, spec.penalty, mu)


def generator_step(spec: StepSpec, state: TrainState, lr: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One generator update on -mean f(G(z)), then the EMA of weights and BatchNorm statistics."""
    latents, k_z = jax.random.split(state.rng.latents)
    z = _shard(spec, jax.random.normal(k_z, (spec.gen_batch_size, spec.model.latent_dim), jnp.float32))

    def loss_fn(params: Params) -> tuple[jax.Array, tuple[Params, Params]]:
        fake, g_stats = _generate(spec, params, state.gen_stats, z)
        # A training pass of the critic: SN takes its power-iteration step here too (as torch/Keras).
        scores, c_stats = _critic_apply(spec, state.critic, state.critic_stats, fake, train=True)
        return contract.generator_objective(jnp, scores.astype(jnp.float32)), (g_stats, c_stats)

    (loss, (g_stats, c_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.gen)
    g_params, g_opt = _adam_step(spec, grads, state.opt_g, state.gen, lr)
    new = state._replace(
        gen=g_params, gen_stats=g_stats, critic_stats=c_stats, opt_g=g_opt, rng=state.rng._replace(latents=latents),
        ema=_ema(state.ema, g_params, spec.ema_decay),
        ema_stats=_ema(state.ema_stats, g_stats, spec.ema_decay))
    return new, {contract.GEN_LOSS: loss}


@functools.partial(jax.jit, static_argnums=0)
def _sample_images(spec: StepSpec, ema_params: Params, ema_stats: Params, z: jax.Array) -> jax.Array:
    """EMA generator in inference mode (running statistics): images in [-1, 1]."""
    return spec.generator.apply({"params": ema_params, "batch_stats": ema_stats}, z, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _critic_scores(spec: StepSpec, params: Params, stats: Params, x: jax.Array) -> jax.Array:
    return spec.critic.apply({"params": params, "batch_stats": stats}, x).reshape(-1)


@jax.jit
def _clip_params(params: Params, c: jax.Array) -> Params:
    return jax.tree.map(lambda p: jnp.clip(p, -c, c), params)


# Static spec, donated state: the old state's buffers are reused for the new one.
_critic_step = jax.jit(critic_step, static_argnums=0, donate_argnums=1)
_generator_step = jax.jit(generator_step, static_argnums=0, donate_argnums=1)
_init_state = jax.jit(init_state, static_argnums=0)  # one program compiles faster than op by op


@functools.cache
def sharded_steps(mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    """The critic and generator steps jitted over ``mesh``: real batch sharded, all else replicated."""
    rep, batch = jd.replicated(mesh), jd.batch_sharding(mesh)
    critic = jax.jit(critic_step, static_argnums=0, donate_argnums=1,
                     in_shardings=(rep, batch, rep), out_shardings=(rep, rep))
    generator = jax.jit(generator_step, static_argnums=0, donate_argnums=1,
                        in_shardings=(rep, rep), out_shardings=(rep, rep))
    return critic, generator


def resolve_device(name: str) -> jax.Device | None:
    """``--device``: auto -> JAX's default (a GPU when present); cpu, cuda/gpu[:N], tpu[:N]."""
    if name == "auto":
        return None
    platform, _, index = name.partition(":")
    platform = "gpu" if platform == "cuda" else platform
    try:
        devices = jax.devices(platform)
    except RuntimeError as e:
        raise ConfigError(f"--device {name}: JAX has no {platform} backend here ({e})") from e
    i = int(index or 0)
    if i >= len(devices):
        raise ConfigError(f"--device {name}: only {len(devices)} {platform} device(s) visible")
    return devices[i]


def data_parallel_mesh(device: str) -> jax.sharding.Mesh:
    """``--data-parallel``: a mesh over every device of ``--device``'s platform (all hosts')."""
    platform, _, index = device.partition(":")
    if index:
        raise ConfigError(f"--device {device}: --data-parallel uses all devices; give a platform (cpu, gpu) or auto")
    platform = {"auto": None, "cuda": "gpu"}.get(platform, platform)
    try:
        return jd.make_mesh(platform)
    except RuntimeError as e:
        raise ConfigError(f"--device {device}: JAX has no {platform} backend here ({e})") from e


class JaxWGAN:
    """The JAX :class:`train.loop.Trainer`; ``mesh``: data-parallel over it (None: ``cfg.device``)."""

    framework = "jax"

    def __init__(self, cfg: TrainConfig, mesh: jax.sharding.Mesh | None = None) -> None:
        self.cfg = cfg
        self.mesh = mesh
        self.spec = step_spec(cfg)
        # The generator step does not involve the penalty: one compilation serves them all.
        self._gen_spec = dataclasses.replace(self.spec, penalty=None)
        self._sample_spec = self.spec
        if mesh is None:
            self.device = resolve_device(cfg.device)
            self.is_chief = True
        else:
            jd.check_divisible(mesh, batch_size=cfg.batch_size, gen_batch_size=cfg.gen_batch_size)
            # Initialise and sample on this process's first device of the mesh, as on one device.
            self.device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
            self.is_chief = jax.process_index() == 0
            batch = jd.batch_sharding(mesh)
            self.spec = dataclasses.replace(self.spec, batch_sharding=batch)
            self._gen_spec = dataclasses.replace(self._gen_spec, batch_sharding=batch)
        with classic_threefry():
            keys = [jax.random.PRNGKey(stream_seed(cfg.seed, s)) for s in ("init", "latents", "penalty")]
            state = jax.device_put(_init_state(self._sample_spec, keys[0], Streams(*keys[1:])), self.device)
        self.state = state if mesh is None else jd.replicate(jax.device_get(state), mesh)
        paths, self._treedef = jax.tree_util.tree_flatten_with_path(self.state)
        self._names = [jax.tree_util.keystr(tuple(p), simple=True, separator="/") for p, _ in paths]
        self._shapes = [tuple(leaf.shape) for _, leaf in paths]

    def _put(self, tree: Any, own: bool = False) -> Any:
        """Host values -> its device, or replicated over the mesh unless ``own`` (the chief's alone)."""
        if self.mesh is not None and not own:
            return jd.replicate(tree, self.mesh)
        return jax.device_put(tree, self.device) if self.device is not None else tree

    def _local(self, tree: Any) -> Any:
        """This process's copy (no communication: everything the steps return is replicated)."""
        return tree if self.mesh is None else jax.tree.map(jd.local_copy, tree)

    def _lr(self, base: float, step: int) -> jax.Array:
        return self._put(np.asarray(lr_at(base, step, self.cfg.steps, self.cfg.lr_decay), np.float32))

    def _floats(self, metrics: Mapping[str, jax.Array]) -> dict[str, float]:
        return {k: float(v) for k, v in jax.device_get(self._local(dict(metrics))).items()}

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        lr = self._lr(self.cfg.lr_d, step)
        with classic_threefry():
            if self.mesh is None:
                x = self._put(jnp.asarray(real, jnp.float32))
                self.state, metrics = _critic_step(self.spec, self.state, x, lr)
            else:
                x = jd.global_batch(np.asarray(real, np.float32), self.mesh)
                self.state, metrics = sharded_steps(self.mesh)[0](self.spec, self.state, x, lr)
        return self._floats(metrics)

    def generator_step(self, step: int) -> dict[str, float]:
        lr = self._lr(self.cfg.lr_g, step)
        step_fn = _generator_step if self.mesh is None else sharded_steps(self.mesh)[1]
        with classic_threefry():
            self.state, metrics = step_fn(self._gen_spec, self.state, lr)
        return self._floats(metrics)

    def sample(self, z: np.ndarray) -> np.ndarray:
        zz = self._put(jnp.asarray(z, jnp.float32), own=True)
        ema = self._local((self.state.ema, self.state.ema_stats))
        return to_uint8(np.asarray(_sample_images(self._sample_spec, *ema, zz)))

    def clip_critic_weights(self, c: float) -> None:
        """``--clip-weights C``: every critic parameter clipped to [-C, C]."""
        self.state = self.state._replace(critic=_clip_params(self.state.critic, self._put(np.float32(c))))

    def critic_scores(self, images: np.ndarray) -> np.ndarray:
        """The critic's scores f(x) on NHWC images in [-1, 1], shape (N,)."""
        x = self._put(jnp.asarray(images, jnp.float32), own=True)
        return np.asarray(_critic_scores(self._sample_spec, *self._local((self.state.critic, self.state.critic_stats)), x))

    def state_arrays(self) -> dict[str, np.ndarray]:
        # Copies: the device buffers are donated to the next step.
        leaves = jax.device_get(self._local(jax.tree_util.tree_leaves(self.state)))
        return {name: np.array(leaf, copy=True) for name, leaf in zip(self._names, leaves, strict=True)}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = ckpt.restore_arrays(arrays, self.state_arrays(), context="jax trainer state")
        leaves = [np.asarray(arrays[name]).reshape(shape) for name, shape in zip(self._names, self._shapes, strict=True)]
        if self.mesh is None:
            leaves = [jnp.asarray(leaf) for leaf in leaves]
        self.state = self._put(jax.tree_util.tree_unflatten(self._treedef, leaves))

    def sync_stop(self, requested: bool) -> bool:
        """Stop every process at the same iteration when any of them was signalled."""
        return jd.any_process(requested) if self.mesh is not None else requested


TRAINER = JaxWGAN

def build_jax_parser() -> argparse.ArgumentParser:
    """The shared command line plus the JAX data-parallel flags (they land in ``cfg.extra``)."""
    parser = build_parser("jax")
    g = parser.add_argument_group("distributed (JAX)")
    g.add_argument("--data-parallel", action="store_true", default=None,
                   help="shard each batch over all devices of --device's platform (every host's with "
                        "--multihost); batch sizes must be divisible by the device count")
    g.add_argument("--multihost", action="store_true", default=None,
                   help="call jax.distributed.initialize() first (one process per host); implies --data-parallel")
    g.add_argument("--coordinator-address", default=None, help="--multihost: HOST:PORT of process 0 "
                   "(omit where JAX detects the cluster: SLURM, Cloud TPU, ...)")
    g.add_argument("--num-processes", type=int, default=None, help="--multihost: number of processes")
    g.add_argument("--process-id", type=int, default=None, help="--multihost: this process's index (0 = chief)")
    return parser


def make_trainer(cfg: TrainConfig) -> JaxWGAN:
    extra = cfg.extra
    # Per-launch settings (they differ between processes and runs): kept out of config.json.
    launch = {k: extra.pop(k, None) for k in ("coordinator_address", "num_processes", "process_id")}
    if extra.get("multihost"):
        jd.initialize(launch["coordinator_address"], launch["num_processes"], launch["process_id"])
    elif any(v is not None for v in launch.values()):
        raise ConfigError("--coordinator-address, --num-processes and --process-id need --multihost")
    if not (extra.get("data_parallel") or extra.get("multihost")):
        return JaxWGAN(cfg)
    mesh = data_parallel_mesh(cfg.device)
    loop.log.info("jax: %s", jd.describe(mesh))
    return JaxWGAN(cfg, mesh)


if __name__ == "__main__":
    sys.exit(cli.main("jax", make_trainer, parser=build_jax_parser()))
