"""PyTorch front door: VALP as an ``nn.Module`` so that ``.to()``, ``state_dict()`` and DDP carry
the augmented-Lagrangian multiplier and the random state with the rest of the model.

    valp = VALPModule(mode="al", rho=0.01, seed=rank)          # a submodule of your GAN, ideally
    penalty = valp(critic, x, fx=critic(x))                     # add to the critic's loss
    loss.backward(); opt.step(); valp.step()                    # mu <- max(0, mu + rho * R(L))

Or, without a multiplier: ``valp_penalty(critic, x, generator, eps_max=1.0)``.

VALP's extra forward passes (the power iteration and ``critic(x + r_adv)``) leave the critic's
state to its own training pass: BatchNorm running statistics are not updated, and a
``torch.nn.utils.parametrizations.spectral_norm`` layer takes no power-iteration step (its
``_u``, ``_v`` buffers are left as they are; the passes run that parametrisation in eval mode,
so they use the weight of the critic's preceding training pass, ``fx=critic(x)``).
"""

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
    """How a statistic of several calls combines into that of one call on all their samples:
    means and fractions weighted by each call's regularised samples, maxima as the max, the
    penalty by the penalty's reduction (as the constraint), ``valp/mu`` as the latest."""
    name = key.rsplit("/", 1)[-1]
    if name == "penalty":
        return reduction
    if name == "mu":
        return "latest"
    if name.startswith("max_"):
        return "max"
    return "mean"


