"""Data-parallel TF training (train/tf_distributed.py, TfWGAN with a strategy) on 2 logical CPUs.

Logical devices must be configured before TF initialises, so the distributed runs happen in one
subprocess (``python -m tests.test_distributed_tf``) that prints its measurements as JSON; the
tests here assert on them. In that subprocess, for the ``none``, ``gp`` and ``valp`` (augmented
Lagrangian) penalties, a MirroredStrategy trainer (2 replicas) and the single-process trainer
run two critic steps and one generator step on the same global batches from the same seed. The
single-process reference draws the penalty randomness from the replicas' streams (each
replica's ``fold_in(step seed, replica id)`` draws, laid out as the global batch), so both sides
see identical draws; everything else (latents, data) is the single-process draw split by replica.
Adam's eps is raised to 1e-3 on both sides: some gradients are exactly zero up to rounding (the
critic's last bias, biases feeding BatchNorm) and Adam's first step would turn that rounding
into +-lr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.framework("tf")

REPO = Path(__file__).resolve().parents[1]
REPLICAS = 2
PENALTIES = ("none", "gp", "valp")
# float32 tolerance on max |distributed - single-process| of each array, relative to the largest
# entry of its group (all generator weights, all of the critic's Adam m = its last gradient, ...).
TOL = 1e-5
# After VALP's critic steps (K = 0, so every pair is a violation) the generator's gradient through
# the ReLU critic differs by up to ~4e-5 (float32 rounding moving activations across ReLU kinks,
# README "The parity guarantee"), which Adam's normalisation turns into ~2e-4 on generator weights.
TOL_VALP_GENERATOR = 1e-3


# ============================================================================ subprocess side


def _tiny(**kw: object):
    from train.config import preset_config

    base: dict[str, object] = dict(out="unused", steps=4, n_critic=2, batch_size=4, gen_batch_size=6, z_dim=8,
                                   gen_channels=8, critic_channels=8, progress=False, tensorboard=False,
                                   lr_d=1e-2, lr_g=1e-2, lr_decay="constant", K=0.0, rho=0.5,
                                   fraction=1.0)
    base.update(kw)
    return preset_config("smoke", **base).validate()


class _ShardedStream:
    """The replicas' streams laid out as the global batch: a draw of n rows takes n / replicas
    rows from each replica's stream; when n covers G batch-aligned groups (VALP draws for
    concat([real, fake])), each replica's draw is split in G and the groups are interleaved as
    the single process concatenates them."""

    def __init__(self, streams: list, local_batch: int) -> None:
        self.streams, self.b = streams, local_batch

    def _draw(self, method: str, shape, **kw):
        import tensorflow as tf

        shape = [int(d) for d in shape]
        groups = shape[0] // (len(self.streams) * self.b)
        parts = [getattr(s, method)([groups * self.b, *shape[1:]], **kw) for s in self.streams]
        return tf.concat([p[g * self.b:(g + 1) * self.b] for g in range(groups) for p in parts], axis=0)

    def uniform(self, shape, **kw):
        return self._draw("uniform", shape, **kw)

    def normal(self, shape, **kw):
        return self._draw("normal", shape, **kw)


class _ReferencePenalty:
    """Wraps the single-process trainer's penalty: same seed per step as the distributed trainer
    (one ``make_seeds`` from the penalty generator), draws from the replicas' streams."""

    def __init__(self, inner, replicas: int) -> None:
        self.inner, self.replicas = inner, replicas
        self.mode, self.reduction, self.prefix = inner.mode, inner.reduction, inner.prefix

    def init_state(self, like):
        return self.inner.init_state(like)

    def update(self, state, constraint):
        return self.inner.update(state, constraint)

    def pair_loss(self, critic, real, fake, rng, state, *, fx=None, draws=None):
        import tensorflow as tf

        from train.tf_distributed import ReplicaStream

        seed = tf.cast(rng.make_seeds(1)[:, 0], tf.int64)
        streams = [ReplicaStream(tf.random.experimental.stateless_fold_in(seed, tf.constant(r, tf.int64)))
                   for r in range(self.replicas)]
        b = int(real.shape[0]) // self.replicas
        assert draws is None  # the trainer passes its generator; the draws are made here
        draws, _ = self.inner.pair_draws(real, fake, _ShardedStream(streams, b))
        loss, out = self.inner.pair_loss(critic, real, fake, None, state, fx=fx, draws=draws)
        return loss, out._replace(rng=rng)


