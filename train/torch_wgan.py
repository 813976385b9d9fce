"""PyTorch WGAN trainer (``python -m train.torch_wgan``); semantics: docs/trainers.md "Per framework"."""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import sys
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from models import torch_dcgan as dcgan
from models.spec import ResNetConfig
from models.torch_resnet import Critic, Generator
from train import contract
from train.cli import main
from train.config import ConfigError, TrainConfig, build_parser, lr_at
from train.data import to_uint8
from train.penalties import Penalty, penalty_from_config
from train.runs import checkpoint as ckpt
from train.seeds import stream_seed
from train.torch_distributed import (
    DistContext,
    all_reduce_stats,
    any_replica,
    derived_rng_seed,
    gather_rng_states,
    init_from_env,
    max_owner_scale,
    resolve_device,
    shard_rows,
    wrap_ddp,
)
from valr_core import ALState

log = logging.getLogger("valr.train")

FRAMEWORK = "torch"


def _build_models(cfg: TrainConfig, device: torch.device) -> tuple[Generator, Critic]:
    net = ResNetConfig(latent_dim=cfg.z_dim, gen_channels=cfg.gen_channels,
                       critic_channels=cfg.critic_channels, image_size=cfg.image_size, arch=cfg.arch)
    gen_cls, critic_cls = (dcgan.Generator, dcgan.Critic) if cfg.arch == "dcgan" else (Generator, Critic)
    # nn.init draws from the global RNG: fork it so init is seeded and the caller's state kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "init"))
        gen, critic = gen_cls(net), critic_cls(net, norm=cfg.critic_norm)  # on CPU: identical init everywhere
    # NHWC activations: ~30% faster convolutions on CPU (oneDNN), tensor-core friendly on CUDA.
    fmt = torch.channels_last
    return gen.to(device, memory_format=fmt), critic.to(device, memory_format=fmt)


def _adam(module: nn.Module, lr: float, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    # fused kernels on CUDA only; the CPU default path is deterministic and resumable bitwise.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2),
                            fused=device.type == "cuda")


def _metrics(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """One device->host transfer for all scalars of a step."""
    keys = list(values)
    host = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, host, strict=True))