def _reseeded(source: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``source``: generator states are device-specific
    (CPU Mersenne Twister vs CUDA Philox), so moving one means drawing a seed, deterministically."""
    seed = int(torch.randint(0, 2**62, (1,), generator=source, device=source.device).item())
    return torch.Generator(device=device).manual_seed(seed)


class VALPModule(nn.Module):
    """VALP with its state as module state.

    ``mu`` is a float32 buffer (so ``.to()``, ``state_dict()`` and checkpoints carry it, and a
    ``.half()`` model keeps it in float32); the ``torch.Generator`` state rides in
    ``state_dict()`` as extra state. ``forward`` returns the penalty; ``step()`` updates mu from
    every call since the last step, combined as if they were one call on all their samples, and
    averaged over replicas when ``torch.distributed`` is initialised, so mu stays identical on
    every replica. Give each replica its own ``seed`` (e.g. ``seed=rank``).

    ``stats`` covers every call of a critic step in the same way (e.g. real and fake batches
    passed separately), under the core's names (``valp/mean_violation``, ``valp/mu``, ...); call
    ``step()`` once per critic step in every mode, so that the next call starts a new step.
    Neither BatchNorm statistics nor spectral_norm's power iteration move in VALP's passes.
    """

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

    # -- the penalty -----------------------------------------------------------------------
    def forward(self, critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fx: torch.Tensor | None = None, freeze: Any = None) -> torch.Tensor:
        """The penalty to add to the critic's loss (``fx=critic(x)`` saves a forward pass).

        Under DDP pass the unwrapped critic (``ddp.module``) and ``fx`` from the DDP forward:
        VALP's extra passes then do not trigger DDP's forward bookkeeping."""
        if x.device != self.mu.device:
            raise ValueError(f"x is on {x.device} but VALPModule is on {self.mu.device}; call valp.to({str(x.device)!r}) (or register it in your model)")
        al = self.valp.mode == "al"
        loss, aux = self.valp.loss(critic, x, self.generator, ALState(self.mu) if al else None, fx=fx, freeze=freeze)
        self.last = aux
        self._accumulate_stats(aux)
        if al:
            self._accumulate(aux)
        return loss

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """Detached scalars of every call of the current critic step (after ``step()``: of the
        step just taken), as one call on all their samples would give them: means and fractions
        weighted by each call's regularised samples, maxima as the max, ``valp/penalty`` by the
        penalty's reduction (mean: weighted, sum: summed, max: the max), ``valp/mu`` the
        multiplier the calls used. Keys are the core's (``VALP.loss``'s ``aux.stats``); the
        values stay on the device (no host sync). This replica's calls only under DDP."""
        n = self._stats_samples
        how = self.valp.reduction
        return {k: v / n if _combination(k, how) == "mean" else v for k, v in self._stats.items()}

    def _accumulate_stats(self, aux: ValpAux) -> None:
        if self._step_done:
            self._stats, self._stats_samples, self._step_done = {}, 0, False
        n = int(aux.violations.violations.shape[0])
        how = self.valp.reduction
        for key, value in aux.stats.items():
            value = value.detach()
            rule = _combination(key, how)
            if rule == "mean":
                value = value * n
            old = self._stats.get(key)
            if rule == "latest":
                self._stats[key] = value.clone()  # valp/mu is the buffer itself, which step() updates in place
            elif old is None:
                self._stats[key] = value
            elif rule == "max":
                self._stats[key] = torch.maximum(old.to(value.device), value)
            else:  # weighted mean (value * n) or sum
                self._stats[key] = old.to(value.device) + value
        self._stats_samples += n

    # -- the multiplier ---------------------------------------------------------------------
    def _reset_pending(self) -> None:
        self._sum: torch.Tensor | None = None  # sum of R(L) * n (mean), of R(L) (sum), max R(L)
        self._count = 0  # regularised samples since the last step
        self._calls = 0

    def _accumulate(self, aux: ValpAux) -> None:
        c = aux.constraint.detach().to(torch.float32)
        n = int(aux.violations.violations.shape[0])
        how = self.valp.reduction
        if how == "mean":
            c = c * n
        if self._sum is None:
            self._sum = c
        else:
            self._sum = torch.maximum(self._sum, c) if how == "max" else self._sum + c
        self._count += n
        self._calls += 1

    def pending_constraint(self) -> torch.Tensor:
        """The constraint ``step()`` would use: this replica's calls since the last step,
        combined as one call on all their samples (weighted mean, sum, or max), then reduced
        over replicas (mean for ``mean``/``sum`` reductions, max for ``max``)."""
        if self._sum is None:
            raise RuntimeError("VALPModule.step() called before the penalty was computed since the last step")
        how = self.valp.reduction
        c = self._sum
        if how == "mean":
            c = torch.stack([c, torch.tensor(float(self._count), device=c.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                c = c.clone()
                torch.distributed.all_reduce(c, op=torch.distributed.ReduceOp.MAX if how == "max" else torch.distributed.ReduceOp.SUM)
                if how == "sum":
                    c = c / world
        return c[0] / c[1] if how == "mean" else c

    @torch.no_grad()
    def step(self) -> None:
        """The AL multiplier update, after the critic's optimiser step (mode="al"); in every mode
        it ends the step whose calls ``stats`` combines."""
        self._step_done = True
        if self.valp.mode != "al":
            return
        constraint = self.pending_constraint()
        self.mu.copy_(self.valp.update(ALState(self.mu), constraint).mu)
        self._reset_pending()

    # -- device moves and checkpoints -------------------------------------------------------
    # ``nn.Module._apply`` is the one hook every .to()/.cuda()/.half() goes through; torch has no
    # public alternative for a module that must keep one buffer float32 and move a
    # torch.Generator (not a tensor) with its device, so it is overridden here, calling super().
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> VALPModule:
        super()._apply(fn, *args, **kwargs)
        if self.mu.dtype != torch.float32:  # .half()/.double() on the model: mu stays float32
            self.mu = self.mu.to(torch.float32)
        if self.generator.device != self.mu.device:
            self.generator = _reseeded(self.generator, self.mu.device)
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
    """The plain VALP penalty in one line (``lam * R(L^2)`` by default); ``config`` is ``VALP``'s.

    The augmented-Lagrangian mode needs a multiplier kept across steps: use ``VALPModule``."""
    if config.get("mode") == "al":
        raise ValueError("valp_penalty has no multiplier state; use VALPModule(mode='al') for the AL schedule")
    return VALP(backend="torch", **config).loss(critic, x, generator, fx=fx)[0]
