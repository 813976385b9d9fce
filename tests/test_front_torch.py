"""The torch front door: VALPModule (buffer, random state in state_dict, accumulating step, DDP)
and the one-line valp_penalty."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from valr_core import VALP  # noqa: E402
from valr_core.frontends.torch_module import VALPModule, valp_penalty  # noqa: E402

pytestmark = pytest.mark.framework("torch")
REPO = Path(__file__).resolve().parents[1]


def _critic() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _x(seed: int, n: int = 8) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=(n, 2)), dtype=torch.float32)


def test_mu_is_a_float32_buffer_and_the_random_state_is_checkpointed() -> None:
    net, valp = _critic(), VALPModule(mode="al", K=0.0, rho=0.5, seed=3)
    assert valp.mu.dtype == torch.float32 and "mu" in dict(valp.named_buffers())
    valp(net, _x(0)).backward()
    valp.step()
    assert float(valp.mu) > 0
    sd = valp.state_dict()
    assert set(sd) == {"mu", "_extra_state"}
    restored = VALPModule(mode="al", K=0.0, rho=0.5, seed=99)
    restored.load_state_dict(sd)
    assert torch.equal(restored.mu, valp.mu)
    # Same random state: the next penalty is identical.
    torch.testing.assert_close(restored(net, _x(1)), valp(net, _x(1)), rtol=0, atol=0)
    valp.half()  # a .half() model keeps the multiplier in float32
    assert valp.mu.dtype == torch.float32
    assert "mode='al'" in repr(valp)


def test_step_uses_every_call_since_the_last_step() -> None:
    net, valp = _critic(), VALPModule(mode="al", K=0.0, rho=0.5)
    constraints, sizes = [], []
    for seed, n in ((0, 8), (1, 4)):  # e.g. real and fake batches in two calls
        valp(net, _x(seed, n))
        constraints.append(float(valp.last.constraint))
        sizes.append(n)
    valp.step()
    expected = 0.5 * np.average(constraints, weights=sizes)  # as one call on all 12 samples
    np.testing.assert_allclose(float(valp.mu), expected, rtol=1e-6)
    assert constraints[0] != constraints[1]
    with pytest.raises(RuntimeError, match="before the penalty"):
        valp.step()  # nothing pending


def test_step_is_a_noop_without_al_and_config_is_validated() -> None:
    valp = VALPModule()
    valp(_critic(), _x(0))
    valp.step()
    assert float(valp.mu) == 0.0
    with pytest.raises(TypeError, match="either"):
        VALPModule(VALP(), K=2.0)
    with pytest.raises(ValueError, match="eps_min"):
        VALPModule(eps_min=-1.0)
    with pytest.raises(ValueError, match=r"\.to\("):
        VALPModule().to(torch.float64)(_critic(), _x(0).to("meta"))


def test_functional_form_matches_valp_loss() -> None:
    net, x = _critic(), _x(0)
    one_line = valp_penalty(net, x, torch.Generator().manual_seed(5), eps_max=1.0)
    full, _ = VALP(eps_max=1.0).loss(net, x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(one_line, full)
    assert one_line.requires_grad
    with pytest.raises(ValueError, match="VALPModule"):
        valp_penalty(net, x, torch.Generator(), mode="al")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_moves_mu_and_recreates_the_generator() -> None:
    valp = VALPModule(mode="al", K=0.0, rho=0.5).to("cuda")
    assert valp.mu.is_cuda and valp.generator.device.type == "cuda"
    net = _critic().cuda()
    valp(net, _x(0).cuda())
    valp.step()
    assert valp.mu.is_cuda and float(valp.mu) > 0
    cpu = VALPModule(mode="al").to("cpu")
    with pytest.warns(UserWarning, match="reseeding"):
        cpu.load_state_dict(valp.state_dict())  # a CUDA random state on a CPU module


_DDP_WORKER = textwrap.dedent(
    """
    import json, sys, numpy as np, torch, torch.distributed as dist
    from valr_core.frontends.torch_module import VALPModule
    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(critic)
    valp = VALPModule(mode="al", K=0.0, rho=0.5, seed=rank)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    local = []
    for step in range(3):
        x = torch.tensor(np.random.default_rng([rank, step]).normal(size=(6 + 2 * rank, 2)), dtype=torch.float32)
        fx = ddp(x)
        loss = -fx.mean() + valp(ddp.module, x, fx=fx)
        opt.zero_grad(); loss.backward(); opt.step()
        local.append((float(valp.last.constraint), x.shape[0]))
        valp.step()
    json.dump({"mu": float(valp.mu), "local": local}, open(out, "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_ddp_keeps_mu_identical_on_every_replica() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init = "file://" + os.path.join(tmp, "rendezvous")
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(2)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), "2", init, outs[r]], env=env, cwd=tmp) for r in range(2)]
        for p in procs:
            assert p.wait(timeout=120) == 0
        res = [json.load(open(o)) for o in outs]
    assert res[0]["mu"] == res[1]["mu"]  # bit-identical on both replicas
    # mu follows the global (sample-weighted) constraint of each step, not one replica's.
    mu = 0.0
    for (c0, n0), (c1, n1) in zip(res[0]["local"], res[1]["local"], strict=True):
        mu = max(0.0, mu + 0.5 * (c0 * n0 + c1 * n1) / (n0 + n1))
    np.testing.assert_allclose(res[0]["mu"], mu, rtol=1e-5)


