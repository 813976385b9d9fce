"""PyTorch adapter: eager and torch.compile (torch.autograd.grad is a graph break there)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import array_api_compat.torch as torch_namespace
import torch
from torch import nn
from torch.nn.utils import parametrize

from valr_core.interface import critic_owners


def _modules_of(critic: Any) -> list[nn.Module]:
    """The nn.Modules behind a critic: itself, the owner of a bound method, a partial's func and
    arguments, and the modules a plain function closes over."""
    candidates = critic_owners(critic)
    seen: list[nn.Module] = []
    for candidate in candidates:
        if isinstance(candidate, nn.Module) and all(candidate is not m for m in seen):
            seen.append(candidate)
    return seen


def _visible(critic: Any) -> bool:
    """Whether every module the critic can run is known: a module or a module's bound method."""
    return isinstance(critic, nn.Module) or isinstance(getattr(critic, "__self__", None), nn.Module)


_STATS = ("running_mean", "running_var", "num_batches_tracked")
_warned_unseen = False


class _Freezer:
    """Leaves the running statistics of normalisation modules, and the state of stateful weight
    parametrisations, untouched while active.

    BatchNorm in train mode runs with ``track_running_stats`` off: it normalises with batch
    statistics exactly as before, and passes no running buffers to the kernel (so autograd
    saves none that a restore could invalidate). Other modules with running statistics
    (InstanceNorm(track_running_stats=True) updates them even with the flag off) get their
    buffers snapshotted and copied back.

    A parametrisation that keeps state in buffers (``parametrizations.spectral_norm``: its
    power-iteration vectors ``_u``, ``_v``) runs with ``training`` off: spectral_norm then takes
    no power-iteration step and divides by the sigma of its current ``_u``, ``_v``, i.e. the
    same weight as the critic's own training pass just before (``fx=critic(x)``)."""

    def __init__(self) -> None:
        self.flipped: list[nn.Module] = []
        self.evaluated: list[nn.Module] = []
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.done: set[int] = set()
        self.done_parametrized: set[int] = set()

    def freeze_parametrizations(self, m: nn.Module) -> bool:
        """Stateful parametrisations of ``m`` to eval mode; whether there were any."""
        if id(m) in self.done_parametrized or not parametrize.is_parametrized(m):
            return False
        self.done_parametrized.add(id(m))
        found = False
        for plist in m.parametrizations.values():
            for p in plist:
                if p.training and _has_buffers(p):
                    p.training = False
                    self.evaluated.append(p)
                    found = True
        return found

    def freeze(self, m: nn.Module) -> None:
        if id(m) in self.done or not (m.training and getattr(m, "track_running_stats", False)):
            return
        self.done.add(id(m))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            self.flipped.append(m)
            return
        for name in _STATS:
            buf = getattr(m, name, None)
            if isinstance(buf, torch.Tensor):
                self.saved.append((buf, buf.detach().clone()))

    def restore(self) -> None:
        for m in self.flipped:
            m.track_running_stats = True
        for p in self.evaluated:
            p.training = True
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._NormBase)


def _has_buffers(m: nn.Module) -> bool:
    return next(m.buffers(recurse=False), None) is not None


