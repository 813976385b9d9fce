"""Data-parallel torch training (train/torch_distributed.py): 2 CPU processes, gloo backend.

One spawn of two replicas runs every scenario (module fixture ``ddp``) and writes its results;
the tests compare them with single-process references built here, on the same global batches.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from tests.test_trainer_contract import real_batch as _real  # noqa: E402
from tests.test_trainer_contract import tiny_cfg as _cfg  # noqa: E402
from train.loop import run_training  # noqa: E402
from train.runs import checkpoint as ckpt  # noqa: E402
from train.runs import logs as tlogs  # noqa: E402
from train.seeds import stream_seed  # noqa: E402
from train.torch_distributed import init_from_env  # noqa: E402
from train.torch_wgan import TorchWGAN  # noqa: E402

pytestmark = [pytest.mark.framework("torch"),
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
_DATA = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
_VALP = {"penalty": "valp", "mode": "al", "K": 0.0, "rho": 0.5, "fraction": 0.5}  # K=0: mu moves
# Parity scenarios: (penalty settings, dtype). VALP on half of each shard (random subsets).
# Parity is asserted in float64 (float32 rounding moves VALP's r_adv across ReLU kinks, and
# Adam turns the noise-level gradients of biases that BatchNorm cancels into ~lr-sized steps);
# "valp32" checks the float32 path with an L2-relative tolerance per model.
SCENARIOS = {"none": ({"penalty": "none"}, "float64"), "gp": ({"penalty": "gp"}, "float64"),
             "valp": (_VALP, "float64"), "valp32": (_VALP, "float32")}
ATOL, RTOL = 1e-10, 1e-9  # float64
L2_REL_32 = 1e-3  # float32, ||a - b|| / ||b|| over all arrays of gen / critic / ema


def _steps(tr: TorchWGAN) -> list[dict[str, float]]:
    """Two critic steps, a generator step, a critic step (DDP would raise here on a parameter
    left without gradient in the previous backward)."""
    return [tr.critic_step(_real(0), 0), tr.critic_step(_real(1), 0), tr.generator_step(0),
            tr.critic_step(_real(2), 1)]


# ============================================================================ the replicas


class _SignalOnRank1(TorchWGAN):
    """Replica 1 alone gets SIGTERM after the generator step of iteration ``at``."""

    at = 1

    def generator_step(self, step: int) -> dict[str, float]:
        out = super().generator_step(step)
        if step == self.at and self.rank == 1:
            signal.raise_signal(signal.SIGTERM)
        return out


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # A short timeout: a replica that dies must not leave the other waiting for 30 minutes.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    ctx = init_from_env("cpu")
    assert ctx is not None and ctx.world_size == WORLD and ctx.rank == rank and ctx.backend == "gloo"
    root = Path(out)
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def counting_hook(counter, bucket):  # noqa: ANN001, ANN202 - DDP checks the annotations
        counter["n"] += 1
        return default_hooks.allreduce_hook(None, bucket)

    # The max reduction's tie rule: the global maximum held by both ranks is shared equally.
    from train.torch_distributed import max_owner_scale

    scales = [float(max_owner_scale(torch.tensor(v), ctx)) for v in (2.0, 1.0 + rank)]
    (root / f"ties-rank{rank}.json").write_text(json.dumps(scales))
    for name, (kw, dtype) in SCENARIOS.items():
        torch.set_default_dtype(getattr(torch, dtype))
        tr = TorchWGAN(_cfg(**kw), dist=ctx)
        torch.set_default_dtype(torch.float32)
        counts = {"critic": {"n": 0}, "gen": {"n": 0}}
        tr._critic_train.register_comm_hook(counts["critic"], counting_hook)
        tr._gen_train.register_comm_hook(counts["gen"], counting_hook)
        metrics = _steps(tr)
        state = tr.state_arrays()  # a collective: every replica calls it
        np.savez(root / f"{name}-rank{rank}.npz", **state)
        (root / f"{name}-rank{rank}.json").write_text(json.dumps(
            {"metrics": metrics, "counts": {k: v["n"] for k, v in counts.items()}}))

    # The loop: one checkpoint per step written by the chief; a signal on one replica stops all
    # of them at the same iteration; resuming on every replica equals the uninterrupted run.
    kw = dict(penalty="valp", lr_decay="constant", steps=3, checkpoint_every=1, keep_checkpoints=10)
    full = _cfg(root / "full", **kw)
    assert run_training(TorchWGAN(full, dist=ctx), full, data=_DATA).status == "completed"
    cut = _cfg(root / "cut", **kw)
    first = run_training(_SignalOnRank1(cut, dist=ctx), cut, data=_DATA)
    assert first.status == "interrupted" and first.step == 2, first
    resumed = cut.replace(resume="auto")
    second = run_training(TorchWGAN(resumed.replace(seed=5), dist=ctx), resumed, data=_DATA)
    assert second.status == "completed" and second.step == 3, second
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    import torch.multiprocessing as mp

    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned replicas
    try:
        mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    finally:
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before
    return out


# ============================================================================ references


class _ShardedPenalty:
    """Single-process reference of the replicas' penalty: the penalty of each replica's shard
    of cat([real, fake]) with that replica's stream, averaged (the ``mean`` reduction)."""

    def __init__(self, inner: object, seed: int) -> None:
        self.inner = inner
        self.mode, self.reduction, self.prefix = inner.mode, inner.reduction, inner.prefix
        self.rngs = [torch.Generator().manual_seed(stream_seed(seed, "penalty", r)) for r in range(WORLD)]

    def init_state(self, like: torch.Tensor) -> object:
        return self.inner.init_state(like)

    def update(self, state: object, constraint: object) -> object:
        return self.inner.update(state, constraint)

    def pair_loss(self, critic, real, fake, rng, state, *, fx=None, draws=None):  # noqa: ANN001, ANN201
        assert draws is None  # the trainer draws from its stream inside the call
        n, b = real.shape[0], real.shape[0] // WORLD
        parts = []
        for r in range(WORLD):
            rows = slice(r * b, (r + 1) * b)
            fx_r = torch.cat([fx[:n][rows], fx[n:][rows]])
            loss, out = self.inner.pair_loss(critic, real[rows], fake[rows], self.rngs[r], state, fx=fx_r)
            self.rngs[r] = out.rng
            parts.append((loss, out))
        loss = torch.stack([p[0] for p in parts]).mean()
        stats = {k: (torch.stack([p[1].stats[k] for p in parts]).max() if "/max_" in k
                     else torch.stack([p[1].stats[k] for p in parts]).mean()) for k in parts[0][1].stats}
        constraint = torch.stack([torch.as_tensor(p[1].constraint) for p in parts]).mean()
        return loss, out._replace(stats=stats, constraint=constraint, rng=rng)


