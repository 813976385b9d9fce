"""The trainer contract, written once and run for every framework (the ``framework`` fixture:
each tox env runs its own framework's trainer; train/contract.py is what they share).

Covers what every trainer must do alike: objectives and metric names per penalty, the AL
multiplier's convention, the checkpoint key schema, the seed policy (independent streams),
state round trips, exact resume after an interrupt, and the command line.
"""

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

from train import contract
from train.config import TrainConfig, preset_config
from train.loop import run_training
from train.runs import checkpoint as ckpt
from train.runs import logs as tlogs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
_DATA = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)

# The metric names of a critic step, per penalty: the same in every framework, and the core's
# aux.stats names for the penalty's statistics.
_OBJECTIVE = {"critic/loss", "critic/wdist"}
_VIOLATIONS = ("penalty", "mu", "mean_violation", "max_violation", "violating_fraction")


def _names(prefix: str, *extra: str) -> set[str]:
    return _OBJECTIVE | {f"{prefix}/{s}" for s in (*_VIOLATIONS, *extra)}


CRITIC_KEYS = {
    "valp": _names("valp", "mean_quotient", "max_quotient", "dropped_fraction"),
    "gp": _names("gp", "mean_grad_norm", "max_grad_norm"),
    "lp": _names("lp", "mean_grad_norm", "max_grad_norm"),
    "none": _OBJECTIVE,
}


def tiny_cfg(out: Path | str = "unused", **kw: object) -> TrainConfig:
    # One base config for every test: the JAX and TF step compilations are shared between tests.
    base: dict[str, object] = dict(
        out=str(out), device="cpu", steps=4, n_critic=2, batch_size=4, gen_batch_size=6, z_dim=8,
        gen_channels=8, critic_channels=8, ema_decay=0.5, log_every=1, sample_every=0,
        checkpoint_every=0, n_sample_grid=4, progress=False, tensorboard=False, lr_g=1e-3, lr_d=1e-3,
        K=0.0,  # every VALP quotient is a violation, so the multiplier visibly moves
    )
    base.update(kw)
    return preset_config("smoke", **base)


def make(framework: str, cfg: TrainConfig) -> object:
    return contract.trainer_class(framework)(cfg)


def real_batch(seed: int = 0, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith(prefix + "/")}


# ============================================================================ steps and metrics


@pytest.mark.parametrize("penalty", ["valp", "gp", "lp", "none"])
def test_steps_update_the_models_and_report_the_shared_metrics(framework: str, penalty: str) -> None:
    tr = make(framework, tiny_cfg(penalty=penalty))
    before = tr.state_arrays()
    m = tr.critic_step(real_batch(), step=0)
    assert set(m) == CRITIC_KEYS[penalty]
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values()), m
    pen = m.get(f"{penalty}/penalty", 0.0)
    assert math.isclose(m["critic/loss"], pen - m["critic/wdist"], rel_tol=1e-5, abs_tol=1e-6)
    if penalty == "none":
        assert float(tr.state_arrays()[contract.MU_KEY]) == 0.0
    g = tr.generator_step(step=0)
    assert set(g) == {contract.GEN_LOSS} and math.isfinite(g["gen/loss"])
    after = tr.state_arrays()
    for prefix in ("gen", "critic", "ema", "opt_g", "opt_d"):
        changed = [k for k in group(before, prefix) if not np.array_equal(before[k], after[k])]
        assert changed, f"nothing under {prefix}/ changed"


def test_gp_penalty_is_the_core_definition_in_the_trainer(framework: str) -> None:
    """The trainer's GP value is lam * mean((|g| - 1)^2) >= 0 with the reported grad norms."""
    m = make(framework, tiny_cfg(penalty="gp", lam=10.0)).critic_step(real_batch(), step=0)
    assert m["gp/mean_grad_norm"] > 0 and m["gp/max_grad_norm"] >= m["gp/mean_grad_norm"]
    # (mean |g|-1)^2 <= mean (|g|-1)^2 (Jensen): a lower bound that a wrong reduction breaks.
    assert m["gp/penalty"] >= 10.0 * (m["gp/mean_grad_norm"] - 1.0) ** 2 * (1 - 1e-5)
    assert m["gp/mean_violation"] >= abs(m["gp/mean_grad_norm"] - 1.0) * (1 - 1e-5)