class TorchWGAN:
    """The torch :class:`train.loop.Trainer`; ``dist``: this replica's DDP context (None: one process)."""

    framework = FRAMEWORK

    def __init__(self, cfg: TrainConfig, *, device: str | torch.device | None = None,
                 dist: DistContext | None = None) -> None:
        self.cfg = cfg
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        self.rank = self.dist.rank if self.dist else 0
        self.world_size = self.dist.world_size if self.dist else 1
        self.is_chief = self.rank == 0  # only the chief writes logs, samples and checkpoints
        self.device = (torch.device(device) if device is not None
                       else dist.device if dist is not None else resolve_device(cfg.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        self.gen, self.critic = _build_models(cfg, self.device)
        self.ema = copy.deepcopy(self.gen).eval().requires_grad_(False)
        self._dtype = next(self.critic.parameters()).dtype
        self.opt_g = _adam(self.gen, cfg.lr_g, cfg, self.device)
        self.opt_d = _adam(self.critic, cfg.lr_d, cfg, self.device)
        self.penalty: Penalty = penalty_from_config(cfg, FRAMEWORK)
        self.rng_z = torch.Generator(self.device).manual_seed(stream_seed(cfg.seed, "latents"))
        self.rng_penalty = torch.Generator(self.device).manual_seed(stream_seed(cfg.seed, "penalty", self.rank))
        # The multiplier lives on the device as a 0-dim float32 tensor (0 and unused without AL).
        self.al_state = contract.initial_multiplier(self.penalty, torch.zeros((), device=self.device))
        # *_train: the modules whose backward syncs gradients (DDP-wrapped when distributed); *_plain:
        # the same parameters without DDP, for the penalty's passes and passes without gradients.
        self._gen_train = self._gen_plain = self.gen
        self._critic_train = self._critic_plain = self.critic
        if self.dist is not None:
            self._real_rows = shard_rows(cfg.batch_size, self.dist, "--batch-size")
            self._gen_rows = shard_rows(cfg.gen_batch_size, self.dist, "--gen-batch-size")
            self._gen_train, self._critic_train = wrap_ddp(self.gen, self.critic, self.device)
        if cfg.extra.get("compile"):
            self._compile()
        log.info("torch trainer on %s, penalty %s%s", self.device, cfg.penalty,
                 f", replica {self.rank} of {self.world_size} ({self.dist.backend})" if self.dist else "")

    def _compile(self) -> None:
        if self.cfg.penalty in ("gp", "lp"):
            # AOTAutograd has no double backward, which GP/LP need through the critic.
            raise ConfigError("--compile supports --penalty valp or none (GP/LP need double backward)")
        if self.dist is None:
            self._gen_train = self._gen_plain = torch.compile(self.gen)
            self._critic_train = self._critic_plain = torch.compile(self.critic)
        else:
            self._gen_train, self._gen_plain = torch.compile(self._gen_train), torch.compile(self.gen)
            self._critic_train, self._critic_plain = torch.compile(self._critic_train), torch.compile(self.critic)

    def _autocast(self) -> torch.autocast:
        """--precision bf16: forward passes (VALP's included) autocast to bfloat16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def sync_stop(self, requested: bool) -> bool:
        """The loop's stop agreement: True on every replica when any replica got a signal."""
        return any_replica(requested, self.device) if self.dist is not None else requested

    def _to_nchw(self, images: np.ndarray) -> torch.Tensor:
        """NHWC NumPy -> NCHW channels_last view in the models' dtype (float64 in some tests)."""
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return t.to(self.device, dtype=self._dtype, non_blocking=True).permute(0, 3, 1, 2)

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.cfg.z_dim), generator=self.rng_z, device=self.device, dtype=self._dtype)

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        cfg = self.cfg
        self.opt_d.param_groups[0]["lr"] = lr_at(cfg.lr_d, step, cfg.steps, cfg.lr_decay)  # its one group
        z = self._latents(len(real))  # the global batch's latents, on every replica: it keeps its shard
        if self.dist is not None:
            real, z = real[self._real_rows], z[self._real_rows]
        real_t = self._to_nchw(real)
        n = real_t.shape[0]
        with torch.no_grad(), self._autocast():
            fake = self._gen_plain(z).to(self._dtype)  # train-mode BN, as in the reference code
        with self._autocast():
            # One pass on both halves, reused by VALP; under DDP the only one through the wrapper
            # (the penalty's passes use the inner module), so each gradient is all-reduced once.
            scores = self._critic_train(torch.cat([real_t, fake])).reshape(2 * n, -1)
            loss, out, pen = contract.critic_objective(
                self.penalty, self._critic_plain, real_t, fake, self.rng_penalty, self.al_state, scores.float(),
                penalty_weight=1.0 if self.dist is None else self._penalty_scale)
        self.rng_penalty = pen.rng
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        constraint = pen.constraint
        if self.dist is not None:
            red, reduced = contract.reduce_over_replicas(out, constraint, contract.reduction_of(self.penalty),
                                                         lambda v, how: all_reduce_stats(v, self.world_size, how))
            out, constraint = {k: red[k] for k in out}, reduced.to(constraint.dtype)
        self.opt_d.step()
        self.al_state = contract.multiplier_step(self.penalty, self.al_state, constraint)
        return _metrics(contract.with_multiplier(out, self.penalty, self.al_state))

    def _penalty_scale(self, pen: torch.Tensor) -> torch.Tensor | float:
        """Makes DDP's gradient average that of the penalty's reduction over the global batch."""
        how = contract.reduction_of(self.penalty)
        if how == "sum":
            return float(self.world_size)
        if how == "max":
            assert self.dist is not None
            return max_owner_scale(pen, self.dist)
        return 1.0

    def generator_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        self.opt_g.param_groups[0]["lr"] = lr_at(cfg.lr_g, step, cfg.steps, cfg.lr_decay)
        z = self._latents(cfg.gen_batch_size)
        if self.dist is not None:
            z = z[self._gen_rows]
        self.critic.requires_grad_(False)  # no critic weight gradients in the generator pass
        try:
            with self._autocast():
                loss = contract.generator_objective(torch, self._critic_plain(self._gen_train(z)).float())
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.critic.requires_grad_(True)
        self.opt_g.step()
        self._update_ema()
        out = {contract.GEN_LOSS: loss}
        if self.dist is not None:
            out = all_reduce_stats(out, self.world_size)
        return _metrics(out)

    @torch.no_grad()
    def _update_ema(self) -> None:
        weight = 1.0 - self.cfg.ema_decay
        for e, p in zip(self.ema.parameters(), self.gen.parameters(), strict=True):
            e.lerp_(p, weight)
        for e, b in zip(self.ema.buffers(), self.gen.buffers(), strict=True):
            if e.is_floating_point():
                e.lerp_(b, weight)  # BN running mean/var follow the same average
            else:
                e.copy_(b)  # num_batches_tracked

    @torch.no_grad()
    def sample(self, z: np.ndarray) -> np.ndarray:
        """EMA generator, eval-mode BN; touches no training state or RNG."""
        zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(self.device)
        return to_uint8(self.ema(zt).permute(0, 2, 3, 1).float().cpu().numpy())

    @torch.no_grad()
    def clip_critic_weights(self, c: float) -> None:
        """``--clip-weights C``: every critic parameter clamped to [-C, C]."""
        for p in self.critic.parameters():
            p.clamp_(-c, c)

    @torch.no_grad()
    def critic_scores(self, images: np.ndarray) -> np.ndarray:
        """The critic's scores f(x) on NHWC images in [-1, 1], shape (N,); eval mode: SN stays put."""
        was = self.critic.training
        self.critic.eval()
        try:
            return self._critic_plain(self._to_nchw(images)).reshape(-1).float().cpu().numpy()
        finally:
            self.critic.train(was)

    def _optimizer_arrays(self, prefix: str, opt: torch.optim.Adam, module: nn.Module) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, p in module.named_parameters():
            st = opt.state.get(p, {})
            # Before the first step Adam has no state; zeros with step 0 are equivalent.
            out[f"{prefix}/{name}/step"] = contract.scalar_state(float(st["step"]) if "step" in st else 0.0)
            for slot in ("exp_avg", "exp_avg_sq"):
                t = st.get(slot)
                out[f"{prefix}/{name}/{slot}"] = (t.detach().cpu().numpy().copy() if t is not None
                                                  else np.zeros(tuple(p.shape), np.float32))
        return out

    def _load_optimizer(self, prefix: str, opt: torch.optim.Adam, module: nn.Module,
                        arrays: Mapping[str, np.ndarray]) -> None:
        state = {}
        for i, (name, _) in enumerate(module.named_parameters()):
            state[i] = {"step": torch.tensor(float(arrays[f"{prefix}/{name}/step"]), dtype=torch.float32),
                        **{slot: torch.from_numpy(np.array(arrays[f"{prefix}/{name}/{slot}"]))
                           for slot in ("exp_avg", "exp_avg_sq")}}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The checkpointed state; distributed, a collective (gathers the replicas' penalty streams)."""
        out = self._local_state_arrays()
        if self.dist is not None:
            out[_REPLICA_RNG_KEY] = gather_rng_states(self.rng_penalty)
        return out

    def _local_state_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for prefix, module in (("gen", self.gen), ("critic", self.critic), ("ema", self.ema)):
            out.update({f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()})
        return {**out, **self._optimizer_arrays("opt_g", self.opt_g, self.gen),
                **self._optimizer_arrays("opt_d", self.opt_d, self.critic),
                contract.MU_KEY: contract.scalar_state(self.al_state.mu.detach().cpu()),
                contract.RNG_LATENTS_KEY: self.rng_z.get_state().numpy().copy(),
                contract.RNG_PENALTY_KEY: self.rng_penalty.get_state().numpy().copy()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = dict(arrays)
        replica_rngs = arrays.pop(_REPLICA_RNG_KEY, None)  # written by distributed runs only
        live = self._local_state_arrays()
        for key in (contract.RNG_LATENTS_KEY, contract.RNG_PENALTY_KEY):  # sizes vary: _load_rng checks
            if key in arrays:
                live[key] = np.asarray(arrays[key], live[key].dtype)
        arrays = ckpt.restore_arrays(arrays, live, context="torch trainer state")
        with torch.no_grad():
            for prefix, module in (("gen", self.gen), ("critic", self.critic), ("ema", self.ema)):
                sd = {k: torch.from_numpy(np.array(arrays[f"{prefix}/{k}"]).reshape(v.shape))
                      for k, v in module.state_dict().items()}
                module.load_state_dict(sd)
        self._load_optimizer("opt_g", self.opt_g, self.gen, arrays)
        self._load_optimizer("opt_d", self.opt_d, self.critic, arrays)
        self.al_state = ALState(torch.tensor(float(arrays[contract.MU_KEY]), dtype=torch.float32, device=self.device))
        _load_rng(self.rng_z, arrays[contract.RNG_LATENTS_KEY], contract.RNG_LATENTS_KEY)
        if self.rank == 0:
            _load_rng(self.rng_penalty, arrays[contract.RNG_PENALTY_KEY], contract.RNG_PENALTY_KEY)
        elif replica_rngs is not None and replica_rngs.ndim == 2 and replica_rngs.shape[0] == self.world_size:
            _load_rng(self.rng_penalty, replica_rngs[self.rank], f"{_REPLICA_RNG_KEY}[{self.rank}]")
        else:
            self.rng_penalty.manual_seed(derived_rng_seed(arrays[contract.RNG_PENALTY_KEY], self.rank))
            log.warning("replica %d: the checkpoint holds no penalty stream for %d replicas; derived one "
                        "from replica 0's (training continues, but not bit-identically)",
                        self.rank, self.world_size)


_REPLICA_RNG_KEY = "rng/penalty_replicas"  # (world_size, state bytes): every replica's penalty stream


def _load_rng(gen: torch.Generator, saved: np.ndarray, key: str) -> None:
    """Restore a generator; a state of another device type's layout reseeds it from the state."""
    state = torch.from_numpy(np.array(saved, dtype=np.uint8))
    if state.numel() == gen.get_state().numel():
        gen.set_state(state)
        return
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little")
    log.warning("%s was saved on another device type; reseeding it from the saved state "
                "(training continues, but not bit-identically)", key)
    gen.manual_seed(seed)


def make_trainer(cfg: TrainConfig) -> TorchWGAN:
    """The CLI's factory: applies the process-wide ``--threads``, joins torchrun's process group."""
    threads = cfg.extra.get("threads")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    ctx = init_from_env(cfg.device, cfg.extra.get("dist_backend") or "auto")
    if ctx is not None and ctx.world_size > 1 and not ctx.is_chief:
        log.setLevel(logging.WARNING)  # one set of info lines (and one progress bar): the chief's
    return TorchWGAN(cfg, dist=ctx)


TRAINER = TorchWGAN

def build_torch_parser() -> argparse.ArgumentParser:
    """The shared command line plus torch-only flags (they land in cfg.extra)."""
    parser = build_parser(FRAMEWORK)
    g = parser.add_argument_group("torch")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the generator and critic (valp/none penalties)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine")
    g.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"), default=None,
                   help="under torchrun: process-group backend (auto: nccl on CUDA, gloo on CPU)")
    return parser


if __name__ == "__main__":
    sys.exit(main(FRAMEWORK, make_trainer, parser=build_torch_parser()))