# -- spectral normalisation: VALP's passes leave the power iteration alone -----------------------
def _sn_critic() -> torch.nn.Module:
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    return torch.nn.Sequential(spectral_norm(torch.nn.Linear(2, 16)), torch.nn.Tanh(), spectral_norm(torch.nn.Linear(16, 1))).train()


def _power_state(net: torch.nn.Module) -> list[torch.Tensor]:
    sn = [m.parametrizations.weight[0] for m in net if torch.nn.utils.parametrize.is_parametrized(m)]
    return [t.clone() for p in sn for t in (p._u, p._v)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


@pytest.mark.parametrize("with_fx", [True, False])
def test_valp_passes_leave_spectral_norm_power_iteration_untouched(with_fx: bool) -> None:
    net, x = _sn_critic(), _x(0)
    valp = VALPModule(mode="al", K=0.0, rho=0.5, n_power=3, eps_max=1.0)
    fx = net(x) if with_fx else None  # the critic's own training pass: one power-iteration step
    before = _power_state(net)
    penalty = valp(net, x, fx=fx)
    assert _same(_power_state(net), before)
    penalty.backward()
    assert _same(_power_state(net), before)
    grads = [m.parametrizations.weight.original.grad for m in (net[0], net[2])]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)  # still trains the critic
    assert all(m.parametrizations.weight[0].training for m in (net[0], net[2]))  # mode restored
    net(x)  # an ordinary training forward still advances the power iteration
    after = _power_state(net)  # (u of the 1 x 16 last layer is +-1 whatever the step)
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_spectral_norm_frozen_through_a_closure_and_with_freeze() -> None:
    net, x = _sn_critic(), _x(1)
    before = _power_state(net)
    VALP(n_power=2, eps_max=1.0).loss(lambda z: net(z), x, torch.Generator().manual_seed(0))  # closes over net
    assert _same(_power_state(net), before)
    holder = {"net": net}  # a critic that does not show its module: freeze= says which
    VALP(eps_max=1.0).loss(lambda z: holder["net"](z), x, torch.Generator().manual_seed(0), freeze=net)
    assert _same(_power_state(net), before)


def test_valp_passes_use_the_weight_of_the_preceding_training_pass() -> None:
    # After fx = critic(x) (one power step), VALP's passes see that same normalised weight:
    # its penalty equals the one of a copy whose spectral_norm runs in eval mode throughout.
    net, x = _sn_critic(), _x(2)
    fx = net(x)
    frozen = copy.deepcopy(net)
    for m in (frozen[0], frozen[2]):
        m.parametrizations.weight[0].eval()
    got = VALP(K=0.0, eps_max=1.0).violations(net, x, torch.Generator().manual_seed(4), fx=fx)[0].quotients
    ref = VALP(K=0.0, eps_max=1.0).violations(frozen, x, torch.Generator().manual_seed(4), fx=frozen(x))[0].quotients
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_deprecated_hook_based_spectral_norm_is_frozen_too() -> None:
    # torch.nn.utils.spectral_norm (a forward pre-hook, not a parametrisation) iterates whenever
    # its module trains: VALP's passes, seen or through a closure, must leave u, v alone and see
    # the weight of the critic's own pass, with the module left in train mode.
    def build() -> torch.nn.Module:
        sn = torch.nn.utils.spectral_norm
        return torch.nn.Sequential(sn(torch.nn.Linear(2, 16)), torch.nn.Tanh(), sn(torch.nn.Linear(16, 1)))

    torch.manual_seed(0)
    net, frozen, x = build().train(), build(), _x(3)
    fx = net(x)
    frozen.load_state_dict(net.state_dict())
    frozen.eval()  # eval: no power iteration, the current u, v
    state = [t.clone() for m in (net[0], net[2]) for t in (m.weight_u, m.weight_v)]
    got = VALP(K=0.0, eps_max=1.0).violations(net, x, torch.Generator().manual_seed(4), fx=fx)[0].quotients
    VALP(eps_max=1.0).loss(lambda z: net(z), x, torch.Generator().manual_seed(0))  # closes over net
    assert _same([t for m in (net[0], net[2]) for t in (m.weight_u, m.weight_v)], state)
    ref = VALP(K=0.0, eps_max=1.0).violations(frozen, x, torch.Generator().manual_seed(4), fx=frozen(x))[0].quotients
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert net.training and net[0].training
    net(x)  # an ordinary training forward still advances the power iteration
    assert not torch.equal(net[0].weight_u, state[0])


