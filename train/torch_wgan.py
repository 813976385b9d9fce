"""PyTorch WGAN trainer (SPEC "The reference training setup"): ``python -m train.torch_wgan``.

Implements :class:`train.loop.Trainer`; the shared loop does data, schedule, logs, checkpoints
and resume. Per critic step: fakes from the generator (train-mode BatchNorm, no grad), one critic
pass on cat([real, fake]), loss ``E f(fake) - E f(real) + penalty`` (see train.torch_penalties),
Adam step, then the AL multiplier update. Per generator step: ``-E f(G(z))`` on
``gen_batch_size`` latents, Adam step, then an EMA of all generator weights *and* BatchNorm
running statistics, which ``sample`` uses in eval mode.

Randomness: two explicit ``torch.Generator`` streams (latents; penalty draws), so switching the
penalty never changes the latents; model init uses a forked, seeded global RNG, leaving the
caller's global state untouched. On CPU, a resumed run matches an uninterrupted one bit for bit.
"""

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

from models.spec import ResNetConfig
from models.torch_resnet import Critic, Generator
from train import checkpoint as ckpt
from train.config import ConfigError, TrainConfig, build_parser, lr_at
from train.data import to_uint8
from train.loop import main
from train.torch_penalties import Penalty, penalty_from_config

log = logging.getLogger("valr.train")

FRAMEWORK = "torch"
_Z_SEED, _PENALTY_SEED = 1, 2  # offsets from cfg.seed for the two generator streams