@pytest.mark.parametrize("penalty,mode", [("valp", "al"), ("lp", "al")])
def test_al_multiplier_follows_the_spec_convention(framework: str, penalty: str, mode: str) -> None:
    rho = 0.5
    tr = make(framework, tiny_cfg(penalty=penalty, mode=mode, rho=rho, reduction="mean"))
    assert float(tr.state_arrays()[contract.MU_KEY]) == 0.0
    mu = 0.0
    for i in range(3):
        m = tr.critic_step(real_batch(seed=i), step=0)
        if penalty == "valp":  # K = 0: every sample violates, so the loss must go up
            assert m["valp/mean_violation"] > 0 and m["valp/penalty"] > 0
        want = max(0.0, mu + rho * m[f"{penalty}/mean_violation"])  # mu <- max(0, mu + rho * R(L)), R = mean
        np.testing.assert_allclose(m[f"{penalty}/mu"], want, rtol=1e-5)
        mu = m[f"{penalty}/mu"]
        np.testing.assert_allclose(tr.state_arrays()[contract.MU_KEY], mu, rtol=1e-7)
    tr.generator_step(step=0)  # the generator step leaves the multiplier alone
    np.testing.assert_allclose(tr.state_arrays()[contract.MU_KEY], mu, rtol=1e-7)


# ============================================================================ state


def test_checkpoint_key_schema(framework: str) -> None:
    arrays = make(framework, tiny_cfg()).state_arrays()
    for key in (contract.MU_KEY, contract.RNG_LATENTS_KEY, contract.RNG_PENALTY_KEY):
        assert key in arrays, key
    assert arrays[contract.MU_KEY].shape == () and arrays[contract.MU_KEY].dtype == np.float32
    prefixes = {k.split("/", 1)[0] for k in arrays}
    assert prefixes <= set(contract.STATE_PREFIXES) | {"penalty", "rng", "gen_stats", "ema_stats", "critic_stats"}, prefixes
    for prefix in contract.STATE_PREFIXES:
        assert group(arrays, prefix), prefix


def test_penalty_passes_leave_spectral_norm_state_alone(framework: str) -> None:
    """--critic-norm spectral: after one critic step the power-iteration vectors are those of the
    same step without a penalty: only the critic's own training pass advanced them."""
    after = {}
    for penalty in ("valp", "gp", "none"):
        tr = make(framework, tiny_cfg(penalty=penalty, critic_norm="spectral"))
        tr.critic_step(real_batch(), step=0)
        state = tr.state_arrays()
        after[penalty] = {k: state[k] for k in state if k.endswith(("_u", "_v", ".sn_u", "/u", "/sigma"))}
    assert after["none"], "no spectral-norm state in the checkpoint"
    for penalty in ("valp", "gp"):
        for k, v in after["none"].items():
            np.testing.assert_array_equal(after[penalty][k], v, err_msg=f"{penalty}: {k}")


def test_seed_policy_streams_are_independent(framework: str) -> None:
    """Changing the penalty changes neither the initial models nor the latent stream."""
    runs = {}
    for penalty in ("valp", "none"):
        tr = make(framework, tiny_cfg(penalty=penalty))
        start = tr.state_arrays()
        tr.critic_step(real_batch(), step=0)
        runs[penalty] = (start, tr.state_arrays())
    (start_v, after_v), (start_n, after_n) = runs["valp"], runs["none"]
    for k in group(start_v, "gen") | group(start_v, "critic"):
        np.testing.assert_array_equal(start_v[k], start_n[k], err_msg=k)
    np.testing.assert_array_equal(after_v[contract.RNG_LATENTS_KEY], after_n[contract.RNG_LATENTS_KEY])
    # VALP consumed penalty randomness; no penalty consumed none.
    assert not np.array_equal(after_v[contract.RNG_PENALTY_KEY], start_v[contract.RNG_PENALTY_KEY])
    np.testing.assert_array_equal(after_n[contract.RNG_PENALTY_KEY], start_n[contract.RNG_PENALTY_KEY])
    # Another seed: other initial weights.
    other = make(framework, tiny_cfg(seed=7)).state_arrays()
    assert any(not np.array_equal(other[k], start_v[k]) for k in group(start_v, "critic"))


