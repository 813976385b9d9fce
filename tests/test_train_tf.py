"""Tests of the TF WGAN trainer (train/tf_wgan.py) and its penalties (train/tf_penalties.py).

Tiny widths and batches throughout; what costs time is TF tracing each trainer's graphs once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.framework("tf")

tf = pytest.importorskip("tensorflow")

from train import checkpoint as ckpt  # noqa: E402
from train import tf_penalties as tp  # noqa: E402
from train.config import TrainConfig, parse_config, preset_config  # noqa: E402
from train.data import load_dataset  # noqa: E402
from train.logs import read_jsonl  # noqa: E402
from train.loop import run_training  # noqa: E402
from train.tf_wgan import TfWGAN  # noqa: E402
from valr_core import ALState  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_DATA = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def _tiny(out: Path | str = "unused", **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(out=str(out), steps=3, n_critic=2, batch_size=4, gen_batch_size=6, z_dim=8,
                                   gen_channels=8, critic_channels=8, log_every=1, sample_every=0,
                                   checkpoint_every=0, n_sample_grid=4, progress=False, tensorboard=False)
    base.update(kw)
    return preset_config("smoke", **base).validate()


def _linear_critic(w: tf.Variable):
    return lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) @ w


def _batches(seed: int = 0, n: int = 5, shape: tuple[int, ...] = (4, 4, 3)) -> tuple[tf.Tensor, tf.Tensor]:
    r = np.random.default_rng(seed)
    return (tf.constant(r.uniform(-1, 1, (n, *shape)), tf.float32), tf.constant(r.uniform(-1, 1, (n, *shape)), tf.float32))


# ============================================================================ penalties


@pytest.mark.parametrize("scale", [0.05, 0.3])  # |w| below and above 1
def test_gp_lp_match_closed_form_for_linear_critic(scale: float) -> None:
    w = tf.Variable(np.random.default_rng(1).standard_normal((48, 1)).astype(np.float32) * scale)
    real, fake = _batches()
    norm = float(tf.norm(w))
    for name, want in (("gp", 10.0 * (norm - 1) ** 2), ("lp", 10.0 * max(0.0, norm - 1) ** 2)):
        pen = tp.make_penalty(name)
        with tf.GradientTape() as tape:
            loss, stats, _, aux = pen(_linear_critic(w), real, fake, tf.random.Generator.from_seed(0), pen.init_state())
        grad = tape.gradient(loss, w)
        assert aux is None
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(stats["grad_norm_mean"]), norm, rtol=1e-5)
        # d/dw of lam*(|w|-1)^2 is 2*lam*(|w|-1)*w/|w| (LP: zero below |w| = 1).
        excess = norm - 1 if name == "gp" else max(0.0, norm - 1)
        np.testing.assert_allclose(grad.numpy(), 20.0 * excess * w.numpy() / norm, rtol=1e-4, atol=1e-7)


def test_gp_is_per_sample_at_explicit_interpolates_and_safe_at_zero() -> None:
    real, fake = _batches(seed=2)
    rng = tf.random.Generator.from_seed(7)
    twin = tf.random.Generator.from_state(rng.state.numpy(), rng.algorithm)  # a copy, not a view
    # f(x) = 0.5 * ||x||^2 per sample has grad x: per-sample norms are ||x_hat_i||, all different.
    pen = tp.make_penalty("gp", lam=2.0)
    loss, stats, rng_out, _ = pen(lambda x: 0.5 * tf.reduce_sum(tf.square(x), axis=[1, 2, 3]), real, fake, rng,
                                  pen.init_state())
    alpha = twin.uniform([5, 1, 1, 1]).numpy()
    x_hat = alpha * real.numpy() + (1 - alpha) * fake.numpy()
    norms = np.sqrt((x_hat.reshape(5, -1) ** 2).sum(1))
    np.testing.assert_allclose(float(loss), 2.0 * np.mean((norms - 1) ** 2), rtol=1e-5)
    assert rng_out is rng and np.array_equal(rng.state.numpy(), twin.state.numpy())  # alpha came from rng
    # A constant critic: every gradient norm is 0, where sqrt' is infinite; the gradient stays finite.
    w = tf.Variable(tf.zeros([48, 1]))
    with tf.GradientTape() as tape:
        loss, *_ = pen(_linear_critic(w), real, fake, rng, pen.init_state())
    assert float(loss) == pytest.approx(2.0)
    assert np.isfinite(tape.gradient(loss, w).numpy()).all()


def test_valp_al_closed_form_and_multiplier_update() -> None:
    # A linear critic: after one power iteration r_adv is parallel to w, so every quotient is |w|.
    w = tf.Variable(np.random.default_rng(4).standard_normal((48, 1)).astype(np.float32) * 0.5)
    real, fake = _batches(seed=5)
    norm = float(tf.norm(w))
    pen = tp.make_penalty("valp", rho=0.5, clip=None, fraction=1.0)
    state = ALState(tf.constant(0.2))
    loss, stats, _, aux = pen(_linear_critic(w), real, fake, tf.random.Generator.from_seed(0), state)
    L = norm - 1.0
    np.testing.assert_allclose(float(stats["quotient_mean"]), norm, rtol=1e-4)
    np.testing.assert_allclose(float(loss), 0.2 * L + 0.25 * L * L, rtol=1e-4)  # mu*E[L] + rho/2*E[L^2]
    np.testing.assert_allclose(float(pen.update(state, aux).mu), 0.2 + 0.5 * L, rtol=1e-4)
    # mu never goes negative; penalties without AL keep the state as it is.
    assert float(pen.update(ALState(tf.constant(0.0)), tf.constant(-3.0)).mu) == 0.0
    assert tp.make_penalty("gp").update(state, None) is state
    with pytest.raises(ValueError, match="unknown penalty"):
        tp.make_penalty("wc")


# ============================================================================ trainer


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray], prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not np.array_equal(before[k], after[k])]


@pytest.mark.parametrize("penalty", ["valp", "gp", "lp", "none"])
def test_critic_steps_per_penalty(penalty: str) -> None:
    # K = 0 makes every VALP quotient a violation, so the multiplier has to move.
    cfg = _tiny(penalty=penalty, valp_k=0.0, rho=0.5, valp_fraction=0.5)
    trainer = TfWGAN(cfg)
    real = (_DATA[:4].astype(np.float32) / 127.5 - 1.0)
    before = trainer.state_arrays()
    mu = 0.0
    for step in range(2):
        m = trainer.critic_step(real, step)
        assert all(np.isfinite(v) for v in m.values()), m
        assert {"loss", "wdist", "penalty", "al_mu"} <= set(m)
        if penalty == "valp":
            # SPEC: after each critic step mu <- max(0, mu + rho * E[L]) with this step's E[L].
            mu = max(0.0, mu + 0.5 * m["violation_mean"])
            assert m["violation_mean"] > 0 and m["al_mu"] == pytest.approx(mu, rel=1e-6)
        else:
            assert m["al_mu"] == 0.0
    after = trainer.state_arrays()
    critic_params = [k for k in before if k.startswith("critic/")]
    # All but maybe the last bias: its gradient cancels in E f(fake) - E f(real) and in every
    # penalty up to rounding (which Adam's normalisation can still turn into a step).
    assert set(critic_params) - set(_changed(before, after, "critic/")) <= {"critic/dense.bias"}
    assert not _changed(before, after, "ema/") and _changed(before, after, "opt_d/")
    assert _changed(before, after, "rng/penalty") == ([] if penalty == "none" else ["rng/penalty"])
    if penalty == "valp":  # the generator step is the same graph for every penalty: test it once
        g = trainer.generator_step(0)
        assert np.isfinite(g["loss"])
        final = trainer.state_arrays()
        gen_trainable = {k for k in before if k.startswith("gen/") and not k.endswith((".mean", ".var"))}
        assert gen_trainable <= set(_changed(after, final, "gen/"))
        assert _changed(after, final, "ema/") and _changed(after, final, "opt_g/")
        images = trainer.sample(np.zeros((3, cfg.z_dim), np.float32))
        assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
        assert all(np.array_equal(v, trainer.state_arrays()[k]) for k, v in final.items())  # sample is pure


class _StopAt(TfWGAN):
    """Sends itself SIGTERM during one generator step, as `kill -TERM <pid>` would."""

    def __init__(self, cfg: TrainConfig, stop_at: int) -> None:
        super().__init__(cfg)
        self.stop_at = stop_at

    def generator_step(self, step: int) -> dict[str, float]:
        out = super().generator_step(step)
        if step == self.stop_at:
            signal.raise_signal(signal.SIGTERM)
        return out


_CLI_ARGS = ["--preset", "smoke", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def cli_run(tmp_path_factory: pytest.TempPathFactory):
    """The CLI smoke run, started in a subprocess when the module starts so that it overlaps the
    in-process tests; the tests that need it wait for it. Yields (process, stdout/err, out dir)."""
    out = tmp_path_factory.mktemp("tf_cli") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "train.tf_wgan", *_CLI_ARGS, "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result: dict[str, object] = {}

    def finished() -> tuple[int, str, Path]:
        if not result:
            result["log"], _ = proc.communicate(timeout=300)
        return proc.returncode, str(result["log"]), out

    try:
        yield finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_smoke_end_to_end(cli_run) -> None:
    rc, log, out = cli_run()
    assert rc == 0, log[-3000:]
    assert "oneDNN custom operations" not in log  # TF's start-up notices stay out of the logs
    assert (out / "checkpoints" / "ckpt-000000002.npz").is_file()
    assert (out / "samples" / "step_0000002.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2
    assert all(np.isfinite(rows[-1][k]) for k in ("critic/loss", "critic/wdist", "critic/al_mu", "gen/loss"))


def test_interrupted_and_resumed_run_equals_uninterrupted(cli_run, tmp_path: Path) -> None:
    # Same settings as the CLI run (the uninterrupted reference), stopped by SIGTERM after
    # iteration 1 through the loop's real handler, then resumed by a fresh trainer.
    cfg = parse_config([*_CLI_ARGS, "--out", str(tmp_path)], "tf")
    data = load_dataset(cfg.data)
    first = run_training(_StopAt(cfg, stop_at=0), cfg, data=data)
    assert first.status == "interrupted" and first.step == 1 and first.signal == signal.SIGTERM
    resumed = cfg.replace(resume="auto")
    assert run_training(TfWGAN(resumed), resumed, data=data).step == 2

    rc, log, out = cli_run()
    assert rc == 0, log[-3000:]
    a = ckpt.load_checkpoint(out / "checkpoints" / "ckpt-000000002.npz")
    b = ckpt.load_checkpoint(tmp_path / "checkpoints" / "ckpt-000000002.npz")
    assert a.arrays.keys() == b.arrays.keys() and "trainer/opt_d/m/dense.kernel" in a.arrays
    # TF's CPU kernels are deterministic for these models: bit-identical, even across processes.
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.metadata["data_iterator"] == b.metadata["data_iterator"]
    rows = [[{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(d / "metrics.jsonl")]
            for d in (out, tmp_path)]
    assert rows[0] == rows[1]
