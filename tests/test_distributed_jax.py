"""Data parallelism of the JAX trainer (train/jax_distributed.py, ``JaxWGAN(cfg, mesh)``) on CPU.

XLA's device count is fixed when JAX starts, so one subprocess with two forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set before jax is imported) runs all
the distributed work once and reports as JSON; the tests below check that report. In it a
single-device trainer and a 2-device data-parallel trainer take the same steps on the same
global batch (compiled side by side in two threads: XLA compiles one program per core).

Tolerance (float32): every state leaf (parameters, Adam slots, BatchNorm statistics, EMA, the
AL multiplier) within atol 2e-5 + rtol 1e-4, and metrics within rtol 1e-4. The two runs sum
the batch in a different order (per device, then an all-reduce), so they agree to rounding,
~1e-7 here. One exception, stated and checked: parameters whose exact gradient is zero (conv
biases right before a BatchNorm, the critic's output bias: both cancel) get gradients of pure
rounding noise (~1e-9), which Adam normalises to updates of order lr, different in each run;
those elements (single-device |grad| < 1e-6 in every step) are only checked to stay within
Adam's bound (2 lr per update) of each other, and the metric that contains the critic's output
bias (the generator's loss; not the critic's wdist, not the penalty) within 4 lr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

pytestmark = pytest.mark.framework("jax")

REPO = Path(__file__).resolve().parents[1]
PENALTIES = ("none", "gp", "valp")
LR = 1e-3
NOISE_GRAD = 1e-6
ATOL, RTOL = 2e-5, 1e-4

_WORKER = r'''
import concurrent.futures, json, sys, time
t0 = time.perf_counter()
import numpy as np
import jax
import jax.numpy as jnp
from train.runs import checkpoint as ckpt
from train import jax_distributed as jd
from train.config import preset_config
from train.jax_wgan import JaxWGAN, classic_threefry
from train.loop import run_training

out = sys.argv[1]
lr = float(sys.argv[2])
report = {"devices": [str(d) for d in jax.devices()]}
mesh = jd.make_mesh("cpu")
pool = concurrent.futures.ThreadPoolExecutor(2)


def cfg(penalty, **kw):
    base = dict(out=out + "/unused", device="cpu", steps=4, n_critic=2, batch_size=4, gen_batch_size=4,
                z_dim=8, gen_channels=8, critic_channels=8, ema_decay=0.5, lr_g=lr, lr_d=lr, K=0.0,
                fraction=0.5, penalty=penalty, log_every=1, sample_every=0, checkpoint_every=0, n_sample_grid=4,
                progress=False, tensorboard=False)
    base.update(kw)
    return preset_config("smoke", **base)


def both(fn_a, fn_b):
    fa, fb = pool.submit(fn_a), pool.submit(fn_b)
    return fa.result(), fb.result()


def arrays(t):
    return {k: v.tolist() for k, v in t.state_arrays().items()}


real = [np.random.default_rng(s).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32) for s in range(2)]
for penalty in ("none", "gp", "valp"):
    c = cfg(penalty)
    single, dist = JaxWGAN(c), JaxWGAN(c, mesh)
    rec = {"init_equal": all(np.array_equal(v, dist.state_arrays()[k]) for k, v in single.state_arrays().items()),
           "metrics": [], "grads": []}
    for i in range(2):
        rec["metrics"].append(both(lambda: single.critic_step(real[i], i), lambda: dist.critic_step(real[i], i)))
        rec["grads"].append(single.state_arrays())  # beta1 = 0: the Adam slot mu is the last gradient
    rec["metrics"].append(both(lambda: single.generator_step(0), lambda: dist.generator_step(0)))
    rec["grads"].append(single.state_arrays())
    slot = {"gen": "opt_g/mu/", "critic": "opt_d/mu/"}
    rec["noise"] = {k: np.max([np.abs(g[slot[k.split("/")[0]] + k.split("/", 1)[1]]) for g in rec["grads"]],
                              axis=0).tolist()
                    for k in rec["grads"][0] if k.split("/")[0] in slot}
    rec["noise"].update({"ema/" + k[4:]: v for k, v in rec["noise"].items() if k.startswith("gen/")})
    del rec["grads"]
    rec["single"], rec["dist"] = arrays(single), arrays(dist)
    leaves = jax.tree_util.tree_leaves(dist.state)
    rec["replicated"] = all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == 2 for a in leaves)
    rec["replicas_equal"] = all(np.array_equal(np.asarray(s.data), np.asarray(a.addressable_data(0)))
                                for a in leaves for s in a.addressable_shards)
    report[penalty] = rec
    print(penalty, time.perf_counter() - t0, file=sys.stderr, flush=True)

# Random draws: a replicated key, draws over the global batch; equal to the single-device ones
# (the bits do not depend on the sharding) and different on each replica.
key = jax.random.PRNGKey(7)
with classic_threefry():
    draw = lambda k: jax.random.uniform(k, (4, 32, 32, 3)) - 0.5  # noqa: E731
    one = np.asarray(jax.jit(draw)(key))
    sharded = jax.jit(draw, in_shardings=jd.replicated(mesh), out_shardings=jd.batch_sharding(mesh))(key)
report["draws_equal"] = bool(np.array_equal(one, np.asarray(sharded)))
parts = [np.asarray(s.data) for s in sorted(sharded.addressable_shards, key=lambda s: s.index[0].start)]
report["draw_shards"] = [list(p.shape) for p in parts]
report["draws_differ_per_replica"] = bool(not np.allclose(parts[0], parts[1]))

# The max reduction's tie rule: a global max over the sharded batch whose maximum sits on both
# replicas shares its gradient equally, as torch's and TF's distributed max reductions do.
per_sample = jax.device_put(jnp.array([2.0, 1.0, 2.0, 0.5]), jd.batch_sharding(mesh))
report["max_tie_grad"] = np.asarray(jax.jit(jax.grad(jnp.max))(per_sample)).tolist()
print("draws", time.perf_counter() - t0, file=sys.stderr, flush=True)
# The loop with a data-parallel trainer: the chief writes one checkpoint per interval; resume is exact.
data = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
c = cfg("valp", out=out + "/run", steps=2, checkpoint_every=1)
result = run_training(JaxWGAN(c, mesh), c, data=data)
report["run_status"] = result.status
ck = ckpt.load_checkpoint(result.checkpoint)
resumed = JaxWGAN(c, mesh)
resumed.load_state_arrays({k[len("trainer/"):]: v for k, v in ck.arrays.items() if k.startswith("trainer/")})
report["resume_equal"] = all(np.array_equal(v, ck.arrays["trainer/" + k]) for k, v in resumed.state_arrays().items())
report["resume_replicated"] = all(a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(resumed.state))
report["sync_stop"] = [dist.sync_stop(False), dist.sync_stop(True)]
print("end", time.perf_counter() - t0, file=sys.stderr, flush=True)
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("jax_dp")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "JAX_ENABLE_X64": "0",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(out), str(LR)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    rep["seconds"], rep["out"] = time.perf_counter() - t0, out
    return rep


def test_two_forced_host_devices(report: dict) -> None:
    assert len(report["devices"]) == 2, report["devices"]


@pytest.mark.parametrize("penalty", PENALTIES)
def test_distributed_steps_equal_single_device_steps(report: dict, penalty: str) -> None:
    rec = report[penalty]
    assert rec["init_equal"]  # the same initial state, replicated
    for i, (m_single, m_dist) in enumerate(rec["metrics"]):  # 2 critic steps, then 1 generator step
        assert m_single.keys() == m_dist.keys()
        for k in m_single:
            # The generator's loss (not the critic's wdist, not the penalty) carries the
            # critic's output bias, whose gradient is noise (see the module docstring).
            atol = 2 * LR * 2 + 1e-6 if i == 2 else 1e-6
            np.testing.assert_allclose(m_dist[k], m_single[k], rtol=RTOL, atol=atol, err_msg=f"{penalty} {k}")
    single, dist = rec["single"], rec["dist"]
    assert single.keys() == dist.keys()
    n_noise, n_all, noisy = 0, 0, set()
    for k in single:
        a, b = np.asarray(single[k]), np.asarray(dist[k])
        if k in rec["noise"]:
            noise = np.asarray(rec["noise"][k]) < NOISE_GRAD
            n_noise, n_all = n_noise + int(noise.sum()), n_all + noise.size
            noisy.update([k] if np.any(np.abs(a - b)[noise] > ATOL) else [])
            # Exact gradient 0: each Adam update is O(lr) from rounding noise; 3 updates at most.
            assert np.all(np.abs(a - b)[noise] <= 2 * LR * 3), k
            a, b = a[~noise], b[~noise]
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"{penalty} {k}")
    # Only the cancelled biases (the generator's block conv biases, the critic's output bias)
    # differ beyond the tolerance; other zero-gradient elements (dead ReLUs) agree.
    assert all(k.endswith("/bias") for k in noisy), sorted(noisy)
    assert 0 < n_noise < 0.05 * n_all, (n_noise, n_all)
    if penalty == "valp":
        assert np.asarray(single["penalty/mu"]).item() > 0  # the multiplier moved, and matched above


@pytest.mark.parametrize("penalty", PENALTIES)
def test_state_and_multiplier_replicated_identically(report: dict, penalty: str) -> None:
    # The AL multiplier (and every other leaf) is one replicated value, equal on every device.
    assert report[penalty]["replicated"] and report[penalty]["replicas_equal"]


def test_replicas_draw_different_directions_equal_to_single_device(report: dict) -> None:
    assert report["draws_equal"]  # the random bits do not depend on the sharding
    assert report["draw_shards"] == [[2, 32, 32, 3], [2, 32, 32, 3]]
    assert report["draws_differ_per_replica"]


def test_max_reduction_shares_ties_equally(report: dict) -> None:
    """The one tie rule of the three frameworks: samples (hence replicas) holding the global
    maximum share its gradient equally (train/torch_distributed.max_owner_scale, TF's penalty_weight)."""
    assert report["max_tie_grad"] == [0.5, 0.0, 0.5, 0.0]


def test_loop_writes_checkpoints_once_and_resumes(report: dict) -> None:
    assert report["run_status"] == "completed"
    ckpts = sorted(p.name for p in (Path(report["out"]) / "run" / "checkpoints").glob("ckpt-*.npz"))
    assert ckpts == ["ckpt-000000001.npz", "ckpt-000000002.npz"]
    assert report["resume_equal"] and report["resume_replicated"]
    assert report["sync_stop"] == [False, True]
