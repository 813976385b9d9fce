"""Data-parallel training for the JAX trainer on JAX's own machinery (``jax.sharding``, ``jax.distributed``).

Launch (README, "Distributed training"): all local devices of one host::

    python -m train.jax_wgan --data-parallel --preset smoke --out runs/jax-dp

several hosts (the same command on every host, one process per host)::

    python -m train.jax_wgan --data-parallel --multihost --coordinator-address HOST0:1234 \\
        --num-processes 2 --process-id 0 ...   # --process-id 1 on the second host

(on SLURM, Cloud TPU and other clusters ``jax.distributed.initialize()`` finds these itself).

Semantics: a 1-D :class:`jax.sharding.Mesh` over all devices (``jax.devices()``: every host's
once ``jax.distributed`` is initialised) with the axis ``"data"``. The loop's data iterator
yields the same global batch (``batch_size``) in every process; each process places its rows
on its own devices (:func:`global_batch`), sharded ``P("data")``. Parameters, optimiser
slots, EMA, BatchNorm statistics, the AL multiplier and the PRNG key are replicated
(``P()``). The unchanged jitted steps of :mod:`train.jax_wgan` are compiled with these in/out
shardings, so XLA partitions them: every per-sample computation (the critic's passes, VALP's
directions and perturbed passes, GP's interpolates, the generator and its BatchNorm) runs on
the device holding that sample, and every batch mean (the losses, the parameter gradients,
the batch statistics, the AL constraint E[L] and the violation statistics) is a global mean
(an all-reduce). Hence the AL multiplier and the violation statistics are averaged across
replicas, and the multiplier is identical on every device.

Randomness: the key is replicated and draws are made for the global batch, so each sample,
hence each replica, gets its own VALP direction / epsilon / GP alpha. JAX's random bits do not
depend on the sharding, so a distributed step draws exactly what the single-device step
draws (tests/test_distributed_jax.py). The trainer keeps the classic (non-partitionable)
threefry of :func:`train.jax_wgan.classic_threefry` here too: each device then computes the
random bits of the whole global batch and keeps its rows (a few uniform numbers per input
element, cheap beside the critic's convolutions), and in exchange single-device and
data-parallel runs draw the same stream, so a checkpoint resumes exactly on either.

Only process 0 (``is_chief``) writes config, logs, samples and checkpoints; every process
resumes from the checkpoint in ``--out`` (all hosts must see that directory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train.config import ConfigError

log = logging.getLogger("valr.train")

DATA_AXIS = "data"
_initialized = False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (multi-host); must run before anything else touches JAX's
    devices. Arguments left None are detected from the cluster environment (SLURM, TPU, ...)."""
    global _initialized
    if _initialized:
        return
    kwargs = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                ("process_id", process_id)) if v is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--multihost: jax.distributed.initialize({kwargs}) failed: {e}") from e
    _initialized = True


def make_mesh(platform: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all of ``platform``'s, every host's)."""
    devs = list(devices) if devices is not None else jax.devices(platform)
    return Mesh(np.array(devs), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_divisible(mesh: Mesh, **sizes: int) -> None:
    n = mesh.devices.size
    for name, size in sizes.items():
        if size % n:
            raise ConfigError(f"--{name.replace('_', '-')} must be divisible by the {n} data-parallel devices, "
                              f"got {size}")


def _from_host(x: Any, sharding: NamedSharding) -> jax.Array:
    a = np.asarray(x)
    # Each process supplies the rows of its own devices: works alike on one host and many.
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def global_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global batch (identical in every process) sharded over the mesh's ``"data"`` axis."""
    return _from_host(x, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (identical in every process) -> arrays replicated on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: _from_host(a, sharding), tree)


def local_copy(x: jax.Array) -> jax.Array:
    """This process's copy of a replicated array (on its first device); no communication."""
    return x.addressable_data(0)


def any_process(flag: bool) -> bool:
    """True in every process when ``flag`` is True in any (a collective when there are several)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def describe(mesh: Mesh) -> str:
    kinds = sorted({d.platform for d in mesh.devices.flat})
    return (f"data-parallel over {mesh.devices.size} {'/'.join(kinds)} device(s) in {jax.process_count()} "
            f"process(es); this is process {jax.process_index()}")