def _reference(name: str) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    torch.set_num_threads(1)
    kw, dtype = SCENARIOS[name]
    cfg = _cfg(**kw)
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        tr = TorchWGAN(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    if tr.penalty is not None:
        tr.penalty = _ShardedPenalty(tr.penalty, cfg.seed)
    metrics = _steps(tr)
    return tr.state_arrays(), metrics


def _load(ddp: Path, name: str, rank: int) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(ddp / f"{name}-rank{rank}.npz") as z:
        arrays = dict(z)
    return arrays, json.loads((ddp / f"{name}-rank{rank}.json").read_text())


_RNG = ("rng/penalty", "rng/penalty_replicas")


# ============================================================================ tests


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_distributed_steps_equal_single_process_on_the_global_batch(ddp: Path, name: str) -> None:
    got, info = _load(ddp, name, 0)
    want, want_metrics = _reference(name)
    assert set(got) == set(want) | {"rng/penalty_replicas"}
    f64 = SCENARIOS[name][1] == "float64"
    if f64:
        bad = []
        for k in want:
            if k == "rng/penalty":  # replica 0's stream is the single-process one, drawn per shard
                continue
            if k == "critic/dense.bias":
                # Its gradient is 0 in exact arithmetic (the output bias cancels in E f(fake) -
                # E f(real) and in every penalty); Adam turns rounding noise into steps of ~lr,
                # so its value is noise. Its Adam slots (the noise itself) are compared below.
                continue
            if not np.allclose(got[k], want[k], rtol=RTOL, atol=ATOL):
                bad.append((k, float(np.max(np.abs(got[k] - want[k])))))
        assert not bad, bad
    else:
        for prefix in ("gen/", "critic/", "ema/", "opt_d/"):
            keys = [k for k in want if k.startswith(prefix) and want[k].dtype.kind == "f"]
            a = np.concatenate([got[k].ravel() for k in keys]).astype(np.float64)
            b = np.concatenate([want[k].ravel() for k in keys]).astype(np.float64)
            assert np.linalg.norm(a - b) <= L2_REL_32 * np.linalg.norm(b), prefix
    # Something did change: the comparison is not between two initial states.
    assert not np.allclose(got["critic/dense.weight"], TorchWGAN(_cfg()).state_arrays()["critic/dense.weight"])
    for m, w in zip(info["metrics"], want_metrics, strict=True):
        assert m.keys() == w.keys()
        # Metrics cross the boundary as float32 (float64 runs: float32 rounding only).
        np.testing.assert_allclose([m[k] for k in w], [w[k] for k in w], rtol=1e-6 if f64 else 1e-2,
                                   atol=1e-9 if f64 else 1e-4, err_msg=str(list(w)))
    if name.startswith("valp"):  # the AL multiplier moved, from replica-averaged violations
        assert float(got["penalty/mu"]) > 0
        np.testing.assert_allclose(got["penalty/mu"], want["penalty/mu"], rtol=1e-6)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_replicas_stay_identical_and_draw_their_own_penalty_randomness(ddp: Path, name: str) -> None:
    a, info_a = _load(ddp, name, 0)
    b, info_b = _load(ddp, name, 1)
    for k in a:
        if k not in _RNG:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # parameters, Adam, BN, EMA, mu
    assert info_a["metrics"] == info_b["metrics"]  # statistics are all-reduced
    np.testing.assert_array_equal(a["rng/penalty_replicas"], b["rng/penalty_replicas"])
    np.testing.assert_array_equal(a["rng/penalty_replicas"][0], a["rng/penalty"])
    np.testing.assert_array_equal(a["rng/penalty_replicas"][1], b["rng/penalty"])
    if name != "none":
        assert not np.array_equal(a["rng/penalty"], b["rng/penalty"])  # different streams
    # One gradient all-reduce per backward: 3 critic steps, 1 generator step (one bucket each).
    assert info_a["counts"] == info_b["counts"] == {"critic": 3, "gen": 1}


def test_max_reduction_shares_ties_equally(ddp: Path) -> None:
    """The one tie rule of the three frameworks: replicas holding the same global maximum share
    its gradient (world_size / k each, k holders; DDP averages by world_size)."""
    per_rank = [json.loads((ddp / f"ties-rank{r}.json").read_text()) for r in range(WORLD)]
    assert [s[0] for s in per_rank] == [1.0, 1.0]  # a tie: 2 / 2 each
    assert [s[1] for s in per_rank] == [0.0, 2.0]  # rank 1 holds the maximum alone


def test_chief_writes_once_and_resume_on_all_replicas_is_exact(ddp: Path) -> None:
    full = ckpt.list_checkpoints(ddp / "full" / "checkpoints")
    cut = ckpt.list_checkpoints(ddp / "cut" / "checkpoints")
    assert [s for s, _ in full] == [1, 2, 3] and [s for s, _ in cut] == [1, 2, 3]
    a = ckpt.load_checkpoint(full[-1][1])
    b = ckpt.load_checkpoint(cut[-1][1])
    assert a.arrays.keys() == b.arrays.keys()
    assert a.arrays["trainer/rng/penalty_replicas"].shape[0] == WORLD
    for k in a.arrays:  # bitwise, replica 1's penalty stream included
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    for run in ("full", "cut"):
        rows = tlogs.read_jsonl(ddp / run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3], run  # one writer: no duplicated rows


def test_single_process_resumes_a_distributed_checkpoint(ddp: Path) -> None:
    found = ckpt.load_latest(ddp / "full" / "checkpoints")
    assert found is not None
    arrays = {k[len("trainer/"):]: v for k, v in found.arrays.items() if k.startswith("trainer/")}
    cfg = _cfg(penalty="valp", lr_decay="constant")
    tr = TorchWGAN(cfg)
    tr.load_state_arrays(arrays)  # the replicas' extra streams are ignored
    np.testing.assert_array_equal(tr.state_arrays()["rng/penalty"], arrays["rng/penalty"])
    assert "rng/penalty_replicas" not in tr.state_arrays()


def test_torchrun_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "train.torch_wgan", "--preset", "smoke", "--steps", "1", "--n-critic", "1",
           "--batch-size", "4", "--gen-batch-size", "4", "--gen-channels", "8", "--critic-channels", "8",
           "--z-dim", "8", "--n-sample-grid", "4", "--out", str(out), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").glob("ckpt-*.npz")] == ["ckpt-000000001.npz"]
    found = ckpt.load_latest(out / "checkpoints")
    assert found is not None and found.arrays["trainer/rng/penalty_replicas"].shape[0] == WORLD
    rows = tlogs.read_jsonl(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1]
    assert r.stderr.count("done: 1 iterations") == 1  # info lines from the chief only
