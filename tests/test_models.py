"""WGAN-GP ResNet generator/critic in torch, tf and jax: shapes, counts, conversion, parity."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from models import convert, spec
from models.spec import ResNetConfig

SMALL = ResNetConfig(gen_channels=32, critic_channels=32)
KINDS = ("generator", "critic")


class Net:
    """One model in one framework behind a uniform numpy/NHWC interface (test adapter)."""

    def __init__(
        self, framework: str, kind: str, cfg: ResNetConfig, seed: int = 0, shapes_only: bool = False,
        norm: str = "none",
    ) -> None:
        self.framework, self.kind, self.cfg = framework, kind, cfg
        if framework == "torch":
            import torch

            from models import torch_dcgan, torch_resnet

            tr = torch_dcgan if cfg.arch == "dcgan" else torch_resnet
            torch.manual_seed(seed)
            self.obj = tr.Generator(cfg) if kind == "generator" else tr.Critic(cfg, norm=norm)
        elif framework == "tf":
            import keras

            from models import tf_dcgan, tf_resnet

            kr = tf_dcgan if cfg.arch == "dcgan" else tf_resnet
            keras.utils.set_random_seed(seed)
            self.obj = kr.build_generator(cfg) if kind == "generator" else kr.build_critic(cfg, norm=norm)
        else:
            import jax

            from models import jax_dcgan
            from models import jax_resnet as jr

            arch = jax_dcgan if cfg.arch == "dcgan" else jr
            module = arch.Generator(cfg) if kind == "generator" else arch.Critic(cfg, norm=norm)
            key = jax.random.PRNGKey(seed)
            if shapes_only:  # the variables' structure without running the initialisers
                self.module, self.obj = module, jax.eval_shape(lambda k: jr.init(module, k)[1], key)
            else:
                self.module, self.obj = jr.init(module, key)

    def params(self) -> dict[str, np.ndarray]:
        return convert.to_canonical(self.framework, self.obj)

    def load(self, params: dict[str, np.ndarray]) -> None:
        target = self.module if self.framework == "jax" else self.obj
        out = convert.from_canonical(self.framework, target, params)
        if self.framework == "jax":
            self.obj = out

    def n_trainable(self) -> int:
        if self.framework == "torch":
            return sum(p.numel() for p in self.obj.parameters() if p.requires_grad)
        if self.framework == "tf":
            return sum(int(np.prod(w.shape)) for w in self.obj.trainable_weights)
        import jax

        return sum(
            int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(self.obj["params"])
        )

    def __call__(self, inp: np.ndarray, train: bool = False) -> np.ndarray:
        """Generator: z -> NHWC images; critic: NHWC images -> (N, 1). Train mode updates stats."""
        inp = np.asarray(inp, np.float32)
        if self.framework == "torch":
            import torch

            x = torch.from_numpy(inp if self.kind == "generator" else inp.transpose(0, 3, 1, 2))
            self.obj.train(train)
            with torch.no_grad():
                y = self.obj(x).numpy()
            return y.transpose(0, 2, 3, 1) if self.kind == "generator" else y
        if self.framework == "tf":
            return np.asarray(self.obj(inp, training=train))
        import jax
        import jax.numpy as jnp

        # One jit of the whole model compiles faster than op-by-op eager dispatch.
        if train and self.kind == "generator":
            apply = functools.partial(self.module.apply, train=True, mutable=["batch_stats"])
            y, upd = jax.jit(apply)(self.obj, jnp.asarray(inp))
            self.obj = {**self.obj, **upd}
        else:
            y = jax.jit(functools.partial(self.module.apply, train=train))(
                self.obj, jnp.asarray(inp)
            )
        return np.asarray(y)


def _inputs(kind: str, cfg: ResNetConfig, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "generator":
        return rng.standard_normal((n, cfg.latent_dim)).astype(np.float32)
    size = (n, cfg.image_size, cfg.image_size, cfg.image_channels)
    return rng.uniform(-1, 1, size).astype(np.float32)


def _random_params(kind: str, cfg: ResNetConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical params with distinct random entries everywhere (positive variances)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.param_table(kind, cfg).items():
        a = rng.standard_normal(shape).astype(np.float32)
        out[name] = np.abs(a) + np.float32(0.5) if name.endswith(".var") else a
    return out


# ---- plain-python expectations (independent of models.spec) ---------------------------------


def _conv_count(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def expected_generator_params(latent: int, c: int, image_channels: int = 3, base: int = 4) -> int:
    dense = latent * base * base * c + base * base * c
    bn = 2 * c  # scale + bias; running stats are not parameters
    up_block = bn + _conv_count(3, c, c) + bn + _conv_count(3, c, c) + _conv_count(1, c, c)
    return dense + 3 * up_block + bn + _conv_count(3, c, image_channels)


def expected_critic_params(c: int, image_channels: int = 3) -> int:
    optimized = (
        _conv_count(3, image_channels, c) + _conv_count(3, c, c) + _conv_count(1, image_channels, c)
    )
    down = 2 * _conv_count(3, c, c) + _conv_count(1, c, c)
    plain = 2 * _conv_count(3, c, c)
    return optimized + down + 2 * plain + (c + 1)


# ---- framework-free --------------------------------------------------------------------------


def test_import_models_imports_no_framework() -> None:
    code = (
        "import sys, models, models.spec, models.convert\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'jax', 'flax') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )


def test_spec_counts_match_plain_python() -> None:
    for cfg in (ResNetConfig(), ResNetConfig(gen_channels=256, critic_channels=64, latent_dim=100)):
        gen = spec.trainable_count(spec.generator_table(cfg))
        assert gen == expected_generator_params(cfg.latent_dim, cfg.gen_channels)
        assert spec.trainable_count(spec.critic_table(cfg)) == expected_critic_params(
            cfg.critic_channels
        )
    # The released configuration (C = 128), for the record.
    assert expected_generator_params(128, 128) == 1_204_483
    assert expected_critic_params(128) == 1_053_825


def test_critic_norms() -> None:
    """The critics' ``norm`` values (tests/test_spectral_norm_<framework>.py test "spectral")."""
    assert spec.CRITIC_NORMS == ("none", "spectral")
    assert [spec.check_norm(n) for n in spec.CRITIC_NORMS] == list(spec.CRITIC_NORMS)
    with pytest.raises(ValueError, match=r"unknown critic norm 'layer'; expected one of \('none', 'spectral'\)"):
        spec.check_norm("layer")
    spec.refuse_spectral("none", "x")
    with pytest.raises(ValueError, match="^x: a critic with norm='spectral' cannot be converted between frameworks"):
        spec.refuse_spectral("spectral", "x")


