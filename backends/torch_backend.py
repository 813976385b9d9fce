"""PyTorch adapter: eager and torch.compile (torch.autograd.grad is a graph break there)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import array_api_compat.torch as torch_namespace
import torch
from torch import nn


def _modules_of(critic: Any) -> list[nn.Module]:
    """The nn.Modules behind a critic: itself, the owner of a bound method, or a partial's func."""
    seen = []
    for candidate in (critic, getattr(critic, "__self__", None), getattr(critic, "func", None)):
        if isinstance(candidate, nn.Module):
            seen.append(candidate)
    return seen


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
            # autograd.grad w.r.t. r only: parameter .grad buffers are never written.
            (g,) = torch.autograd.grad(fn(r), (r,))
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
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} contains NaN or Inf values")
        return x

    @contextmanager
    def frozen_state(self, critic: Any) -> Iterator[None]:
        # In train mode, BatchNorm with track_running_stats=False normalises with batch
        # statistics exactly as before but leaves running_mean/var/num_batches untouched.
        norms = [m for mod in _modules_of(critic) for m in mod.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        saved = [m.track_running_stats for m in norms]
        for m in norms:
            if m.training:
                m.track_running_stats = False
        try:
            yield
        finally:
            for m, flag in zip(norms, saved, strict=True):
                m.track_running_stats = flag


BACKEND = TorchBackend()