def _group(key: str) -> str:
    """Arrays compared on one scale: "gen", "critic", "ema", "opt_d/m", "opt_g/v", "penalty"."""
    parts = key.split("/")
    return "/".join(parts[:2]) if parts[0].startswith("opt_") else parts[0]


def _run_pair(strategy, penalty: str, reals: list[np.ndarray]) -> dict:
    from train.tf_wgan import TfWGAN

    cfg = _tiny(penalty=penalty)
    out: dict = {}
    states, metrics = [], []
    for distributed in (False, True):
        t = TfWGAN(cfg, strategy if distributed else None)
        if not distributed and penalty != "none":
            t.penalty = _ReferencePenalty(t.penalty, REPLICAS)
        t.opt_d.eps = t.opt_g.eps = 1e-3  # read when the graphs trace (the first step)
        before = t.state_arrays()
        m = [t.critic_step(r, 0) for r in reals] + [t.generator_step(0)]
        states.append(t.state_arrays())
        metrics.append(m)
        if distributed:
            out["moved"] = float(min(np.abs(states[-1][k] - before[k]).max() for k in before
                                     if k.startswith(("gen/", "critic/")) and k.endswith(".kernel")))
            out["is_chief"] = t.is_chief
            out["dist_trainer"] = t
    ref, dist = states
    out["keys_equal"] = ref.keys() == dist.keys()
    floats = [k for k in ref if ref[k].dtype.kind == "f"]
    scale = {}
    for k in floats:
        scale[_group(k)] = max(scale.get(_group(k), 0.0), float(np.abs(ref[k]).max()))
    out["diffs"] = {k: float(np.abs(ref[k].astype(np.float64) - dist[k]).max()) / max(scale[_group(k)], 1e-12)
                    for k in floats}
    out["exact"] = {k: bool(np.array_equal(ref[k], dist[k])) for k in ref if ref[k].dtype.kind != "f"}
    out["metrics"] = metrics
    return out


def _resume_check(trainer, reals: list[np.ndarray]) -> dict:
    """Restoring a saved state into the distributed trainer and repeating a critic and a generator
    step reproduces them exactly (rng states included); the state loads into a single-process
    trainer too (same keys and shapes)."""
    from train.tf_wgan import TfWGAN

    saved = trainer.state_arrays()
    runs = []
    for _ in range(2):
        trainer.load_state_arrays(saved)
        m = [trainer.critic_step(reals[0], 1), trainer.generator_step(1)]
        runs.append((trainer.state_arrays(), m))
    (a, ma), (b, mb) = runs
    TfWGAN(trainer.cfg).load_state_arrays(saved)
    return {"resume_identical": ma == mb and all(np.array_equal(a[k], b[k]) for k in a),
            "resume_moved": any(not np.array_equal(a[k], saved[k]) for k in ("rng/penalty", "rng/latents"))}


def _replica_draws(strategy) -> list[list[float]]:
    import tensorflow as tf

    from train import tf_distributed

    @tf.function(autograph=False)
    def draws(seed):
        out = strategy.run(lambda s: tf_distributed.replica_stream(s).uniform([4]), args=(seed,))
        return strategy.experimental_local_results(out)

    return [d.numpy().tolist() for d in draws(tf.constant([3, 4], tf.int64))]


def _cross_replica_check(strategy) -> dict:
    """Each reduction over per-replica values [1, 2] (and the max-penalty weights)."""
    import tensorflow as tf

    from train import tf_distributed

    @tf.function(autograph=False)
    def fn():
        def replica():
            rid = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
            v = rid + 1.0
            r = tf_distributed.cross_replica({"m": v, "s": v, "x": v}, {"m": "mean", "s": "sum", "x": "max"})
            w = tf_distributed.penalty_weight(v, "max", REPLICAS)
            tie = tf_distributed.penalty_weight(tf.constant(2.0), "max", REPLICAS)  # shared equally
            return tf.stack([r["m"], r["s"], r["x"], w, tie])
        return strategy.experimental_local_results(strategy.run(replica))

    return {"per_replica": [v.numpy().tolist() for v in fn()]}


