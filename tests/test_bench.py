"""The benchmarks as tests, at a small size (bench/): timing helpers, GP/LP, the hand-written
VALP used as the overhead baseline, one critic step per method, and exactness against exact
optimal transport on a tiny 2-D problem."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from bench import common, exactness, native_valp

common.quiet_env()  # before anything imports POT: it would import every framework

# ============================================================================ framework-free


def test_importing_bench_imports_no_framework() -> None:
    import subprocess
    import sys

    code = "import sys, bench, bench.common, bench.speed, bench.exactness, bench.critic_steps, bench.native_valp; print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'ot') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_interleaved_warms_up_rotates_and_ratios_are_per_round() -> None:
    calls: list[str] = []
    clock = {"a": 0.002, "b": 0.004}
    steps = {name: (lambda n=name: (calls.append(n), time.sleep(clock[n]))) for name in clock}
    times = common.interleaved(steps, repeats=4, warmup=2)
    assert calls[:4] == ["a", "b", "a", "b"]  # warm-up first, every step
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the starting step rotates
    assert all(len(v) == 4 for v in times.values())
    r = common.ratios(times, "a")
    assert r["a"] == 1.0 and 1.3 < r["b"] < 3.0


def test_linear_fit_and_table() -> None:
    slope, intercept, r2 = common.linear_fit([1, 2, 3, 4], [5, 8, 11, 14])
    assert (slope, intercept, r2) == pytest.approx((3.0, 2.0, 1.0))
    text = common.table(["a", "b"], [["x", 1.23456], ["yy", float("nan")]])
    assert text.splitlines()[0].startswith("| a ") and "1.23" in text and "nan" in text


def test_numpy_mlp_gradient_matches_finite_differences() -> None:
    w = exactness.init_mlp(3, hidden=16, depth=2)
    x = np.random.default_rng(0).normal(size=(20, 2))
    _, g = exactness.mlp_values_and_grads(w, x)
    h = 1e-6
    for axis in range(2):
        e = np.zeros(2)
        e[axis] = h
        fd = (exactness.mlp_values_and_grads(w, x + e)[0] - exactness.mlp_values_and_grads(w, x - e)[0]) / (2 * h)
        np.testing.assert_allclose(g[:, axis], fd, rtol=1e-5, atol=1e-7)


def test_exact_w1_of_a_translated_copy_is_the_shift_length() -> None:
    pytest.importorskip("ot")
    # For Q = P + s, W1 >= |E P - E Q| = |s| (the 1-Lipschitz f(x) = <x, s>/|s|) and the
    # translation plan costs |s|, so the empirical W1 is exactly |s|: checks the ground truth.
    p = np.random.default_rng(1).normal(size=(100, 2))
    assert exactness.exact_w1(p, p + [0.3, -0.4]) == pytest.approx(0.5, rel=1e-9)


# ============================================================================ per framework


class Fw:
    """A float64 critic f(x) = tanh(flat(x) W1 + b1) w2 on (N, 2, 3, 3) inputs, natively."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        rng = np.random.default_rng(5)
        self.np_params = [rng.normal(size=(18, 8)), rng.normal(size=8), 10 * rng.normal(size=(8, 1))]
        if framework == "torch":
            import torch

            self.m = torch
            self.params = [torch.tensor(a, requires_grad=True) for a in self.np_params]
        elif framework == "tf":
            import tensorflow as tf

            self.m = tf
            self.params = [tf.Variable(a) for a in self.np_params]
        else:
            import jax
            import jax.numpy as jnp

            self.m = jax
            self.params = [jnp.asarray(a, jnp.float64) for a in self.np_params]

    def tensor(self, a: np.ndarray) -> Any:
        if self.framework == "torch":
            return self.m.from_numpy(a)
        if self.framework == "tf":
            return self.m.constant(a)
        return self.m.numpy.asarray(a)

    def rng(self, seed: int) -> Any:
        if self.framework == "torch":
            return self.m.Generator().manual_seed(seed)
        if self.framework == "tf":
            return self.m.random.Generator.from_seed(seed)
        return self.m.random.key(seed)

    def critic(self, params: list[Any]) -> Any:
        m = self.m
        if self.framework == "torch":
            return lambda x: m.tanh(x.flatten(1) @ params[0] + params[1]) @ params[2]
        if self.framework == "tf":
            return lambda x: m.tanh(m.reshape(x, (x.shape[0], -1)) @ params[0] + params[1]) @ params[2]
        return lambda x: m.numpy.tanh(x.reshape(x.shape[0], -1) @ params[0] + params[1]) @ params[2]

    def value_and_grads(self, fn: Any) -> tuple[float, float, list[np.ndarray]]:
        """fn(critic) -> (penalty, constraint); returns both and d penalty / d params."""
        if self.framework == "torch":
            pen, c = fn(self.critic(self.params))
            grads = self.m.autograd.grad(pen, self.params)
            return float(pen.detach()), float(c), [g.numpy() for g in grads]
        if self.framework == "tf":
            with self.m.GradientTape() as tape:
                pen, c = fn(self.critic(self.params))
            return float(pen), float(c), [g.numpy() for g in tape.gradient(pen, self.params)]
        # One compiled function (eager JAX would compile every small op separately).
        (pen, c), grads = self.m.jit(self.m.value_and_grad(lambda ps: fn(self.critic(ps)), has_aux=True))(self.params)
        return float(pen), float(c), [np.asarray(g) for g in grads]


