"""Data-parallel torch training on DDP (``torchrun``); semantics: docs/distributed.md."""

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

log = logging.getLogger("valr.train")

BACKENDS = ("auto", "nccl", "gloo")


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


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """``--device``: auto (cuda when available), cpu, cuda[:N], gpu[:N]; cuda:``local_rank`` if given."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec != "auto" and not spec.startswith(("cuda", "gpu")):
        raise ConfigError(f"--device {spec} is not supported by the torch trainer (use auto, cpu or cuda[:N])")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available to this torch build")
    if local_rank is None:
        return torch.device("cuda" if spec == "auto" else spec.replace("gpu", "cuda", 1))
    if ":" in spec:
        log.warning("--device %s: under torchrun each process uses cuda:LOCAL_RANK (cuda:%d)", spec, local_rank)
    return torch.device("cuda", local_rank)


def init_from_env(device: str = "auto", backend: str = "auto") -> DistContext | None:
    """Join torchrun's process group (or reuse an initialised one); None for a single process."""
    if backend not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {BACKENDS}, got {backend!r}")
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ConfigError("--dist-backend nccl needs CUDA devices; use gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(chosen, **({"device_id": dev} if dev.type == "cuda" else {}))
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


class _SumOverReplicas(torch.autograd.Function):
    """Differentiable all-reduce (sum): with DDP's averaging, the global batch's gradients."""

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


class ReplicaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the global batch (equal shards assumed):
    gradients, parameters, buffers and state-dict keys as ``nn.BatchNorm2d``'s on that batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        world = dist.get_world_size()
        count = x.shape[0] * x.shape[2] * x.shape[3] * world
        shape = (1, -1, 1, 1)
        mean = _SumOverReplicas.apply(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean.view(shape)
        var = _SumOverReplicas.apply(centred.square().sum(dim=(0, 2, 3))) / count
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
    """Every ``nn.BatchNorm2d`` replaced in place by a :class:`ReplicaBatchNorm2d` sharing its tensors."""
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


def all_reduce_stats(values: Mapping[str, torch.Tensor], world_size: int,
                     how: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Each scalar reduced over replicas by ``how[key]`` (default mean; gloo has no AVG: SUM / world)."""
    kinds = {k: (how or {}).get(k, "mean") for k in values}
    out: dict[str, torch.Tensor] = {}
    for op, keys in ((dist.ReduceOp.SUM, [k for k in values if kinds[k] != "max"]),
                     (dist.ReduceOp.MAX, [k for k in values if kinds[k] == "max"])):
        if not keys:
            continue
        packed = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        dist.all_reduce(packed, op=op)
        for i, k in enumerate(keys):
            out[k] = packed[i] / world_size if kinds[k] == "mean" else packed[i]
    return out


def max_owner_scale(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``world_size / k`` on each of the k ranks holding the global maximum of ``value``, else 0:
    with DDP's averaging, the gradient of the global max (ties shared, as in all frameworks)."""
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
    """Replica ``rank``'s seed from replica 0's saved stream (resuming on another world size)."""
    h = hashlib.sha256(np.asarray(saved_state, np.uint8).tobytes() + rank.to_bytes(4, "little"))
    return int.from_bytes(h.digest()[:8], "little")


def wrap_ddp(gen: nn.Module, critic: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The generator (BatchNorm on global-batch statistics) and the critic wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    convert_batchnorm(gen)
    kw: dict[str, object] = {"device_ids": [device.index] if device.type == "cuda" else None}
    # No buffer broadcast: BN statistics are global and SN's u, v advance identically everywhere.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        kw["forward_sync_buffers"] = False  # torch >= 2.13 (broadcast_buffers is deprecated)
    else:
        kw["broadcast_buffers"] = False
    return DDP(gen, **kw), DDP(critic, **kw)
