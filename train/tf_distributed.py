"""Data-parallel TensorFlow training on ``tf.distribute``; semantics: docs/distributed.md."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from train.config import ConfigError

DISTRIBUTE_MODES = ("none", "mirrored", "multi_worker")


def split_cpu(n: int) -> None:
    """Split the first physical CPU into ``n`` logical devices, before TF's first op runs."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise ConfigError(f"--cpu-replicas {n}: TensorFlow is already initialised ({e}); "
                          "split the CPU before any TF op runs") from e


def make_strategy(mode: str, *, cpu_replicas: int = 0, device: str = "auto") -> tf.distribute.Strategy | None:
    """The strategy for ``--distribute`` ``mode`` (None for ``none``; docs/distributed.md)."""
    if mode not in DISTRIBUTE_MODES:
        raise ConfigError(f"--distribute must be one of {DISTRIBUTE_MODES}, got {mode!r}")
    if cpu_replicas < 0 or cpu_replicas == 1:
        raise ConfigError(f"--cpu-replicas must be 0 (off) or >= 2, got {cpu_replicas}")
    if cpu_replicas and mode != "mirrored":
        raise ConfigError("--cpu-replicas needs --distribute mirrored")
    if mode == "none":
        return None
    if device not in ("auto", "cpu") and not device.startswith(("gpu", "cuda")):
        raise ConfigError(f"--device {device} is not supported with --distribute {mode}")
    if mode == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise ConfigError("--distribute multi_worker needs the TF_CONFIG environment variable "
                              "(the cluster and this worker's task); see README")
        try:
            json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from e
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        split_cpu(cpu_replicas)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and device != "cpu" and not cpu_replicas:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus[:cpu_replicas] if cpu_replicas else cpus[:1])


def num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(v) for k, v in spec.items() if k in ("chief", "worker")))


def check_divisible(strategy: tf.distribute.Strategy, **sizes: int) -> int:
    """The number of replicas; a ConfigError naming the flag unless every size splits evenly."""
    n = strategy.num_replicas_in_sync
    for name, size in sizes.items():
        if size % n:
            raise ConfigError(f"--{name.replace('_', '-')} {size} must be divisible by the {n} replicas "
                              "(the global batch is split evenly across replicas)")
    return n


def distribute_batch(strategy: tf.distribute.Strategy, batch: Any) -> Any:
    """Rows [r*b, (r+1)*b) of the global ``batch`` (the same on every worker) on replica r's device."""
    n = strategy.num_replicas_in_sync
    total = int(batch.shape[0])
    if total % n:
        raise ValueError(f"a global batch of {total} cannot be split evenly across {n} replicas")
    b = total // n
    devices = tuple(strategy.extended.worker_devices)

    def value_fn(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        r = ctx.replica_id_in_sync_group
        with tf.device(devices[r % len(devices)]):
            part = batch[r * b:(r + 1) * b]
            return tf.identity(part) if tf.is_tensor(part) else tf.convert_to_tensor(part)

    return strategy.experimental_distribute_values_from_function(value_fn)


class ReplicaStream:
    """Stateless draws from one seed with the ``uniform``/``normal`` methods the penalties call on a
    ``tf.random.Generator``; call k uses ``fold_in(seed, k)``, k counted at trace time."""

    def __init__(self, seed: tf.Tensor) -> None:
        self.seed = tf.cast(seed, tf.int64)
        self.calls = 0

    def _next_seed(self) -> tf.Tensor:
        seed = tf.random.experimental.stateless_fold_in(self.seed, self.calls)
        self.calls += 1
        return seed

    def uniform(self, shape: Any, minval: float = 0.0, maxval: float | None = None,
                dtype: tf.DType = tf.float32) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, self._next_seed(), minval=minval,
                                           maxval=1.0 if maxval is None else maxval, dtype=dtype)

    def normal(self, shape: Any, mean: float = 0.0, stddev: float = 1.0, dtype: tf.DType = tf.float32) -> tf.Tensor:
        return tf.random.stateless_normal(shape, self._next_seed(), mean=mean, stddev=stddev, dtype=dtype)


def replica_stream(step_seed: tf.Tensor) -> ReplicaStream:
    """This replica's stream for one step: ``fold_in(step_seed, replica id)`` (call in replica context)."""
    ctx = tf.distribute.get_replica_context()
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
    return ReplicaStream(tf.random.experimental.stateless_fold_in(tf.cast(step_seed, tf.int64), rid))


def cross_replica(values: Mapping[str, tf.Tensor], how: Mapping[str, str] | str) -> dict[str, tf.Tensor]:
    """Scalars reduced over all replicas by ``mean``, ``sum`` or ``max``, one collective per kind."""
    ctx = tf.distribute.get_replica_context()
    kinds = {k: how if isinstance(how, str) else how[k] for k in values}
    out: dict[str, tf.Tensor] = {}
    for kind in ("mean", "sum", "max"):
        keys = [k for k in values if kinds[k] == kind]
        if not keys:
            continue
        vec = tf.stack([tf.cast(tf.reshape(values[k], []), tf.float32) for k in keys])
        if kind == "max":
            vec = tf.reduce_max(ctx.all_gather(vec[None], axis=0), axis=0)
        else:
            vec = ctx.all_reduce(tf.distribute.ReduceOp.MEAN if kind == "mean" else tf.distribute.ReduceOp.SUM, vec)
        out.update({k: tf.cast(vec[i], values[k].dtype) for i, k in enumerate(keys)})
    if unknown := set(kinds.values()) - {"mean", "sum", "max"}:
        raise ValueError(f"cannot reduce across replicas with {sorted(unknown)}")
    return out


def penalty_weight(penalty: tf.Tensor, reduce: str, num_replicas: int) -> tf.Tensor:
    """Gradient-free w_r with sum_r w_r * penalty_r = the global penalty in value and gradient: 1/R
    for mean, 1 for sum, for max the replicas holding the global maximum (ties shared equally)."""
    if reduce == "mean":
        return tf.constant(1.0 / num_replicas, penalty.dtype)
    if reduce == "sum":
        return tf.constant(1.0, penalty.dtype)
    if reduce == "max":
        ctx = tf.distribute.get_replica_context()
        value = tf.stop_gradient(penalty)
        top = tf.reduce_max(ctx.all_gather(tf.reshape(value, [1]), axis=0))
        mine = tf.cast(tf.equal(value, top), penalty.dtype)
        return mine / ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)
    raise ValueError(f"reduce must be 'mean', 'sum' or 'max', got {reduce!r}")


def any_replica(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True when ``flag`` is true on any worker (a collective; every worker must call it)."""
    if num_workers(strategy) <= 1:
        return flag
    values = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(float(flag)))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy() > 0)


def local_result(strategy: tf.distribute.Strategy, value: Any) -> Any:
    """The first local replica's copy of a value that every replica holds identically."""
    return strategy.experimental_local_results(value)[0]


def describe(strategy: tf.distribute.Strategy) -> str:
    return (f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replicas, "
            f"{num_workers(strategy)} worker(s), local devices {list(strategy.extended.worker_devices)}")