@pytest.mark.parametrize(("fraction", "n_power"), [(1.0, 1), (0.5, 2)])
def test_native_valp_is_the_same_computation_as_valr_core(framework: str, fraction: float, n_power: int) -> None:
    """The overhead baseline must compute what valr_core computes: same seed, same numbers."""
    from valr_core import VALP, ALState

    fw = Fw(framework)
    x = fw.tensor(np.random.default_rng(2).uniform(-1, 1, (8, 2, 3, 3)))
    mu = 0.7  # both AL terms active
    valp = VALP(backend=framework, mode="al", rho=native_valp.RHO, fraction=fraction, n_power=n_power)
    native = {"torch": native_valp.torch_valp, "tf": native_valp.tf_valp, "jax": native_valp.jax_valp}[framework]

    def core(critic: Any) -> Any:
        pen, aux = valp.loss(critic, x, fw.rng(4), ALState(mu), fx=critic(x))
        return pen, aux.constraint

    def hand(critic: Any) -> Any:
        pen, constraint, _ = native(critic, x, critic(x), fw.rng(4), mu, fraction, n_power)
        return pen, constraint

    p1, c1, g1 = fw.value_and_grads(core)
    p2, c2, g2 = fw.value_and_grads(hand)
    assert p1 > 0 and c1 > 0  # the random tanh critic violates K = 1 here
    assert (p2, c2) == pytest.approx((p1, c1), rel=1e-9)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-12)


def test_benchmarks_use_the_trainers_penalties() -> None:
    """One code path: the speed benchmark builds its GP/LP/VALP with train.penalties (valr_core),
    exactly as the trainers do; no gradient-penalty math lives in bench/."""
    from bench.critic_steps import make_penalty
    from train.penalties import make_penalty as shared

    assert make_penalty("jax", common.Method("gp", "gp")) == shared("gp", "jax", check_finite=True)
    assert make_penalty("tf", common.Method("lp", "lp", check_finite=False)) == shared("lp", "tf")
    valp = make_penalty("torch", common.Method("valp-half", "valp", fraction=0.5))
    assert valp == shared("valp", "torch", check_finite=True, mode="al", rho=native_valp.RHO, fraction=0.5)
    assert make_penalty("torch", common.Method("none", "none")) is None
    import pathlib

    repo = pathlib.Path(common.__file__).parents[1]
    for path in [*(repo / "bench").glob("*.py"), *(repo / "train").glob("*.py")]:
        assert "create_graph" not in path.read_text(), path  # double backward lives in valr_core only
    assert not (repo / "bench" / "penalties.py").exists()


def test_critic_steps_run_and_time(framework: str, one_torch_thread: None) -> None:
    """The speed benchmark's steps on a tiny ResNet critic: finite losses, weights that move,
    interleaved timing. (GP/LP and the hand-written VALP are checked numerically above; each
    extra method here would cost a JAX compile or a TF trace of the whole ResNet step.)"""
    from bench.critic_steps import steps_for
    from bench.speed import all_methods

    steps = steps_for(framework, width=4, batch=2, image_size=8)
    methods = all_methods()
    names = ("none", "gp", "valp") if framework == "torch" else ("none", "valp")
    runs = {name: steps.step(methods[name]) for name in names}
    times = common.interleaved(runs, repeats=2, warmup=1)
    losses = [float(np.asarray(runs["valp"]())) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1]  # the critic trains
    r = common.ratios(times, "none")
    assert set(r) == set(names) and all(v > 0 and math.isfinite(v) for v in r.values())


# ============================================================================ exactness

# Tolerances for the tiny problem below (2 Gaussians vs a copy shifted by (0, 1), 128 samples
# per set, MLP 2-32-32-1, 400 full-batch Adam steps, VALP with radii scaled to the data).
# Measured over seeds 0-3 in torch, TF and JAX: relative error -1.2% .. +4.8%, Lipschitz
# constant on all sample pairs 1.25 .. 1.47. The bounds are not trivially loose: on the same
# problem weight clipping (c = 0.01) is off by -99.9%, VALP with the paper's unscaled image
# radii (eps in [0.1, 10], xi = 10) by +57 .. +65% with a Lipschitz constant of 3.8 .. 4.2, an
# unconstrained critic's estimate grows without bound, and GP lands at +3 .. +6%.
W1_REL_TOL = 0.10
LIPSCHITZ_RANGE = (0.9, 1.75)


