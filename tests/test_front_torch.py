"""The torch front door: VALPModule (buffer, random state in state_dict, accumulating step, DDP)
and the one-line valp_penalty."""

from __future__ import annotations

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
