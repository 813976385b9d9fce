"""Data-parallel training for the torch trainer on PyTorch's own engine (DDP, ``torchrun``).

Launch (one process per GPU, or per CPU worker with gloo)::

    torchrun --standalone --nproc_per_node=2 -m train.torch_wgan --preset smoke --out runs/ddp

``train.torch_wgan`` sees torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and calls
:func:`init_from_env`: NCCL on CUDA (one device per local rank), gloo on CPU (``--dist-backend``
overrides). A single process (no ``WORLD_SIZE``, or 1) takes the unchanged single-process path.

Semantics (each replica holds ``batch_size / world_size`` of the global batch):

* Every replica gets the same global batch from the loop's data iterator and the same global
  latents from the (identically seeded) latent stream, and keeps its own shard (rows
  ``rank * b : (rank + 1) * b``); so the global batch is exactly the single-process one.
* Critic: one forward on ``cat([real, fake])`` through the DDP-wrapped critic; the penalty's
  extra passes (VALP power iteration and adversarial pass, GP's double backward) run on the
  inner module. Their gradients reach the same parameters, and ``backward`` runs once per
  critic step, so DDP all-reduces each gradient exactly once (``find_unused_parameters`` is not
  needed: every critic parameter is used by the DDP forward).
* Generator: the BatchNorm layers become :class:`ReplicaBatchNorm2d` (statistics over the global
  batch, differentiable all-reduce; works with gloo on CPU, where ``nn.SyncBatchNorm`` does
  not), so a distributed step equals the single-process step on the same global batch and the
  running statistics stay identical on every replica.
* Penalty randomness: replica ``r`` has its own stream (``train.seeds.stream_seed(seed, "penalty", r)``; replica 0 keeps the
  single-process seed), so replicas draw different VALP directions / GP interpolates.
* Penalty reduction: ``mean`` needs nothing (DDP averages); ``sum`` scales the local penalty by
  ``world_size``; ``max`` keeps only the replica holding the global maximum (times
  ``world_size``), so the gradient is that of the global reduction in every case.
* The AL constraint R(L) and the logged statistics are all-reduced (means averaged, maxima
  maxed) before the multiplier update, so ``mu`` is identical on every replica.
* Only rank 0 (``is_chief``) writes logs, samples and checkpoints; ``state_arrays`` gathers the
  replicas' penalty streams (key ``rng/penalty_replicas``) so a resumed run is exact; every
  replica resumes from the checkpoint in ``--out`` (all replicas must see that directory).
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from train.config import ConfigError
from train.penalties import reductions_for

log = logging.getLogger("valr.train")

BACKENDS = ("auto", "nccl", "gloo")
# Statistics reduced with max, not mean (train.penalties.replica_reduction: the "max_" ones).
MAX_KEYS = frozenset({"max_violation", "max_quotient", "max_grad_norm"})


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _device_for(spec: str, local_rank: int) -> torch.device:
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available to this torch build")
        if ":" in spec:
            log.warning("--device %s: under torchrun each process uses cuda:LOCAL_RANK (cuda:%d)", spec, local_rank)
        return torch.device("cuda", local_rank)
    raise ConfigError(f"--device {spec} is not supported by the torch trainer (use auto, cpu or cuda)")


def init_from_env(device: str = "auto", backend: str = "auto") -> DistContext | None:
    """Join the process group torchrun describes; None when this is a single process.

    Reuses an already initialised default group (e.g. tests that call ``init_process_group``)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {BACKENDS}, got {backend!r}")
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = env_world_size()
        if world <= 1:
            return None
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device_for(device, local_rank)
    chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ConfigError("--dist-backend nccl needs CUDA devices; use gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(chosen, **kwargs)
        atexit.register(_destroy)
    else:
        chosen = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=chosen)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(n: int, ctx: DistContext, flag: str) -> slice:
    """Rows of a global batch of ``n`` that replica ``ctx.rank`` keeps."""
    if n % ctx.world_size:
        raise ConfigError(f"{flag} ({n}) must be divisible by the number of replicas ({ctx.world_size})")
    b = n // ctx.world_size
    return slice(ctx.rank * b, (ctx.rank + 1) * b)


# ----------------------------------------------------------------------------- BatchNorm


class _SumOverReplicas(torch.autograd.Function):
    """all_reduce(sum) whose backward all-reduces the incoming gradient (public dist API only)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def sum_over_replicas(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum): the backward all-reduces the incoming gradients, so with
    DDP's averaging the parameter gradients are those of the global-batch computation."""
    return _SumOverReplicas.apply(t)


class ReplicaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the global batch of all replicas.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; two-pass mean/variance
    with differentiable all-reduces (``torch.distributed.nn``), so gradients are those of the
    single-process layer on the global batch. Assumes equal shard sizes on every replica.
    Eval mode, or no process group, is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        world = dist.get_world_size()
        count = x.shape[0] * x.shape[2] * x.shape[3] * world
        shape = (1, -1, 1, 1)
        mean = sum_over_replicas(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean.view(shape)
        var = sum_over_replicas(centred.square().sum(dim=(0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                self.running_mean.lerp_(mean.detach(), momentum)
                # Like F.batch_norm: the running variance is the unbiased estimate.
                self.running_var.lerp_(var.detach() * (count / max(count - 1, 1)), momentum)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by :class:`ReplicaBatchNorm2d`, in place,
    sharing the same parameter and buffer tensors."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = ReplicaBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


# ----------------------------------------------------------------------------- reductions


def all_reduce_stats(values: Mapping[str, torch.Tensor], world_size: int, *,
                     sum_keys: frozenset[str] = frozenset(),
                     max_keys: frozenset[str] = MAX_KEYS) -> dict[str, torch.Tensor]:
    """Mean over replicas of each scalar (sum for ``sum_keys``, max for ``max_keys``), in two
    collectives. gloo has no AVG, hence SUM / world_size."""
    out: dict[str, torch.Tensor] = {}
    for op, keys in ((dist.ReduceOp.SUM, [k for k in values if k not in max_keys]),
                     (dist.ReduceOp.MAX, [k for k in values if k in max_keys])):
        if not keys:
            continue
        packed = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        dist.all_reduce(packed, op=op)
        for i, k in enumerate(keys):
            v = packed[i]
            out[k] = v / world_size if op == dist.ReduceOp.SUM and k not in sum_keys else v
    return out


def max_owner_scale(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``world_size / k`` on each of the k ranks holding the global maximum of ``value``, else 0:
    with DDP's averaging, the gradient of the global max of a per-replica max-reduced penalty.
    Ties are shared equally, the one rule of all three frameworks (as the single-process max's
    gradient shares them in torch, TF and JAX; tf_distributed.penalty_weight)."""
    v = value.detach().float().reshape(1).clone()
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    mine = (value.detach().float().reshape(1) >= v).float()
    holders = mine.clone()
    dist.all_reduce(holders, op=dist.ReduceOp.SUM)
    return (mine / holders * ctx.world_size).to(value.dtype).reshape(())


def any_replica(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rng_states(gen: torch.Generator) -> np.ndarray:
    """Every replica's generator state, stacked by rank (uint8, (world_size, state bytes))."""
    states: list[np.ndarray | None] = [None] * dist.get_world_size()
    dist.all_gather_object(states, gen.get_state().numpy().copy())
    return np.stack([np.asarray(s, dtype=np.uint8) for s in states])


def derived_rng_seed(saved_state: np.ndarray, rank: int) -> int:
    """A deterministic seed for replica ``rank`` from replica 0's saved stream (resuming with
    another number of replicas than the checkpoint was written with)."""
    h = hashlib.sha256(np.asarray(saved_state, np.uint8).tobytes() + rank.to_bytes(4, "little"))
    return int.from_bytes(h.digest()[:8], "little")


def wrap_ddp(gen: nn.Module, critic: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The generator (its BatchNorm on global-batch statistics: same parameters and buffers) and
    the critic wrapped in DDP, for the passes whose backward syncs gradients."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    convert_batchnorm(gen)
    kw: dict[str, object] = {"device_ids": [device.index] if device.type == "cuda" else None}
    # No buffer broadcast before each forward: the generator's BN statistics are global, hence
    # identical on every replica, and the critic's (spectral norm's u, v) advance identically
    # on every replica from identical weights.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kw["forward_sync_buffers"] = False  # torch >= 2.13 (broadcast_buffers is deprecated)
    else:
        kw["broadcast_buffers"] = False
    return DDP(gen, **kw), DDP(critic, **kw)


def reduce_critic_stats(out: dict[str, torch.Tensor], constraint: torch.Tensor, reduction: str,
                        world_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Replica means, maxima and sums as ``train.penalties.replica_reduction`` says, with
    ``loss`` recomputed from the global parts. Two collectives."""
    values = {k: v for k, v in out.items() if k != "loss"}
    values["constraint"] = constraint
    how = reductions_for(values, reduction)
    red = all_reduce_stats(values, world_size, sum_keys=frozenset(k for k, v in how.items() if v == "sum"),
                           max_keys=frozenset(k for k, v in how.items() if v == "max"))
    constraint = red.pop("constraint").to(constraint.dtype)
    red["loss"] = red["penalty"] - red["wdist"]
    return {k: red[k] for k in out}, constraint