def test_state_round_trip_and_sample_is_pure(framework: str) -> None:
    cfg = tiny_cfg(fraction=0.5)
    a = make(framework, cfg)
    a.critic_step(real_batch(), 0)
    a.generator_step(0)
    saved = a.state_arrays()
    z = np.random.default_rng(0).standard_normal((3, cfg.z_dim)).astype(np.float32)
    images = a.sample(z)
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    for k, v in a.state_arrays().items():  # sampling changed nothing
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    b = make(framework, cfg.replace(seed=9))
    b.load_state_arrays(saved)
    for k, v in b.state_arrays().items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    np.testing.assert_array_equal(b.sample(z), images)
    assert a.critic_step(real_batch(seed=4), 1) == b.critic_step(real_batch(seed=4), 1)
    # Old checkpoints stored 0-d arrays as shape (1,): they still load.
    old = {k: np.atleast_1d(v) for k, v in saved.items()}
    b.load_state_arrays(old)
    bad = dict(saved)
    key = next(iter(group(saved, "critic")))
    bad[key] = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match=key.replace("[", r"\[")):
        b.load_state_arrays(bad)


def _stopping(framework: str, cfg: TrainConfig, stop_at: int) -> object:
    """A trainer that sends itself SIGTERM after generator step ``stop_at``."""
    base = contract.trainer_class(framework)

    def generator_step(self: object, step: int) -> dict[str, float]:
        out = base.generator_step(self, step)
        if step == stop_at:
            signal.raise_signal(signal.SIGTERM)
        return out

    return type("Stopping", (base,), {"generator_step": generator_step})(cfg)


@pytest.mark.parametrize(("precision", "critic_norm"), [("fp32", "none"), ("bf16", "none"), ("fp32", "spectral")])
def test_interrupted_and_resumed_run_equals_uninterrupted(framework: str, precision: str, critic_norm: str,
                                                          tmp_path: Path) -> None:
    """Also the --precision bf16 path (autocast / mixed_bfloat16 / bf16 JAX params): finite
    metrics, float32 weights and mu, and a bitwise-exact resume; and --critic-norm spectral,
    whose power-iteration vectors are checkpointed (and moved by training, not by VALP's passes)."""
    kw = dict(penalty="valp", fraction=0.5, precision=precision, critic_norm=critic_norm)
    full = tiny_cfg(tmp_path / "full", **kw)
    assert run_training(make(framework, full), full, data=_DATA).status == "completed"
    cut = tiny_cfg(tmp_path / "cut", **kw)
    first = run_training(_stopping(framework, cut, stop_at=1), cut, data=_DATA)
    assert first.status == "interrupted" and first.step == 2 and first.signal == signal.SIGTERM
    resumed = cut.replace(resume="auto")
    # Another seed: everything must come from the checkpoint.
    assert run_training(make(framework, resumed.replace(seed=5)), resumed, data=_DATA).status == "completed"

    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt-000000004.npz")
    b = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints" / "ckpt-000000004.npz")
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:  # bitwise: deterministic CPU kernels
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert float(a.arrays["trainer/" + contract.MU_KEY]) > 0

    def rows(run: str) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("time/")}
                for r in tlogs.read_jsonl(tmp_path / run / "metrics.jsonl")]

    assert rows("full") == rows("cut")
    assert all(math.isfinite(v) for r in rows("full") for v in r.values() if isinstance(v, float))
    assert all(v.dtype.itemsize >= 4 for v in a.arrays.values() if v.dtype.kind == "f")  # no bf16 weights
    assert a.arrays["trainer/" + contract.MU_KEY].dtype == np.float32
    sn_state = [k for k in a.arrays if k.endswith(("_u", ".sn_u", "/u"))]
    assert bool(sn_state) == (critic_norm == "spectral"), sn_state
    if sn_state:
        start = make(framework, full).state_arrays()
        assert any(not np.array_equal(start[k[len("trainer/"):]], a.arrays[k]) for k in sn_state)  # it moved


# ============================================================================ command line


def test_cli_smoke_end_to_end(framework: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", f"train.{framework}_wgan", "--preset", "smoke", "--steps", "2", "--out", str(out),
           "--no-progress", "--device", "cpu", "--no-tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "ckpt-000000002.npz").is_file()
    assert (out / "samples" / "step_0000002.png").is_file()
    last = tlogs.read_jsonl(out / "metrics.jsonl")[-1]
    assert last["step"] == 2
    logged = CRITIC_KEYS["valp"]  # the core's names
    assert logged | {"gen/loss"} <= set(last)
    assert all(math.isfinite(last[k]) for k in logged)
    assert not [k for k in last if k.startswith(("critic/mean", "critic/max", "critic/mu", "d_"))]
    saved = json.loads((out / "config.json").read_text())
    assert saved["framework"] == framework and saved["fraction"] == 1.0 and saved["clip"] == [-1.0, 1.0]