def _divisibility_error(strategy) -> str:
    from train.config import ConfigError
    from train.tf_wgan import TfWGAN

    try:
        TfWGAN(_tiny(batch_size=5), strategy)
    except ConfigError as e:
        return str(e)
    return ""


def subprocess_main() -> None:
    from train import tf_distributed

    tf_distributed.split_cpu(REPLICAS)
    strategy = tf_distributed.make_strategy("mirrored", cpu_replicas=REPLICAS)
    rng = np.random.default_rng(0)
    reals = [rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32) for _ in range(2)]
    result: dict = {"replicas": strategy.num_replicas_in_sync, "pairs": {}}
    for penalty in PENALTIES:
        pair = _run_pair(strategy, penalty, reals)
        trainer = pair.pop("dist_trainer")
        if penalty == "valp":
            result.update(_resume_check(trainer, reals))
        result["pairs"][penalty] = pair
    result["draws"] = _replica_draws(strategy)
    result["cross_replica"] = _cross_replica_check(strategy)
    result["divisibility_error"] = _divisibility_error(strategy)
    print("RESULT " + json.dumps(result))


# ============================================================================ tests


@pytest.fixture(scope="module")
def dist_result() -> dict:
    pytest.importorskip("tensorflow")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_distributed_tf"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("penalty", PENALTIES)
def test_distributed_steps_equal_single_process(dist_result: dict, penalty: str) -> None:
    assert dist_result["replicas"] == REPLICAS
    pair = dist_result["pairs"][penalty]
    assert pair["keys_equal"] and pair["is_chief"]
    # Every kernel moved by far more than the tolerance (lr 1e-2).
    assert pair["moved"] > 1e-3
    # Parameters, Adam's slots (m = the last gradient, beta1 = 0), EMA, BatchNorm statistics
    # and the AL multiplier: float32 tolerance relative to each array's largest entry.
    gen_side = ("gen/", "ema/", "opt_g/")
    for loose in (False, True):
        tol = TOL_VALP_GENERATOR if loose and penalty == "valp" else TOL
        diffs = {k: d for k, d in pair["diffs"].items() if k.startswith(gen_side) == loose}
        worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
        assert worst[0][1] < tol, worst
    # Generator states (latents and penalty seeds) and Adam's step counters: identical.
    assert all(pair["exact"].values()), pair["exact"]
    ref, dist = pair["metrics"]
    for a, b in zip(ref, dist, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a[k], b[k])
    if penalty == "valp":  # the multiplier moved, by the replica-averaged constraint
        assert ref[1]["valp/mu"] > ref[0]["valp/mu"] > 0
        assert dist[0]["valp/mu"] == pytest.approx(0.5 * dist[0]["valp/mean_violation"], rel=1e-5)


def test_replicas_draw_different_penalty_randomness(dist_result: dict) -> None:
    first, second = dist_result["draws"]
    assert len(first) == 4 and not np.allclose(first, second)


def test_cross_replica_reductions(dist_result: dict) -> None:
    # Replica values 1 and 2: mean 1.5, sum 3, max 2; the max-penalty weight goes to replica 1.
    # A tie (2 on both) is shared equally: the one tie rule of torch, TF and JAX.
    assert dist_result["cross_replica"]["per_replica"] == [[1.5, 3.0, 2.0, 0.0, 0.5], [1.5, 3.0, 2.0, 1.0, 0.5]]


def test_distributed_state_resumes_exactly(dist_result: dict) -> None:
    assert dist_result["resume_identical"] and dist_result["resume_moved"]


def test_batch_must_split_evenly(dist_result: dict) -> None:
    assert "--batch-size 5 must be divisible by the 2 replicas" in dist_result["divisibility_error"]


if __name__ == "__main__":
    os.environ.setdefault("KERAS_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "valr-keras-home"))
    sys.path.insert(0, str(REPO))
    subprocess_main()
