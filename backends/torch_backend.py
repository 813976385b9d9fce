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
from torch.nn.utils.spectral_norm import SpectralNorm

from valr_core.interface import critic_owners

_STATS = ("running_mean", "running_var", "num_batches_tracked")
_warned_unseen = False


class _Freezer:
    """Leaves running statistics and stateful parametrisations (spectral_norm's ``_u``, ``_v``)
    untouched. BatchNorm runs with ``track_running_stats`` off (no running buffers reach the kernel,
    so autograd saves none a restore could invalidate); other modules' statistics are copied back.
    Parametrisations run with ``training`` off: the weight of the critic's own pass just before."""

    def __init__(self) -> None:
        self.flipped: list[nn.Module] = []
        self.evaluated: list[nn.Module] = []
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.done: set[int] = set()
        self.done_parametrized: set[int] = set()
        self.hooks: list[tuple[SpectralNorm, int]] = []

    def freeze_parametrizations(self, m: nn.Module) -> bool:
        """Stateful parametrisations of ``m`` to eval mode, and the deprecated hook-based
        ``torch.nn.utils.spectral_norm`` to no power iteration; whether there were any."""
        if id(m) in self.done_parametrized:
            return False
        if not parametrize.is_parametrized(m):
            return self._freeze_spectral_hooks(m)
        self.done_parametrized.add(id(m))
        stateful = [p for plist in m.parametrizations.values() for p in plist
                    if p.training and next(p.buffers(recurse=False), None) is not None]
        for p in stateful:
            p.training = False
        self.evaluated += stateful
        return bool(stateful)

    def _freeze_spectral_hooks(self, m: nn.Module) -> bool:
        """The hook-based spectral norm iterates when ``m.training``; with 0 iterations it uses
        the current u, v (as in eval mode) and ``m`` itself stays in train mode. No public API
        lists a module's hooks (torch's own ``remove_spectral_norm`` reads this dict too)."""
        self.done_parametrized.add(id(m))
        hooks = [h for h in m._forward_pre_hooks.values() if isinstance(h, SpectralNorm) and h.n_power_iterations > 0]
        for h in hooks:
            self.hooks.append((h, h.n_power_iterations))
            h.n_power_iterations = 0
        return bool(hooks and m.training)

    def freeze(self, m: nn.Module) -> bool:
        """Freeze a normalisation module's running statistics; whether it was newly frozen."""
        if id(m) in self.done or not (m.training and getattr(m, "track_running_stats", False)):
            return False
        self.done.add(id(m))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            self.flipped.append(m)
            return True
        for name in _STATS:
            buf = getattr(m, name, None)
            if isinstance(buf, torch.Tensor):
                self.saved.append((buf, buf.detach().clone()))
        return True

    def restore(self) -> None:
        for m in self.flipped:
            m.track_running_stats = True
        for p in self.evaluated:
            p.training = True
        for hook, iterations in self.hooks:
            hook.n_power_iterations = iterations
        with torch.no_grad():
            for buf, value in self.saved:
                buf.copy_(value)


def _input_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                create_graph: bool) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = fn(x)
        if not value.requires_grad:
            return torch.zeros_like(x)  # fn ignores x (a constant critic): the zero gradient
        # W.r.t. x only: parameter .grad buffers are never written. A critic that ignores x but
        # has parameters gives zeros too, as in TF and JAX.
        (g,) = torch.autograd.grad(value, (x,), create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return g


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
        return _input_grad(fn, r, create_graph=False).detach()

    def input_grad(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # create_graph keeps the result differentiable w.r.t. the parameters (double backward).
        return _input_grad(fn, x, create_graph=True)

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
            # A host read stalls the stream and torch has no public async assert: NaN/Inf anywhere
            # turn all of x NaN, so the caller's non-finite guard sees a NaN penalty.
            return torch.where(torch.isfinite(x).all(), x, torch.full_like(x, float("nan")))
        return self.require(x, bool(torch.isfinite(x).all()), f"{what} contains NaN or Inf values")

    def require(self, x: Any, condition: Any, message: str) -> Any:
        if isinstance(condition, torch.Tensor) and (condition.device.type != "cpu" or torch.compiler.is_compiling()):
            return x  # reading it would be a host sync (or a graph break): not checked
        if not bool(condition):
            raise ValueError(message)
        return x

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        freezer = _Freezer()
        for mod in {id(c): c for c in critic_owners(critic) if isinstance(c, nn.Module)}.values():
            for m in mod.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    freezer.freeze(m)
                freezer.freeze_parametrizations(m)
        handle = None
        shown = isinstance(critic, nn.Module) or isinstance(getattr(critic, "__self__", None), nn.Module)
        if not shown and not torch.compiler.is_compiling():
            # A plain function may run modules VALP cannot see: a global pre-hook freezes any that
            # runs during VALP's passes (before its forward reads the weight), warning once.
            def pre_hook(module: nn.Module, args: Any) -> None:
                global _warned_unseen
                if isinstance(module, nn.modules.batchnorm._NormBase) and freezer.freeze(module):
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
