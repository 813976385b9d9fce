"""PyTorch front door: VALP as an ``nn.Module``, so ``.to()``, ``state_dict()`` and DDP carry the
augmented-Lagrangian multiplier and the random state; ``valp_penalty`` without a multiplier.
VALP's extra passes leave BatchNorm statistics and ``spectral_norm``'s vectors alone
(docs/usage.md, "PyTorch")."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..objectives import ALState
from ..valp import VALP, ValpAux

__all__ = ["VALPModule", "valp_penalty"]


def _combination(key: str, reduction: str) -> str:
    """How a statistic of several calls combines into that of one call on all their samples."""
    name = key.rsplit("/", 1)[-1]
    if name == "penalty":
        return reduction
    if name == "mu":
        return "latest"
    if name.startswith("max_"):
        return "max"
    return "mean"


def _combined(old: torch.Tensor | None, value: torch.Tensor, rule: str, n: int) -> torch.Tensor:
    """``old`` with one more call's ``value`` (``n`` samples): max, sum, or sum of value * n."""
    if rule == "mean":
        value = value * n
    if old is None:
        return value
    old = old.to(value.device)
    return torch.maximum(old, value) if rule == "max" else old + value


class VALPModule(nn.Module):
    """VALP with its state as module state: ``mu`` a float32 buffer (kept by ``.half()``), the
    ``torch.Generator`` state extra state. ``step()`` (once per critic step, in every mode) updates
    mu from every call since the last step as one call on all their samples, averaged over
    replicas under ``torch.distributed``; give each replica its own ``seed`` (``seed=rank``)."""

    mu: torch.Tensor

    def __init__(self, valp: VALP | None = None, *, seed: int = 0, **config: Any) -> None:
        super().__init__()
        if valp is not None and config:
            raise TypeError("pass either a VALP instance or its keyword config, not both")
        valp = valp if valp is not None else VALP(backend="torch", **config)
        if valp.backend not in (None, "torch", "pytorch"):
            raise ValueError(f"VALPModule needs a torch VALP, got backend={valp.backend!r}")
        self.valp = valp
        self.register_buffer("mu", torch.zeros((), dtype=torch.float32))
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.last: ValpAux | None = None
        self._stats: dict[str, torch.Tensor] = {}  # combined over the calls of this step
        self._stats_samples = 0
        self._step_done = True  # the next call starts a new step's statistics
        self._reset_pending()

    def forward(self, critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fx: torch.Tensor | None = None, freeze: Any = None) -> torch.Tensor:
        """The penalty to add to the critic's loss (``fx=critic(x)`` saves a forward pass); under
        DDP pass the unwrapped critic (``ddp.module``) and ``fx`` from the DDP forward."""
        if x.device != self.mu.device:
            raise ValueError(f"x is on {x.device} but VALPModule is on {self.mu.device}; call valp.to({str(x.device)!r}) (or register it in your model)")
        al = self.valp.mode == "al"
        loss, self.last = self.valp.loss(critic, x, self.generator, ALState(self.mu) if al else None, fx=fx, freeze=freeze)
        self._accumulate(self.last, al)
        return loss

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """Detached scalars (``aux.stats`` keys, on the device) of this replica's calls of the
        current critic step (after ``step()``: the step just taken), as one call on all samples."""
        n, how = self._stats_samples, self.valp.reduction
        return {k: v / n if _combination(k, how) == "mean" else v for k, v in self._stats.items()}

    def _accumulate(self, aux: ValpAux, al: bool) -> None:
        if self._step_done:
            self._stats, self._stats_samples, self._step_done = {}, 0, False
        n = int(aux.violations.violations.shape[0])
        for key, value in aux.stats.items():
            rule = _combination(key, self.valp.reduction)
            if rule == "latest":  # valp/mu is the buffer itself, which step() updates in place
                self._stats[key] = value.detach().clone()
            else:
                self._stats[key] = _combined(self._stats.get(key), value.detach(), rule, n)
        self._stats_samples += n
        if al:
            c = aux.constraint.detach().to(torch.float32)
            self._sum = _combined(self._sum, c, self.valp.reduction, n)
            self._count += n

    def _reset_pending(self) -> None:
        self._sum: torch.Tensor | None = None  # R(L) combined by _combined since the last step
        self._count = 0  # regularised samples since the last step

    def pending_constraint(self) -> torch.Tensor:
        """The constraint ``step()`` would use: this replica's calls since the last step combined
        as one call, then reduced over replicas (max for the ``max`` reduction, else the mean)."""
        if self._sum is None:
            raise RuntimeError("VALPModule.step() called before the penalty was computed since the last step")
        how, c = self.valp.reduction, self._sum
        if how == "mean":
            c = torch.stack([c, torch.tensor(float(self._count), device=c.device)])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            c = c.clone()
            dist.all_reduce(c, op=dist.ReduceOp.MAX if how == "max" else dist.ReduceOp.SUM)
            if how == "sum":
                c = c / dist.get_world_size()
        return c[0] / c[1] if how == "mean" else c

    @torch.no_grad()
    def step(self) -> None:
        """The AL multiplier update, after the critic's optimiser step; in every mode it ends the
        step whose calls ``stats`` combines."""
        self._step_done = True
        if self.valp.mode != "al":
            return
        self.mu.copy_(self.valp.update(ALState(self.mu), self.pending_constraint()).mu)
        self._reset_pending()

    # ``nn.Module._apply`` is the one hook every .to()/.cuda()/.half() goes through; torch has no
    # public alternative for a module that must keep one buffer float32 and move a
    # torch.Generator (not a tensor) with its device, so it is overridden here, calling super().
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> VALPModule:
        super()._apply(fn, *args, **kwargs)
        if self.mu.dtype != torch.float32:  # .half()/.double() on the model: mu stays float32
            self.mu = self.mu.to(torch.float32)
        if self.generator.device != self.mu.device:  # states are device-specific: draw a seed
            g = self.generator
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
            self.generator = torch.Generator(device=self.mu.device).manual_seed(seed)
        if self._sum is not None and self._sum.device != self.mu.device:
            self._sum = self._sum.to(self.mu.device)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator_state": self.generator.get_state(), "generator_device": str(self.generator.device)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = torch.device(state["generator_device"])
        if saved.type == self.generator.device.type:
            self.generator.set_state(state["generator_state"])
            return
        # Another device's generator state cannot be loaded here; continue deterministically.
        warnings.warn(f"VALPModule: random state saved on {saved} loaded on {self.generator.device}; reseeding from it", stacklevel=2)
        seed = int.from_bytes(bytes(state["generator_state"][:8].tolist()), "little") & (2**62 - 1)
        self.generator = torch.Generator(device=self.generator.device).manual_seed(seed)

    def extra_repr(self) -> str:
        v = self.valp
        return f"mode={v.mode!r}, K={v.K}, eps=[{v.eps_min}, {v.eps_max}], xi={v.xi}, n_power={v.n_power}, fraction={v.fraction}"


def valp_penalty(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, generator: torch.Generator, *, fx: torch.Tensor | None = None, **config: Any) -> torch.Tensor:
    """The plain VALP penalty in one line (``lam * R(L^2)`` by default); ``config`` is ``VALP``'s
    (mode="al" needs a multiplier kept across steps: use ``VALPModule``)."""
    if config.get("mode") == "al":
        raise ValueError("valp_penalty has no multiplier state; use VALPModule(mode='al') for the AL schedule")
    return VALP(backend="torch", **config).loss(critic, x, generator, fx=fx)[0]
