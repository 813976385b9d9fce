"""Spectral normalisation of the torch critics (``norm="spectral"``): torch's own
``parametrizations.spectral_norm`` on every conv and dense layer, its u/v in ``state_dict()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import spec, torch_dcgan, torch_resnet
from models.spec import ResNetConfig

ARCHS = {"resnet": torch_resnet, "dcgan": torch_dcgan}
TOL = 1e-2  # |sigma_max(W / sigma_hat) - 1| after the power iterations below


def _cfg(arch: str) -> ResNetConfig:
    return ResNetConfig(critic_channels=8, arch=arch)


def _critic(arch: str, norm: str = "spectral", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ARCHS[arch].Critic(_cfg(arch), norm=norm)


def _x(n: int = 2, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32))


def _layers(arch: str) -> dict[str, tuple[int, ...]]:
    """Canonical layer name -> kernel shape (HWIO / (in, out)) of every conv and dense layer."""
    table = spec.param_table("critic", _cfg(arch))
    return {k[: -len(".kernel")]: s for k, s in table.items() if k.endswith(".kernel")}


def _sn_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if k.endswith(("._u", "._v"))}


@pytest.mark.parametrize("arch", ARCHS)
def test_state_names_shapes_and_counts(arch: str) -> None:
    plain, sn = _critic(arch, "none"), _critic(arch)
    x = _x()
    assert sn(x).shape == plain(x).shape == (2, 1)
    # The same parameters (and the same initial values: SN wraps after the init draws).
    n_params = spec.trainable_count(spec.param_table("critic", _cfg(arch)))
    assert sum(p.numel() for p in sn.parameters()) == sum(p.numel() for p in plain.parameters()) == n_params
    renamed = {k.replace(".weight", ".parametrizations.weight.original"): v for k, v in plain.state_dict().items()}
    expected = dict(renamed)
    for layer, shape in _layers(arch).items():
        fan_in = int(np.prod(shape[:-1]))
        expected[f"{layer}.parametrizations.weight.0._u"] = torch.empty(shape[-1])
        expected[f"{layer}.parametrizations.weight.0._v"] = torch.empty(fan_in)
    got = sn.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    for k, v in renamed.items():
        assert torch.equal(got[k], v), k
    assert dict(sn.named_buffers()).keys() == _sn_state(sn).keys()  # u, v are the only buffers


@pytest.mark.parametrize("arch", ARCHS)
def test_unit_spectral_norm(arch: str) -> None:
    critic = _critic(arch).train()
    x = _x(1)
    with torch.no_grad():
        for _ in range(50):  # one power-iteration step each (after spectral_norm's 15 at init)
            critic(x)
    critic.eval()  # reading .weight in eval mode takes no further step
    for layer in _layers(arch):
        m = critic.get_submodule(layer)
        w = m.parametrizations.weight.original.detach().reshape(m.weight.shape[0], -1).double().numpy()
        u, v = m.parametrizations.weight[0]._u.double().numpy(), m.parametrizations.weight[0]._v.double().numpy()
        true = np.linalg.svd(w, compute_uv=False)[0]
        assert abs(u @ w @ v / true - 1) < TOL, layer  # torch's sigma estimate
        eff = m.weight.detach().reshape(m.weight.shape[0], -1).double().numpy()
        assert abs(np.linalg.svd(eff, compute_uv=False)[0] - 1) < TOL, layer


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_pass_leaves_state(arch: str) -> None:
    """What VALP's extra passes rely on: an eval-mode pass takes no power-iteration step, and
    uses the weight the training pass before it used."""
    critic, x = _critic(arch).train(), _x()
    with torch.no_grad():
        trained = critic(x)
        before = _sn_state(critic)
        critic.eval()
        again = critic(x)
    assert all(torch.equal(v, _sn_state(critic)[k]) for k, v in before.items())
    torch.testing.assert_close(again, trained, rtol=1e-5, atol=1e-6)
    critic.train()
    with torch.no_grad():
        critic(x)
    assert any(not torch.equal(v, _sn_state(critic)[k]) for k, v in before.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip(arch: str) -> None:
    src, x = _critic(arch, seed=0), _x()
    with torch.no_grad():
        for _ in range(3):
            src(x)
    saved = {k: v.detach().cpu().numpy().copy() for k, v in src.state_dict().items()}  # as the trainer does
    dst = _critic(arch, seed=1)
    dst.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()})
    with torch.no_grad():
        for mode in (False, True):  # eval, then a training pass (one power-iteration step each)
            src.train(mode)
            dst.train(mode)
            assert torch.equal(src(x), dst(x)), mode
    after = _sn_state(src)
    for k, v in after.items():
        assert torch.equal(v, _sn_state(dst)[k]), k  # the same next u, v ...
    assert any(not np.array_equal(v.numpy(), saved[k]) for k, v in after.items())  # ... which moved


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_the_raw_weight(arch: str) -> None:
    critic = _critic(arch)
    critic(_x()).sum().backward()
    for layer in _layers(arch):
        grad = critic.get_submodule(layer).parametrizations.weight.original.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, layer