def test_npz_round_trip(tmp_path) -> None:
    params = _random_params("generator", SMALL)
    path = tmp_path / "g.npz"
    convert.save_npz(path, params)
    convert.save_npz(path, params)  # overwriting goes through os.replace as well
    loaded = convert.load_npz(path, spec.generator_table(SMALL))
    assert loaded.keys() == params.keys()
    for k, v in params.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
    assert sorted(os.listdir(tmp_path)) == ["g.npz"]  # no temp file left behind


def test_load_npz_checks_table(tmp_path) -> None:
    path = tmp_path / "c.npz"
    convert.save_npz(path, _random_params("critic", ResNetConfig(critic_channels=64)))
    with pytest.raises(
        ValueError, match=r"block1\.conv1\.kernel.*\(3, 3, 3, 64\).*\(3, 3, 3, 128\)"
    ):
        convert.load_npz(path, spec.critic_table(ResNetConfig()))


# ---- per framework ---------------------------------------------------------------------------


def test_output_shapes_and_range(framework: str) -> None:
    gen, critic = Net(framework, "generator", SMALL), Net(framework, "critic", SMALL)
    z = _inputs("generator", SMALL, 3)
    for train in (False, True):
        img = gen(z, train=train)
        assert img.shape == (3, 32, 32, 3) and img.dtype == np.float32  # NHWC view
        assert np.all(np.abs(img) <= 1.0) and np.isfinite(img).all()
        assert critic(img, train=train).shape == (3, 1)
    if framework == "torch":
        import torch

        assert gen.obj(torch.from_numpy(z)).shape == (3, 3, 32, 32)  # native NCHW


