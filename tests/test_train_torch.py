"""The torch WGAN trainer (train/torch_wgan.py) and its penalties (train/torch_penalties.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train import checkpoint as ckpt  # noqa: E402
from train import logs as tlogs  # noqa: E402
from train.config import ConfigError, TrainConfig, preset_config  # noqa: E402
from train.loop import run_training  # noqa: E402
from train.torch_penalties import make_penalty, per_sample_norm  # noqa: E402
from train.torch_wgan import TorchWGAN, resolve_device  # noqa: E402

pytestmark = pytest.mark.framework("torch")

REPO = Path(__file__).resolve().parents[1]
_DATA = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models run fastest on one thread; on busy 2-core machines (tox runs envs in
    parallel) OpenMP threads spinning against other processes make them ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_cfg(out: Path | str = "unused", **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        out=str(out), device="cpu", steps=4, n_critic=2, batch_size=4, gen_batch_size=6, z_dim=8,
        gen_channels=8, critic_channels=8, ema_decay=0.5, log_every=1, sample_every=0,
        checkpoint_every=0, n_sample_grid=4, progress=False, tensorboard=False, lr_g=1e-3, lr_d=1e-3,
    )
    base.update(kw)
    return preset_config("smoke", **base)


def _real(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


# ============================================================================ training steps


@pytest.mark.parametrize("penalty,mode", [("valp", "al"), ("valp", "plain"), ("gp", "al"), ("lp", "al"),
                                          ("none", "al")])
def test_steps_give_finite_losses_and_update_parameters(penalty: str, mode: str) -> None:
    tr = TorchWGAN(_tiny_cfg(penalty=penalty, penalty_mode=mode))
    before = {"gen": _params(tr.gen), "critic": _params(tr.critic), "ema": _params(tr.ema)}
    metrics = [tr.critic_step(_real(seed=i), step=0) for i in range(2)]
    metrics.append(tr.generator_step(step=0))
    for m in metrics:
        assert m and all(isinstance(v, float) and math.isfinite(v) for v in m.values()), m
    d = metrics[0]
    assert {"loss", "wdist", "penalty"} <= set(d)
    assert math.isclose(d["loss"], -d["wdist"] + d["penalty"], rel_tol=1e-5, abs_tol=1e-6)
    if penalty == "none":
        assert d["penalty"] == 0.0
    else:
        assert {"violation_mean", "violation_max", "violation_frac"} <= set(d)
    assert ("al_mu" in d) == (penalty == "valp" and mode == "al")
    for name, module in (("gen", tr.gen), ("critic", tr.critic), ("ema", tr.ema)):
        after = _params(module)
        changed = [k for k in after if not np.array_equal(after[k], before[name][k])]
        assert changed, f"{name} parameters did not change"
    # Every trainable parameter moved (Adam's first step is ~lr*sign(grad)), except the critic's
    # output bias: it cancels in E f(fake) - E f(real) and in every penalty, so its gradient is 0.
    for module, name in ((tr.gen, "gen"), (tr.critic, "critic")):
        for k, p in module.named_parameters():
            if name == "critic" and k == "dense.bias":
                assert np.array_equal(p.detach().numpy(), before[name][k])
                continue
            assert not np.array_equal(p.detach().numpy(), before[name][k]), f"{name}.{k} unchanged"


# ============================================================================ GP / LP numerics


class _Linear(torch.nn.Module):
    """f(x) = <w, x>: the input gradient is w everywhere, so its norm is |w| for every sample."""

    def __init__(self, norm: float) -> None:
        super().__init__()
        w = torch.randn(3 * 4 * 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.w = torch.nn.Parameter(w / w.norm() * norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.w)[:, None]


@pytest.mark.parametrize("norm", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("name", ["gp", "lp"])
def test_gp_lp_match_closed_form_for_a_linear_critic(name: str, norm: float) -> None:
    lam = 10.0
    critic = _Linear(norm)
    g = torch.Generator().manual_seed(1)
    real = torch.rand((5, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    fake = torch.rand((5, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    pen = make_penalty(name, lam=lam)
    rng = torch.Generator().manual_seed(2)
    loss, stats, rng_out, aux = pen(critic, real, fake, rng, pen.init_state(real))
    excess = norm - 1.0 if name == "gp" else max(0.0, norm - 1.0)
    assert rng_out is rng and aux is None
    # Per-sample norms: a batch-wide norm would give sqrt(5) * |w| here.
    np.testing.assert_allclose(float(loss.detach()), lam * excess**2, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(stats["grad_norm_mean"]), max(norm, 1e-12), rtol=1e-10)
    assert float(stats["violation_frac"]) == (1.0 if norm > 1 else 0.0)
    (grad,) = torch.autograd.grad(loss, critic.w)
    # d/dw lam * excess(|w|)^2 = 2 lam excess w/|w|; at w = 0 the floored sqrt gives 0, not NaN.
    want = 2 * lam * excess * critic.w.detach() / norm if norm > 0 else torch.zeros_like(grad)
    assert torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.numpy(), want.numpy(), rtol=1e-8, atol=1e-10)
    assert critic.w.grad is None  # the penalty never writes parameter gradients itself


def test_per_sample_norm_is_safe_at_zero() -> None:
    g = torch.zeros((3, 2, 2), requires_grad=True)
    n = per_sample_norm(g)
    n.sum().backward()
    assert torch.isfinite(n).all() and torch.isfinite(g.grad).all()


def test_penalties_use_only_the_explicit_generator() -> None:
    critic = _Linear(2.0)
    x = torch.rand((4, 3, 4, 4), dtype=torch.float64)
    for name in ("gp", "valp"):
        pen = make_penalty(name, fraction=0.5)
        torch.manual_seed(0)
        global_before = torch.random.get_rng_state()
        a = pen(critic, x, -x, torch.Generator().manual_seed(5), pen.init_state(x))[0]
        b = pen(critic, x, -x, torch.Generator().manual_seed(5), pen.init_state(x))[0]
        assert float(a.detach()) == float(b.detach())
        assert torch.equal(torch.random.get_rng_state(), global_before), name


# ============================================================================ VALP / AL


def test_valp_al_multiplier_follows_spec_convention() -> None:
    rho = 0.5
    # K = 0 makes every sample violate, so mu must grow by rho * mean(L) after each critic step.
    tr = TorchWGAN(_tiny_cfg(penalty="valp", penalty_mode="al", rho=rho, valp_k=0.0, valp_fraction=1.0))
    assert float(tr.al_state.mu) == 0.0
    mu = 0.0
    for i in range(3):
        m = tr.critic_step(_real(seed=i), step=0)
        assert m["violation_mean"] > 0 and m["penalty"] > 0  # a violation always increases the loss
        want = max(0.0, mu + rho * m["violation_mean"])
        np.testing.assert_allclose(m["al_mu"], want, rtol=1e-6)
        mu = m["al_mu"]
        assert float(tr.al_state.mu) == mu
    assert tr.state_arrays()["penalty/mu"].tolist() == [np.float32(mu)]
    # The generator step leaves the multiplier alone.
    tr.generator_step(step=0)
    assert float(tr.al_state.mu) == mu


# ============================================================================ state / resume


def test_state_round_trip_and_sample_is_pure() -> None:
    cfg = _tiny_cfg(valp_fraction=0.5)
    tr = TorchWGAN(cfg)
    tr.critic_step(_real(), 0)
    tr.generator_step(0)
    state = tr.state_arrays()
    z = np.random.default_rng(0).standard_normal((3, cfg.z_dim)).astype(np.float32)
    images = tr.sample(z)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    after = tr.state_arrays()
    for k in state:
        np.testing.assert_array_equal(after[k], state[k], err_msg=k)

    other = TorchWGAN(cfg.replace(seed=9))
    other.load_state_arrays(state)
    for k, v in other.state_arrays().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    np.testing.assert_array_equal(other.sample(z), images)
    bad = dict(state)
    bad["critic/dense.weight"] = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="critic/dense.weight"):
        other.load_state_arrays(bad)


def test_rng_state_from_another_device_type_reseeds(caplog: pytest.LogCaptureFixture) -> None:
    tr = TorchWGAN(_tiny_cfg())
    state = tr.state_arrays()
    state["rng/z"] = np.arange(16, dtype=np.uint8)  # a CUDA generator's state is 16 bytes
    draws = []
    for _ in range(2):
        with caplog.at_level("WARNING", logger="valr.train"):
            tr.load_state_arrays(state)
        draws.append(tr._latents(3))
    assert "rng/z was saved on another device type" in caplog.text
    assert torch.equal(draws[0], draws[1])  # deterministic in the saved state


def test_device_flag_is_validated() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


class _SignallingTrainer(TorchWGAN):
    """Sends itself SIGTERM after one generator step: the loop checkpoints and stops."""

    def __init__(self, cfg: TrainConfig, signal_at: int) -> None:
        super().__init__(cfg)
        self.signal_at = signal_at

    def generator_step(self, step: int) -> dict[str, float]:
        out = super().generator_step(step)
        if step == self.signal_at:
            signal.raise_signal(signal.SIGTERM)
        return out


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    kw = dict(penalty="valp", valp_fraction=0.5, steps=4)
    full_cfg = _tiny_cfg(tmp_path / "full", **kw)
    assert run_training(TorchWGAN(full_cfg), full_cfg, data=_DATA).status == "completed"

    cut_cfg = _tiny_cfg(tmp_path / "cut", **kw)
    first = run_training(_SignallingTrainer(cut_cfg, signal_at=1), cut_cfg, data=_DATA)
    assert first.status == "interrupted" and first.step == 2 and first.signal == signal.SIGTERM
    resumed_cfg = cut_cfg.replace(resume="auto")
    # A fresh trainer with another seed: everything must come from the checkpoint.
    second = run_training(TorchWGAN(resumed_cfg.replace(seed=5)), resumed_cfg, data=_DATA)
    assert second.status == "completed" and second.step == 4

    a = ckpt.load_latest(tmp_path / "full" / "checkpoints")
    b = ckpt.load_latest(tmp_path / "cut" / "checkpoints")
    assert a is not None and b is not None and a.step == b.step == 4
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:  # bitwise: torch's CPU kernels are deterministic run to run
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in
            tlogs.read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    rows_cut = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in
                tlogs.read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert rows == rows_cut


# ============================================================================ CLI


def test_cli_smoke_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.torch_wgan", "--preset", "smoke", "--steps", "2", "--out", str(out),
           "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_thread
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "ckpt-000000002.npz").is_file()
    assert (out / "samples" / "step_0000002.png").is_file()
    rows = tlogs.read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["step"] == 2
    for key in ("critic/loss", "critic/wdist", "critic/penalty", "critic/violation_mean", "critic/al_mu", "gen/loss"):
        assert math.isfinite(rows[-1][key]), key
    assert json.loads((out / "config.json").read_text())["framework"] == "torch"
