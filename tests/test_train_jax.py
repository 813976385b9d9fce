"""The JAX WGAN trainer (train/jax_wgan.py) and its penalties (train/jax_penalties.py).

Compilation dominates the runtime here, so every trainer test uses the one tiny config below:
equal configs share the module-level jit caches of ``train.jax_wgan``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from train import checkpoint as ckpt  # noqa: E402
from train import jax_wgan  # noqa: E402
from train import logs as tlogs  # noqa: E402
from train.config import TrainConfig, preset_config  # noqa: E402
from train.jax_penalties import (  # noqa: E402
    Penalty,
    interpolate,
    make_penalty,
    penalty_from_config,
    per_sample_norm,
)
from train.jax_wgan import JaxWGAN  # noqa: E402
from valr_core.objectives import ALState  # noqa: E402

pytestmark = pytest.mark.framework("jax")

REPO = Path(__file__).resolve().parents[1]
_DATA = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
PENALTIES = ("valp", "gp", "lp", "none")


def _tiny_cfg(out: Path | str = "unused", **kw: object) -> TrainConfig:
    # valp_k=0 makes every VALP quotient a violation, so the AL multiplier visibly moves.
    base: dict[str, object] = dict(
        out=str(out), device="cpu", steps=4, n_critic=2, batch_size=4, gen_batch_size=6, z_dim=8,
        gen_channels=8, critic_channels=8, ema_decay=0.5, log_every=1, sample_every=0,
        checkpoint_every=0, n_sample_grid=4, progress=False, tensorboard=False, lr_g=1e-3, lr_d=1e-3,
        valp_k=0.0,
    )
    base.update(kw)
    return preset_config("smoke", **base)


def _real(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before)


# ============================================================================ penalties


def test_per_sample_norm_is_per_sample_and_safe_at_zero() -> None:
    g = jnp.stack([jnp.zeros((2, 3)), jnp.full((2, 3), 2.0)]).astype(jnp.float32)
    np.testing.assert_allclose(per_sample_norm(g), [0.0, 2.0 * math.sqrt(6)], rtol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(per_sample_norm(v)))(g)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(grad[0], 0.0)


def test_interpolates_use_one_alpha_per_sample() -> None:
    # real = 1, fake = 0: the interpolate is alpha itself, one value per sample.
    real, fake = jnp.ones((5, 4, 4, 3), jnp.float32), jnp.zeros((5, 4, 4, 3), jnp.float32)
    alpha = np.asarray(interpolate(real, fake, jax.random.PRNGKey(0))).reshape(5, -1)
    np.testing.assert_array_equal(alpha, alpha[:, :1] * np.ones_like(alpha))
    assert ((alpha >= 0) & (alpha < 1)).all() and np.ptp(alpha[:, 0]) > 0
    # Randomness only comes from the explicit key.
    np.testing.assert_array_equal(alpha.reshape(5, 4, 4, 3), interpolate(real, fake, jax.random.PRNGKey(0)))


@functools.partial(jax.jit, static_argnums=0)
def _linear_penalty(pen: Penalty, w: jax.Array, real: jax.Array, fake: jax.Array) -> tuple:
    def loss(w: jax.Array) -> tuple:
        def critic(x: jax.Array) -> jax.Array:  # f(x) = w.x
            return jnp.sum(x * w, axis=(1, 2, 3))

        value, stats, key, _ = pen(critic, real, fake, jax.random.PRNGKey(1), ALState(jnp.zeros((), jnp.float32)))
        return value, (stats, key)

    return jax.value_and_grad(loss, has_aux=True)(w)


@pytest.mark.parametrize("w_norm", [2.0, 0.5, 0.0])
def test_gp_lp_match_closed_form_on_linear_critic(w_norm: float) -> None:
    # f(x) = w.x has gradient w at every point, so ||grad|| = |w| at every interpolate.
    direction = np.random.default_rng(0).standard_normal((4, 4, 3)).astype(np.float32)
    w = jnp.asarray(direction / np.linalg.norm(direction) * w_norm)
    real, fake = jnp.asarray(_real(6, 1)[:, :4, :4]), jnp.asarray(_real(6, 2)[:, :4, :4])
    lam = 10.0
    want = {"gp": lam * (w_norm - 1) ** 2, "lp": lam * max(0.0, w_norm - 1) ** 2}
    for name in ("gp", "lp"):
        (value, (stats, key)), grad_w = _linear_penalty(make_penalty(name, lam=lam), w, real, fake)
        np.testing.assert_allclose(float(value), want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(np.asarray(grad_w)).all(), name  # also at w = 0 (sqrt made safe)
        np.testing.assert_allclose(float(stats["grad_norm_mean"]), w_norm, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(np.asarray(key), np.asarray(jax.random.PRNGKey(1)))  # the key advances


def test_gp_norms_are_per_sample() -> None:
    # real == fake pins the interpolates; f(x) = (w.x)^2 / 2 has ||grad_i|| = |w.x_i| |w| per sample.
    x = jnp.asarray(_real(5, 3)[:, :3, :3])
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 3)).astype(np.float32) * 0.3)

    def critic(v: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(v * w, axis=(1, 2, 3)) ** 2

    norms = np.abs(np.asarray(jnp.sum(x * w, axis=(1, 2, 3)))) * float(jnp.linalg.norm(w))
    state = ALState(jnp.zeros((), jnp.float32))
    gp = make_penalty("gp", lam=3.0)(critic, x, x, jax.random.PRNGKey(0), state)[0]
    np.testing.assert_allclose(float(gp), 3.0 * np.mean((norms - 1) ** 2), rtol=1e-5)


def _tanh_critic(w: jax.Array):  # noqa: ANN202 - a small smooth critic for penalty checks
    return lambda x: jnp.tanh(jnp.sum(x * w, axis=(1, 2, 3)))


@functools.partial(jax.jit, static_argnums=0)
def _call_penalty(pen: Penalty, w: jax.Array, real: jax.Array, fake: jax.Array, mu: jax.Array) -> tuple:
    loss, stats, key, aux = pen(_tanh_critic(w), real, fake, jax.random.PRNGKey(0), ALState(mu))
    return loss, stats, key, aux, pen.update(ALState(mu), aux).mu


@jax.jit
def _core_valp(w: jax.Array, x: jax.Array, mu: jax.Array) -> tuple:
    valp = make_penalty("valp", mode="al", rho=0.5, fraction=1.0, K=0.0).valp
    loss, aux = valp.loss(_tanh_critic(w), x, jax.random.PRNGKey(0), ALState(mu))
    return loss, aux.violations.violations


def test_valp_penalty_is_al_on_real_and_fake() -> None:
    real, fake = jnp.asarray(_real(3, 1)[:, :4, :4]), jnp.asarray(_real(3, 2)[:, :4, :4])
    w = jnp.asarray(np.random.default_rng(2).standard_normal((4, 4, 3)).astype(np.float32) * 0.2)
    mu = jnp.asarray(0.25, jnp.float32)
    pen = make_penalty("valp", mode="al", rho=0.5, fraction=1.0, K=0.0)
    loss, stats, _, _, new_mu = _call_penalty(pen, w, real, fake, mu)
    # The same call straight on VALP over the concatenated batch (same key, same draws).
    want, L = _core_valp(w, jnp.concatenate([real, fake]), mu)
    L = np.asarray(L)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert L.shape == (6,) and (L > 0).all()
    np.testing.assert_allclose(float(loss), 0.25 * L.mean() + 0.25 * (L**2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(new_mu), 0.25 + 0.5 * L.mean(), rtol=1e-6)  # mu += rho * mean(L)
    assert float(stats["violation_mean"]) == pytest.approx(float(L.mean()), rel=1e-6)
    assert float(stats["al_mu"]) == 0.25
    # Plain mode: lam * mean(L^2), and mu never moves.
    plain = make_penalty("valp", mode="plain", lam=4.0, fraction=1.0, K=0.0)
    loss_p, _, _, _, mu_p = _call_penalty(plain, w, real, fake, mu)
    np.testing.assert_allclose(float(loss_p), 4.0 * (L**2).mean(), rtol=1e-5)
    assert float(mu_p) == 0.25


def test_make_penalty_rejects_unknown_and_reads_config() -> None:
    with pytest.raises(ValueError, match="penalty must be one of"):
        make_penalty("wc")
    with pytest.raises(ValueError, match="mode"):
        make_penalty("valp", mode="linear")
    pen = penalty_from_config(_tiny_cfg(valp_fraction=0.25, rho=0.02, valp_clip=False))
    assert pen.valp is not None and (pen.valp.fraction, pen.valp.rho, pen.valp.clip, pen.valp.mode) == (
        0.25, 0.02, None, "al")
    assert hash(pen) == hash(penalty_from_config(_tiny_cfg(valp_fraction=0.25, rho=0.02, valp_clip=False)))
    zero = make_penalty("none")(lambda x: x[:, 0, 0, 0], jnp.ones((2, 1, 1, 1)), jnp.ones((2, 1, 1, 1)),
                                jax.random.PRNGKey(0), ALState(jnp.zeros((), jnp.float32)))
    assert float(zero[0]) == 0.0


# ============================================================================ trainer


@pytest.mark.parametrize("penalty", PENALTIES)
def test_training_steps_per_penalty(penalty: str) -> None:
    trainer = JaxWGAN(_tiny_cfg(penalty=penalty))
    s0 = trainer.state_arrays()
    assert all(v.dtype == np.float32 for k, v in s0.items() if v.dtype.kind == "f"), "state must be float32"
    for i in range(2):
        m = trainer.critic_step(_real(seed=i), 0)
        assert {"loss", "wdist", "penalty", "violation_mean", "f_real", "f_fake"} <= set(m) or penalty == "none"
        assert all(math.isfinite(v) for v in m.values()), m
        assert m["loss"] == pytest.approx(-m["wdist"] + m["penalty"], rel=1e-5, abs=1e-6)
    s1 = trainer.state_arrays()
    assert _changed(_group(s0, "c_params"), _group(s1, "c_params"))
    assert _changed(_group(s0, "c_opt"), _group(s1, "c_opt"))
    assert not _changed(_group(s0, "g_params"), _group(s1, "g_params"))
    g = trainer.generator_step(0)
    assert set(g) == {"loss"} and math.isfinite(g["loss"])
    s2 = trainer.state_arrays()
    for group in ("g_params", "g_opt", "ema_params", "g_stats", "ema_stats"):
        assert _changed(_group(s1, group), _group(s2, group)), group
    assert not _changed(_group(s1, "c_params"), _group(s2, "c_params"))
    if penalty != "valp":
        assert s2["al/mu"].item() == 0.0


def test_valp_al_multiplier_follows_spec_convention() -> None:
    cfg = _tiny_cfg()
    trainer = JaxWGAN(cfg)
    mu = 0.0
    for i in range(3):
        m = trainer.critic_step(_real(seed=i), i)  # a new lr each step: must not retrace
        if i == 0:
            compiled = jax_wgan._critic_step._cache_size()
        assert m["violation_mean"] > 0  # K = 0: every quotient is a violation
        # Reduction "mean": mu <- max(0, mu + rho * mean(L)), after every critic step.
        mu = max(0.0, mu + cfg.rho * m["violation_mean"])
        assert m["al_mu"] == pytest.approx(mu, rel=1e-5)
        assert trainer.state_arrays()["al/mu"].item() == pytest.approx(mu, rel=1e-5)
    assert mu > 0 and jax_wgan._critic_step._cache_size() == compiled


def test_sample_is_pure_and_uint8() -> None:
    trainer = JaxWGAN(_tiny_cfg())
    before = trainer.state_arrays()
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    a, b = trainer.sample(z), trainer.sample(z)
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    after = trainer.state_arrays()
    assert not _changed(before, after)


def test_state_roundtrip_and_validation() -> None:
    cfg = _tiny_cfg()
    a = JaxWGAN(cfg)
    a.critic_step(_real(), 0)
    a.generator_step(0)
    saved = a.state_arrays()
    assert {"key", "al/mu", "c_opt/count", "g_opt/count"} <= set(saved)
    b = JaxWGAN(cfg.replace(seed=5))
    b.load_state_arrays(saved)
    for k, v in b.state_arrays().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    assert a.critic_step(_real(seed=9), 1) == b.critic_step(_real(seed=9), 1)
    bad = dict(saved)
    bad["c_params/dense/kernel"] = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match="c_params/dense/kernel"):
        b.load_state_arrays(bad)


class _Stopping(JaxWGAN):
    """Sends itself SIGTERM after a given generator step: the loop checkpoints and stops."""

    def __init__(self, cfg: TrainConfig, stop_at: int) -> None:
        super().__init__(cfg)
        self.stop_at = stop_at

    def generator_step(self, step: int) -> dict[str, float]:
        out = super().generator_step(step)
        if step == self.stop_at:
            signal.raise_signal(signal.SIGTERM)
        return out


def test_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    from train.loop import run_training

    full_cfg = _tiny_cfg(tmp_path / "full")
    assert run_training(JaxWGAN(full_cfg), full_cfg, data=_DATA).status == "completed"
    cut_cfg = _tiny_cfg(tmp_path / "cut")
    first = run_training(_Stopping(cut_cfg, stop_at=1), cut_cfg, data=_DATA)
    assert first.status == "interrupted" and first.step == 2
    resumed_cfg = cut_cfg.replace(resume="auto")
    assert run_training(JaxWGAN(resumed_cfg), resumed_cfg, data=_DATA).status == "completed"

    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt-000000004.npz")
    b = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints" / "ckpt-000000004.npz")
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:  # bitwise: same compiled XLA:CPU programs on the same inputs
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")}
            for r in tlogs.read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    full_rows = [{k: v for k, v in r.items() if not k.startswith("time/")}
                 for r in tlogs.read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    assert rows == full_rows and a.arrays["trainer/al/mu"].item() > 0


_CLI_TEST = "test_cli_smoke_end_to_end"


@pytest.fixture(scope="module", autouse=True)
def cli_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict | None]:
    """Starts the CLI subprocess before the first test of this file, when the CLI test is
    selected: its compilation then overlaps the in-process tests' (XLA compiles on one core)."""
    if not any(item.name == _CLI_TEST for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("jax_cli") / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "train.jax_wgan", "--preset", "smoke", "--steps", "2", "--out", str(out)]
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        yield {"proc": proc, "out": out}
        if proc.poll() is None:  # the CLI test was not reached (e.g. -x stopped early)
            proc.kill()
        proc.communicate()


def test_cli_smoke_end_to_end(cli_run: dict | None) -> None:
    assert cli_run is not None
    proc, out = cli_run["proc"], cli_run["out"]
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert (out / "checkpoints" / "ckpt-000000002.npz").is_file()
    assert (out / "samples" / "step_0000002.png").is_file()
    rows = tlogs.read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["step"] == 2 and math.isfinite(rows[-1]["critic/loss"]) and "critic/al_mu" in rows[-1]
    assert json.loads((out / "config.json").read_text())["framework"] == "jax"
    state = ckpt.load_checkpoint(out / "checkpoints" / "ckpt-000000002.npz")
    assert state.metadata["framework"] == "jax" and "trainer/key" in state.arrays