@pytest.mark.parametrize(
    "cfg", [ResNetConfig(), ResNetConfig(latent_dim=64, gen_channels=48, critic_channels=16)]
)
def test_parameter_count(framework: str, cfg: ResNetConfig) -> None:
    gen, critic = (Net(framework, kind, cfg, shapes_only=True) for kind in KINDS)
    assert gen.n_trainable() == expected_generator_params(cfg.latent_dim, cfg.gen_channels)
    assert critic.n_trainable() == expected_critic_params(cfg.critic_channels)


@pytest.mark.parametrize("kind", KINDS)
def test_canonical_round_trip(framework: str, kind: str) -> None:
    net = Net(framework, kind, SMALL)
    first = net.params()
    table = spec.param_table(kind, SMALL)
    assert {k: v.shape for k, v in first.items()} == table
    assert all(v.dtype == np.float32 for v in first.values())

    # Random values everywhere, so a wrong transpose/permutation cannot go unnoticed.
    params = _random_params(kind, SMALL)
    net.load(params)
    again = net.params()
    for k in table:
        assert np.array_equal(again[k], params[k]), k
    net.load(again)
    for k, v in net.params().items():
        assert np.array_equal(v, again[k]), k


@pytest.mark.parametrize("arch", spec.ARCHS)
def test_spectral_critic_conversion_and_unknown_norm_refused(framework: str, arch: str) -> None:
    """A spectrally normalised critic's weights are not the plain critic's: refused both ways."""
    cfg = ResNetConfig(arch=arch, critic_channels=8)
    spectral = Net(framework, "critic", cfg, norm="spectral")
    with pytest.raises(ValueError, match="norm='spectral' cannot be converted between frameworks"):
        spectral.params()
    with pytest.raises(ValueError, match="norm='spectral' cannot be converted"):
        spectral.load(Net(framework, "critic", cfg).params())
    with pytest.raises(ValueError, match=r"unknown critic norm 'batch'.*\('none', 'spectral'\)"):
        Net(framework, "critic", cfg, norm="batch")


@pytest.mark.parametrize("kind", KINDS)
def test_load_mismatch_raises(framework: str, kind: str, tmp_path) -> None:
    wide = ResNetConfig(gen_channels=64, critic_channels=64)
    path = tmp_path / "w.npz"
    convert.save_npz(path, _random_params(kind, wide))
    net = Net(framework, kind, ResNetConfig(), shapes_only=True)  # width 128
    got, want = spec.param_table(kind, wide), spec.param_table(kind, ResNetConfig())
    key = next(k for k in want if got[k] != want[k])  # the first mismatch in table order
    pattern = ".*".join(re.escape(str(t)) for t in (key, got[key], want[key]))
    with pytest.raises(ValueError, match=pattern):
        net.load(convert.load_npz(path))

    key = "block2.conv1.kernel"
    params = _random_params(kind, SMALL)
    del params[key]
    with pytest.raises(
        ValueError, match=re.escape(f"missing key '{key}' (expected shape (3, 3, 32, 32))")
    ):
        Net(framework, kind, SMALL, shapes_only=True).load(params)

    params = _random_params(kind, SMALL)
    params["extra.kernel"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="extra.kernel"):
        Net(framework, kind, SMALL, shapes_only=True).load(params)


# ---- cross-framework parity ------------------------------------------------------------------


def _assert_close(
    got: np.ndarray, ref: np.ndarray, what: str, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    scale = max(float(np.abs(ref).max()), 1.0)  # atol relative to the output scale
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=what)


def _converted(kind: str, cfg: ResNetConfig = SMALL) -> dict[str, Net]:
    """torch model (fixed seed) with non-trivial BN state, converted to tf and jax."""
    import torch

    nets = {fw: Net(fw, kind, cfg, seed=0) for fw in ("torch", "tf", "jax")}
    with torch.no_grad():  # default BN state (1, 0, 0, 1) would hide scale/bias/mean/var mixups
        for m in nets["torch"].obj.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    params = nets["torch"].params()
    nets["tf"].load(params)
    nets["jax"].load(params)
    return nets