class TorchBackend:
    name = "torch"

    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def is_rng(self, rng: Any) -> bool:
        return isinstance(rng, torch.Generator)

    def rng_help(self) -> str:
        return "torch.Generator(device=x.device).manual_seed(seed)"

    def namespace(self, x: torch.Tensor) -> Any:
        return torch_namespace

    def grad(self, fn: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            # enable_grad() cannot undo inference_mode, and autograd's own error does not say why.
            raise RuntimeError("VALP/GP/LP need autograd for the critic's input gradient: call the penalty "
                               "outside torch.inference_mode() (torch.no_grad() is fine)")
        r = r.detach().requires_grad_(True)
        with torch.enable_grad():
            value = fn(r)
            if not value.requires_grad:
                return torch.zeros_like(r)  # fn ignores r (a constant critic): the zero gradient
            # autograd.grad w.r.t. r only: parameter .grad buffers are never written. A critic
            # that ignores x but has parameters gives zeros too, as in TF and JAX.
            (g,) = torch.autograd.grad(value, (r,), allow_unused=True, materialize_grads=True)
        return g.detach()

    def input_grad(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = fn(x)
            if not value.requires_grad:
                return torch.zeros_like(x)  # fn depends on nothing differentiable
            # w.r.t. x only (parameter .grad untouched); create_graph keeps the result
            # differentiable w.r.t. the parameters for the caller's backward.
            (g,) = torch.autograd.grad(value, (x,), create_graph=True, allow_unused=True, materialize_grads=True)
        return g

    def stop_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    def _check_device(self, rng: torch.Generator, like: torch.Tensor) -> None:
        if rng.device.type != like.device.type:
            raise ValueError(f"rng is a torch.Generator on {rng.device} but x is on {like.device}; create it with torch.Generator(device=x.device)")

    def uniform(self, rng: torch.Generator, shape: Sequence[int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Generator]:
        self._check_device(rng, like)
        return torch.rand(tuple(shape), generator=rng, dtype=like.dtype, device=like.device), rng

    def normal(self, rng: torch.Generator, shape: Sequence[int], like: torch.Tensor) -> tuple[torch.Tensor, torch.Generator]:
        self._check_device(rng, like)
        return torch.randn(tuple(shape), generator=rng, dtype=like.dtype, device=like.device), rng

    def shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def is_floating(self, x: torch.Tensor) -> bool:
        return x.is_floating_point()

    def dtype_name(self, x: torch.Tensor) -> str:
        return str(x.dtype).removeprefix("torch.")

    def check_finite(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return x  # a data-dependent branch would break the graph; checked eagerly only
        if x.device.type != "cpu":
            # Reading a device flag on the host stalls the stream on every call (issue 9: +7.7%
            # vs +3.0% over hand-written VALP on an H200), and torch has no public asynchronous
            # assert (torch._assert_async is private and kills the CUDA context): NaN/Inf anywhere
            # in x turn all of x NaN on the device, so the penalty is NaN and the caller's
            # non-finite guard sees it. One fused reduction and select, no host sync.
            return torch.where(torch.isfinite(x).all(), x, torch.full_like(x, float("nan")))
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} contains NaN or Inf values")
        return x

    def require(self, x: Any, condition: Any, message: str) -> Any:
        if isinstance(condition, torch.Tensor) and (condition.device.type != "cpu" or torch.compiler.is_compiling()):
            return x  # reading it would be a host sync (or a graph break): not checked
        if not bool(condition):
            raise ValueError(message)
        return x

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        freezer = _Freezer()
        for mod in _modules_of(critic):
            for m in mod.modules():
                if _is_norm(m):
                    freezer.freeze(m)
                freezer.freeze_parametrizations(m)
        handle = None
        if not _visible(critic) and not torch.compiler.is_compiling():
            # A plain function may run modules VALP cannot see (globals, attributes of other
            # objects): a global pre-hook freezes any normalisation module or stateful
            # parametrisation (before the module's forward reads its weight) that runs during
            # VALP's passes, and says once how to make it explicit.
            def pre_hook(module: nn.Module, args: Any) -> None:
                global _warned_unseen
                if _is_norm(module) and id(module) not in freezer.done and module.training and module.track_running_stats:
                    freezer.freeze(module)
                    what = "running statistics were"
                elif freezer.freeze_parametrizations(module):
                    what = "parametrisation state (spectral_norm's power iteration) was"
                else:
                    return
                if not _warned_unseen:
                    _warned_unseen = True
                    warnings.warn(
                        f"VALP's passes ran {type(module).__name__} in train mode through a critic function that "
                        f"does not show its modules; its {what} frozen for those passes. Pass "
                        "freeze=<your nn.Module> (or the module itself as the critic) to say so explicitly.",
                        RuntimeWarning, stacklevel=2)

            handle = nn.modules.module.register_module_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
            freezer.restore()


BACKEND = TorchBackend()