def test_valp_critic_estimates_exact_w1(framework: str, one_torch_thread: None) -> None:
    pytest.importorskip("ot")
    cfg = exactness.TrainConfig(steps=400, hidden=32, depth=2)
    o = exactness.run_one(framework, "2g-shift", "valp", seed=0, n=128, cfg=cfg, grid=60)
    assert abs(o.rel_error) < W1_REL_TOL, f"estimate {o.estimate:.4f} vs exact W1 {o.w1:.4f}"
    assert LIPSCHITZ_RANGE[0] < o.lip_pairs < LIPSCHITZ_RANGE[1], f"Lipschitz constant on sample pairs {o.lip_pairs:.3f}"
    assert o.lip_grid >= o.lip_pairs - 1e-6  # pairs' quotients are bounded by the max gradient


# eps_scale="auto" on the same tiny problem: the paper's radii and xi, scaled by the core to the
# batch (median pairwise distance 1.46 / 40: s = 0.037), nothing hand-tuned. Measured over
# seeds 0-3 in torch, TF and JAX: relative error -1.0% .. +4.0%, Lipschitz constant on all
# sample pairs 1.10 .. 1.36; with the paper's absolute radii +48% .. +92% and 3.3 .. 4.2. This
# pins the mechanism end to end at a test's size; it is not the full-size validation: at 512
# samples and 2000 steps the same setting fails on this problem (radii up to a quarter of the
# median distance leave the gap between the two sets unconstrained; bench/results/
# exactness_eps_scale.md, docs/conventions-eps-scale.md).
AUTO_W1_REL_TOL = 0.07
AUTO_LIPSCHITZ_RANGE = (0.95, 1.6)


def test_valp_with_data_scaled_radii_estimates_exact_w1(framework: str, one_torch_thread: None) -> None:
    pytest.importorskip("ot")
    cfg = exactness.TrainConfig(steps=400, hidden=32, depth=2)
    assert exactness._valp(framework, cfg, "valp-auto").eps_scale == "auto"
    o = exactness.run_one(framework, "2g-shift", "valp-auto", seed=0, n=128, cfg=cfg, grid=60)
    assert abs(o.rel_error) < AUTO_W1_REL_TOL, f"estimate {o.estimate:.4f} vs exact W1 {o.w1:.4f}"
    assert AUTO_LIPSCHITZ_RANGE[0] < o.lip_pairs < AUTO_LIPSCHITZ_RANGE[1], f"Lipschitz constant on sample pairs {o.lip_pairs:.3f}"
    if framework == "torch":  # the contrast (1 s in torch): the same radii unscaled are far off
        paper = exactness.run_one(framework, "2g-shift", "valp-paper", seed=0, n=128, cfg=cfg, grid=60)
        assert paper.rel_error > 0.3 and paper.lip_pairs > 2.5, (paper.rel_error, paper.lip_pairs)


@pytest.mark.framework("torch")
def test_exactness_table_and_picture(tmp_path: Any) -> None:
    pytest.importorskip("ot")
    pytest.importorskip("matplotlib")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        png, md = tmp_path / "exactness.png", tmp_path / "exactness.md"
        outcomes = exactness.main(["--problems", "2g-shift", "--methods", "valp,clip", "--seeds", "0", "--n", "32",
                                   "--steps", "5", "--hidden", "8", "--depth", "1", "--grid", "20", "--png", str(png), "--out", str(md)])
    finally:
        torch.set_num_threads(threads)
    assert [o.method for o in outcomes] == ["valp", "clip"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "python -m bench.exactness" in text and "| 2g-shift | valp" in text


def test_main_job_report_states_time_budget_and_both_confidences() -> None:
    from bench.main_job import markdown

    curve = [{"iteration": 700, "FD_digits": 3.1, "KID_digits": 0.07, "classes": 10.0, "confidence": 0.88},
             {"iteration": 1400, "FD_digits": 2.3, "KID_digits": 0.04, "classes": 10.0, "confidence": 0.9}]
    rec = {"framework": "torch", "command": "python -m train.torch_wgan --preset digits", "machine": "x86_64, 2 CPUs",
           "load_before": 0.5, "wall_s": 290.4, "budget_s": 300.0, "train_s": 280.0, "iterations": 1400,
           "final": curve[-1], "curve": curve, "real_confidence": 0.995, "grid": "main_job_torch.png"}
    text = markdown(rec)
    assert "**290 s** (within the 300 s budget)" in text and "FD-digits **2.30**" in text
    assert "confidence 0.900 (on the real digits: 0.995)" in text and "| 700 | 3.10 |" in text
    assert "over the 300 s budget" in markdown({**rec, "wall_s": 301.0})