def resolve_device(spec: str) -> torch.device:
    """``--device``: auto (cuda when available), cpu, cuda[:N] or gpu[:N]."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available to this torch build")
        return torch.device(spec.replace("gpu", "cuda", 1))
    raise ConfigError(f"--device {spec} is not supported by the torch trainer (use auto, cpu or cuda[:N])")


def _seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _build_models(cfg: TrainConfig, device: torch.device) -> tuple[Generator, Critic]:
    net = ResNetConfig(latent_dim=cfg.z_dim, gen_channels=cfg.gen_channels,
                       critic_channels=cfg.critic_channels, image_size=cfg.image_size)
    # nn.init draws from the global RNG: fork it so init is seeded and the caller's state kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen, critic = Generator(net), Critic(net)  # built on CPU: identical init on every device
    # NHWC activations: ~30% faster convolutions on CPU (oneDNN), tensor-core friendly on CUDA.
    fmt = torch.channels_last
    return gen.to(device, memory_format=fmt), critic.to(device, memory_format=fmt)


def _adam(module: nn.Module, lr: float, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    # fused kernels on CUDA only; the CPU default path is deterministic and resumable bitwise.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2),
                            fused=device.type == "cuda")


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _metrics(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """One device->host transfer for all scalars of a step."""
    keys = list(values)
    host = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
    return dict(zip(keys, host, strict=True))


class TorchWGAN:
    """The torch :class:`train.loop.Trainer` (NumPy NHWC in, scalars/uint8 NHWC out)."""

    framework = FRAMEWORK

    def __init__(self, cfg: TrainConfig, *, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        self.gen, self.critic = _build_models(cfg, self.device)
        self.ema = copy.deepcopy(self.gen).eval().requires_grad_(False)
        self.opt_g = _adam(self.gen, cfg.lr_g, cfg, self.device)
        self.opt_d = _adam(self.critic, cfg.lr_d, cfg, self.device)
        self.penalty: Penalty = penalty_from_config(cfg)
        self.rng_z = _seeded_generator(cfg.seed * 1000 + _Z_SEED, self.device)
        self.rng_penalty = _seeded_generator(cfg.seed * 1000 + _PENALTY_SEED, self.device)
        # The multiplier lives on the device as a 0-dim tensor; 0 for penalties without AL.
        mu_like = torch.zeros((1,), device=self.device)
        self.al_state = self.penalty.init_state(mu_like)
        self._gen_forward, self._critic_forward = self.gen, self.critic
        if cfg.extra.get("compile"):
            self._compile()
        log.info("torch trainer on %s, penalty %s", self.device, cfg.penalty)

    def _compile(self) -> None:
        if self.cfg.penalty in ("gp", "lp"):
            # AOTAutograd has no double backward, which GP/LP need through the critic.
            raise ConfigError("--compile supports --penalty valp or none (GP/LP need double backward)")
        self._gen_forward = torch.compile(self.gen)
        self._critic_forward = torch.compile(self.critic)

    # -- steps -----------------------------------------------------------------------------

    def _to_nchw(self, images: np.ndarray) -> torch.Tensor:
        """NHWC NumPy -> NCHW tensor in channels_last layout (a view of the NHWC data)."""
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return t.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.cfg.z_dim), generator=self.rng_z, device=self.device)

    def critic_step(self, real: np.ndarray, step: int) -> dict[str, float]:
        cfg = self.cfg
        _set_lr(self.opt_d, lr_at(cfg.lr_d, step, cfg.steps, cfg.lr_decay))
        real_t = self._to_nchw(real)
        n = real_t.shape[0]
        with torch.no_grad():
            fake = self._gen_forward(self._latents(n))  # train-mode BN, as in the reference code
        # One pass on both halves (the critic has no normalisation); VALP reuses the outputs.
        fx = self._critic_forward(torch.cat([real_t, fake]))
        f = fx.reshape(-1)
        wdist = f[:n].mean() - f[n:].mean()
        pen, stats, self.rng_penalty, aux = self.penalty(self._critic_forward, real_t, fake,
                                                          self.rng_penalty, self.al_state, fx=fx)
        loss = -wdist + pen
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self.al_state = self.penalty.update(self.al_state, aux)
        out = {"loss": loss, "wdist": wdist, **stats}
        if self.al_state is not None:
            out["al_mu"] = torch.as_tensor(self.al_state.mu)  # after this step's update
        return _metrics(out)

    def generator_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        _set_lr(self.opt_g, lr_at(cfg.lr_g, step, cfg.steps, cfg.lr_decay))
        self.critic.requires_grad_(False)  # no critic weight gradients in the generator pass
        try:
            loss = -self._critic_forward(self._gen_forward(self._latents(cfg.gen_batch_size))).mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.critic.requires_grad_(True)
        self.opt_g.step()
        self._update_ema()
        return _metrics({"loss": loss})

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
        images = self.ema(zt).permute(0, 2, 3, 1).float().cpu().numpy()
        return to_uint8(images)

    # -- state -----------------------------------------------------------------------------

    def _optimizer_arrays(self, prefix: str, opt: torch.optim.Adam, module: nn.Module) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, p in module.named_parameters():
            st = opt.state.get(p, {})
            # Before the first step Adam has no state; zeros with step 0 are equivalent.
            out[f"{prefix}/{name}/step"] = np.asarray(float(st["step"]) if "step" in st else 0.0, np.float32)
            for slot in ("exp_avg", "exp_avg_sq"):
                t = st.get(slot)
                out[f"{prefix}/{name}/{slot}"] = (t.detach().cpu().numpy() if t is not None
                                                  else np.zeros(tuple(p.shape), np.float32))
        return out

    def _load_optimizer(self, prefix: str, opt: torch.optim.Adam, module: nn.Module,
                        arrays: Mapping[str, np.ndarray]) -> None:
        state = {}
        for i, (name, _) in enumerate(module.named_parameters()):
            state[i] = {"step": torch.tensor(float(arrays[f"{prefix}/{name}/step"][0]), dtype=torch.float32),
                        **{slot: torch.from_numpy(np.array(arrays[f"{prefix}/{name}/{slot}"]))
                           for slot in ("exp_avg", "exp_avg_sq")}}
        sd = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

    def state_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for prefix, module in (("gen", self.gen), ("critic", self.critic), ("ema", self.ema)):
            out.update({f"{prefix}/{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()})
        out.update(self._optimizer_arrays("opt_g", self.opt_g, self.gen))
        out.update(self._optimizer_arrays("opt_d", self.opt_d, self.critic))
        mu = 0.0 if self.al_state is None else self.al_state.mu
        out["penalty/mu"] = np.asarray(torch.as_tensor(mu).detach().cpu(), dtype=np.float32)
        out["rng/z"] = self.rng_z.get_state().numpy().copy()
        out["rng/penalty"] = self.rng_penalty.get_state().numpy().copy()
        # Scalars as shape (1,): train.checkpoint's writer once turned 0-d arrays into (1,)
        # (np.ascontiguousarray), so this layout loads from checkpoints of either version.
        return {k: np.atleast_1d(v) for k, v in out.items()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        expected = ckpt.array_spec(self.state_arrays())
        for key in _RNG_KEYS:  # their size depends on the device type; checked in _load_rng
            expected[key] = ((np.shape(arrays[key]) if key in arrays else expected[key][0]), expected[key][1])
        ckpt.validate_arrays(arrays, expected, context="torch trainer state")
        with torch.no_grad():
            for prefix, module in (("gen", self.gen), ("critic", self.critic), ("ema", self.ema)):
                sd = {k: torch.from_numpy(np.array(arrays[f"{prefix}/{k}"]).reshape(v.shape))
                      for k, v in module.state_dict().items()}
                module.load_state_dict(sd)
        self._load_optimizer("opt_g", self.opt_g, self.gen, arrays)
        self._load_optimizer("opt_d", self.opt_d, self.critic, arrays)
        if self.al_state is not None:
            self.al_state = type(self.al_state)(
                torch.tensor(float(arrays["penalty/mu"][0]), dtype=torch.float32, device=self.device))
        _load_rng(self.rng_z, arrays["rng/z"], "rng/z")
        _load_rng(self.rng_penalty, arrays["rng/penalty"], "rng/penalty")


_RNG_KEYS = ("rng/z", "rng/penalty")


def _load_rng(gen: torch.Generator, saved: np.ndarray, key: str) -> None:
    """Restore a generator; a state saved on another device type (CPU vs CUDA generators have
    different state layouts) reseeds deterministically from it instead, with a warning."""
    state = torch.from_numpy(np.array(saved, dtype=np.uint8))
    if state.numel() == gen.get_state().numel():
        gen.set_state(state)
        return
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little")
    log.warning("%s was saved on another device type; reseeding it from the saved state "
                "(training continues, but not bit-identically)", key)
    gen.manual_seed(seed)


def make_trainer(cfg: TrainConfig) -> TorchWGAN:
    """The CLI's factory; applies ``--threads`` (process-wide, so only here, not in TorchWGAN)."""
    threads = cfg.extra.get("threads")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return TorchWGAN(cfg)


def build_torch_parser() -> argparse.ArgumentParser:
    """The shared command line plus torch-only flags (they land in cfg.extra)."""
    parser = build_parser(FRAMEWORK)
    g = parser.add_argument_group("torch")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the generator and critic (valp/none penalties)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is fastest on a busy machine")
    return parser


if __name__ == "__main__":
    sys.exit(main(FRAMEWORK, make_trainer, parser=build_torch_parser()))