@pytest.mark.framework("torch", "tf", "jax")
def test_critic_parity() -> None:
    import jax
    import torch

    import models

    nets = _converted("critic")
    x = _inputs("critic", SMALL, 5)
    ref = nets["torch"](x)
    assert np.abs(ref).max() > 1e-3  # a dead critic would make the comparison vacuous
    for fw in ("tf", "jax"):
        _assert_close(nets[fw](x), ref, f"critic {fw} vs torch")

    # critic_fn: the callables the VALP parity test will use, in each framework's layout.
    outs = {
        "torch": models.critic_fn("torch", nets["torch"].obj)(
            torch.from_numpy(x.transpose(0, 3, 1, 2))
        )
        .detach()
        .numpy(),
        "tf": np.asarray(models.critic_fn("tf", nets["tf"].obj)(x)),
        "jax": np.asarray(jax.jit(models.critic_fn("jax", nets["jax"].obj))(x)),
        "jax+module": np.asarray(models.critic_fn("jax", (nets["jax"].module, nets["jax"].obj))(x)),
    }
    for name, out in outs.items():
        assert out.shape == (5, 1), name
        _assert_close(out, ref, f"critic_fn {name}")


@pytest.mark.framework("torch", "tf", "jax")
def test_generator_parity_eval() -> None:
    nets = _converted("generator")
    z = _inputs("generator", SMALL, 4)
    ref = nets["torch"](z, train=False)
    assert np.abs(ref).max() < 1.0  # not saturated: tanh would hide differences
    for fw in ("tf", "jax"):
        _assert_close(nets[fw](z, train=False), ref, f"generator eval {fw} vs torch", atol=2e-5)


@pytest.mark.framework("torch", "tf", "jax")
@pytest.mark.parametrize("kind", KINDS)
def test_dcgan_parity(kind: str) -> None:
    """The DCGAN (``--arch dcgan``) converts too: torch's channels-first reshape after the
    generator's dense layer and the critic's flatten must map to NHWC's (h, w, c) order."""
    cfg = ResNetConfig(arch="dcgan", gen_channels=8, critic_channels=8)
    nets = _converted(kind, cfg)
    x = _inputs(kind, cfg, 4)
    ref = nets["torch"](x)
    assert np.abs(ref).max() > 1e-3 and (kind == "critic" or np.abs(ref).max() < 1.0)
    for fw in ("tf", "jax"):
        _assert_close(nets[fw](x), ref, f"dcgan {kind} {fw} vs torch", atol=2e-5)
        back = nets[fw].params()
        assert all(np.array_equal(back[k], v) for k, v in nets["torch"].params().items()), fw


@pytest.mark.framework("torch", "tf", "jax")
def test_generator_parity_train_and_running_stats() -> None:
    nets = _converted("generator")
    before = nets["torch"].params()
    n = 4
    z = _inputs("generator", SMALL, n)
    ref = nets["torch"](z, train=True)
    outs = {fw: nets[fw](z, train=True) for fw in ("tf", "jax")}
    for fw, out in outs.items():
        _assert_close(out, ref, f"generator train {fw} vs torch", atol=2e-5)

    # Elements per channel behind each BatchNorm: batch x spatial size at that layer.
    s = SMALL.base_size
    count = {"out_bn": n * SMALL.image_size**2}
    for i in (1, 2, 3):
        count[f"block{i}.bn1"] = n * (s * 2 ** (i - 1)) ** 2
        count[f"block{i}.bn2"] = n * (s * 2**i) ** 2

    after = {fw: nets[fw].params() for fw in ("torch", "tf", "jax")}
    m = spec.BN_MOMENTUM
    for bn, cnt in count.items():
        mean, var = f"{bn}.mean", f"{bn}.var"
        assert not np.allclose(after["torch"][mean], before[mean]), f"{mean} not updated"
        for fw in ("tf", "jax"):
            _assert_close(after[fw][mean], after["torch"][mean], f"{mean} {fw}")
            # keras/flax update running var with the biased batch variance, torch with the
            # unbiased one: rescale the batch part by cnt/(cnt-1) before comparing.
            batch_part = after[fw][var] - m * before[var]
            _assert_close(
                m * before[var] + batch_part * cnt / (cnt - 1), after["torch"][var], f"{var} {fw}"
            )
        # tf and jax both use the biased variance: they agree directly.
        _assert_close(after["tf"][var], after["jax"][var], f"{var} tf vs jax")
    # Trainable parameters are untouched by a forward pass.
    for k, v in before.items():
        if not spec.is_stat(k):
            for fw in ("torch", "tf", "jax"):
                assert np.array_equal(after[fw][k], v), (fw, k)
