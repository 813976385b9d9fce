"""Data-parallel JAX training on ``jax.sharding`` and ``jax.distributed``; see docs/distributed.md."""

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
    """``jax.distributed.initialize`` before anything touches JAX's devices; None: detected."""
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