# -- stats: every call of a step, combined as one call on all their samples ----------------------
def _draws_of_next_call(valp: VALPModule, x: torch.Tensor):
    g = torch.Generator()
    g.set_state(valp.generator.get_state())
    return valp.valp.draws(x, g)[0]


@pytest.mark.parametrize("reduction", ["mean", "sum", "max"])
def test_stats_cover_every_call_until_step_as_one_call_on_the_concatenated_batch(reduction: str) -> None:
    from valr_core.algorithm import Draws
    from valr_core.objectives import ALState

    net, valp = _critic(), VALPModule(mode="al", K=0.0, rho=0.5, reduction=reduction, eps_max=1.0, seed=1)
    valp.mu.fill_(0.25)
    real, fake = _x(0, 8), _x(1, 4)
    draws, penalties = [], []
    for x in (real, fake):  # real and fake passed separately
        draws.append(_draws_of_next_call(valp, x))
        penalties.append(valp(net, x))
    one = Draws(torch.cat([d.direction for d in draws]), torch.cat([d.eps for d in draws]), None)
    _, aux = VALP(mode="al", K=0.0, rho=0.5, reduction=reduction, eps_max=1.0).loss(net, torch.cat([real, fake]), draws=one, state=ALState(valp.mu.clone()))
    stats = valp.stats
    assert set(stats) == set(aux.stats)
    for key, value in aux.stats.items():
        torch.testing.assert_close(stats[key], value, rtol=1e-5, atol=1e-7, msg=key)
    combine = {"mean": lambda p: (8 * p[0] + 4 * p[1]) / 12, "sum": sum, "max": max}[reduction]
    torch.testing.assert_close(stats["valp/penalty"], combine([p.detach() for p in penalties]))
    # Not just the last call.
    assert not torch.equal(stats["valp/mean_quotient"], valp.last.stats["valp/mean_quotient"])
    valp.step()  # the step's statistics stay readable after step() ...
    torch.testing.assert_close(valp.stats["valp/mean_violation"], aux.stats["valp/mean_violation"])
    assert float(valp.stats["valp/mu"]) == 0.25 < float(valp.mu)  # the mu those calls used
    valp(net, real)  # ... and the next call starts a new step
    for key, value in valp.last.stats.items():
        torch.testing.assert_close(valp.stats[key], value)


def test_stats_combine_without_al_and_use_the_core_names() -> None:
    net, valp = _critic(), VALPModule(K=0.0, eps_max=1.0)
    assert valp.stats == {}
    valp(net, _x(0, 6))
    first = valp.last.stats
    valp(net, _x(1, 2))
    second = valp.last.stats
    stats = valp.stats
    assert set(stats) == set(first) and "valp/mu" not in stats
    torch.testing.assert_close(stats["valp/mean_violation"], (6 * first["valp/mean_violation"] + 2 * second["valp/mean_violation"]) / 8)
    torch.testing.assert_close(stats["valp/max_violation"], torch.maximum(first["valp/max_violation"], second["valp/max_violation"]))
    torch.testing.assert_close(stats["valp/violating_fraction"], (6 * first["valp/violating_fraction"] + 2 * second["valp/violating_fraction"]) / 8)
    valp.step()
    valp(net, _x(2, 3))
    torch.testing.assert_close(valp.stats["valp/max_violation"], valp.last.stats["valp/max_violation"])
    al = VALPModule(mode="al", eps_max=1.0)
    al(net, _x(0))
    names = {"valp/penalty", "valp/mean_violation", "valp/max_violation", "valp/violating_fraction", "valp/mu"}
    assert names <= set(al.stats) and all(k.startswith("valp/") for k in al.stats)


# -- init_state: any tensor of the framework ------------------------------------------------------
@pytest.mark.parametrize("like", [torch.zeros(()), torch.ones(3), torch.arange(4), torch.ones(2, 3, dtype=torch.bfloat16),
                                  torch.ones(5, dtype=torch.float16), torch.zeros(0, 2), torch.ones(2, dtype=torch.bool)],
                         ids=["0d", "1d", "int64", "bf16", "fp16", "empty", "bool"])
def test_init_state_accepts_any_tensor(like: torch.Tensor) -> None:
    mu = VALP(mode="al").init_state(like).mu
    assert mu.shape == () and mu.dtype == torch.float32 and mu.device == like.device and float(mu) == 0.0
    assert VALP(mode="al").init_state(torch.ones((), dtype=torch.float64)).mu.dtype == torch.float64
