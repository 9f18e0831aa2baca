"""Architecture variants and the D options (d_norm, spectral_norm), built through the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dist_gan.config import load_config
from dist_gan.losses import LossContext, build_loss
from dist_gan.models import ARCHS, build_discriminator, build_generator


def model_cfg(arch: str, resolution: int = 32, **kw):
    args = [f"model.arch={arch}", f"model.resolution={resolution}", "model.nz=16", "model.ngf=8", "model.ndf=8"]
    if arch == "began":
        args.append("loss.name=began")
    return load_config(args + [f"model.{k}={v}" for k, v in kw.items()]).model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", ["dcgan", "keras_improved", "began"])
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes(arch, resolution):
    cfg = model_cfg(arch, resolution)
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = G(torch.randn(2, 16))
    assert x.shape == (2, 3, resolution, resolution)
    assert x.abs().max() <= 1.0
    out = D(x)
    assert out.shape == ((2, 3, resolution, resolution) if arch == "began" else (2,))


def test_registry_lists_variants():
    assert {"dcgan", "keras_improved", "began"} <= set(ARCHS)


def test_keras_improved_structure():
    cfg = model_cfg("keras_improved", 64)
    D, G = build_discriminator(cfg), build_generator(cfg)
    mods = list(D.features)
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4  # 64 -> 4 in stride-2 blocks
    for i in convs:  # each conv block ends in LeakyReLU + Dropout(0.25)
        block = mods[i: (convs[convs.index(i) + 1] if i != convs[-1] else len(mods))]
        assert isinstance(block[-1], nn.Dropout) and block[-1].p == 0.25
        assert isinstance(block[-2], nn.LeakyReLU)
    head = list(D.head)
    assert isinstance(head[0], nn.AdaptiveAvgPool2d)  # global average pooling, not flatten of the map
    dense = [m for m in head if isinstance(m, nn.Linear)]
    assert dense[0].out_features == 256 and dense[-1].out_features == 1
    assert any(isinstance(m, nn.Dropout) for m in head) and any(isinstance(m, nn.LeakyReLU) for m in head)
    gm = list(G.net)
    for i, m in enumerate(gm):
        if isinstance(m, nn.ConvTranspose2d):
            assert isinstance(gm[i + 1], nn.BatchNorm2d) and isinstance(gm[i + 2], nn.ReLU)


def test_keras_recipe_gives_g_twice_d_lr():
    cfg = load_config(["recipe=keras_improved"])
    assert cfg.optim.g_lr == pytest.approx(2 * cfg.optim.d_lr)


def test_began_d_is_an_autoencoder():
    cfg = model_cfg("began", 64)
    D = build_discriminator(cfg)
    convs = [m for m in D.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.stride == (2, 2) for c in convs) == 3  # 64 -> 8 by stride-2 convs
    ups = [m for m in D.decoder.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 3 and all(u.mode == "nearest" for u in ups)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    assert D.encoder.embed.out_features == 16  # h = nz
    # two 3x3 convs at each decoder level before every upsampling
    seq = list(D.decoder.net)
    for i, m in enumerate(seq):
        if isinstance(m, nn.Upsample):
            assert isinstance(seq[i - 2], nn.Conv2d) and isinstance(seq[i - 4], nn.Conv2d)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_d_norm_removes_batch_norm(norm):
    for arch in ("dcgan", "keras_improved"):
        D = build_discriminator(model_cfg(arch, d_norm=norm))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
        assert any(isinstance(m, nn.GroupNorm) for m in D.modules()) == (norm == "layer")
        assert D(torch.randn(3, 3, 32, 32)).shape == (3,)


def test_wgan_gp_recipe_critic_has_no_batch_norm():
    cfg = load_config(["recipe=wgan_gp"])
    assert (cfg.optim.d_steps, cfg.optim.g_steps, cfg.loss.gp_weight) == (5, 1, 10.0)
    assert list(cfg.optim.d_betas) == [0.0, 0.9] and cfg.optim.d_lr == 1e-4
    D = build_discriminator(cfg.model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())


@pytest.mark.parametrize("arch", ["dcgan", "keras_improved", "began"])
def test_spectral_norm_on_every_conv_and_linear(arch):
    D = build_discriminator(model_cfg(arch, spectral_norm=True))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in build_discriminator(model_cfg(arch)).modules())


def test_spectral_norm_bounds_sigma_and_round_trips():
    cfg = model_cfg("dcgan", spectral_norm=True)
    D = build_discriminator(cfg).train()
    for _ in range(30):  # power iterations run in training-mode forwards
        D(torch.randn(4, 3, 32, 32))
    lin = [m for m in D.modules() if isinstance(m, nn.Conv2d)][-1]
    sigma = torch.linalg.matrix_norm(lin.weight.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)
    D2 = build_discriminator(cfg)
    D2.load_state_dict(D.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(D.eval()(x), D2.eval()(x), atol=1e-6)


def test_dcgan128_builds_and_trains_a_step():
    cfg = load_config(["recipe=dcgan128", "model.ngf=8", "model.ndf=8"])
    assert cfg.model.resolution == 128
    G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    assert len([m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]) == 6  # 1 -> 4 -> ... -> 128
    loss_fn = build_loss(cfg.loss)
    opt_d = torch.optim.Adam(D.parameters(), cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas))
    opt_g = torch.optim.Adam(G.parameters(), cfg.optim.g_lr, betas=tuple(cfg.optim.g_betas))
    real = torch.rand(4, 3, 128, 128) * 2 - 1
    fake = G(torch.randn(4, cfg.model.nz))
    before = [p.detach().clone() for p in D.parameters()]
    loss, _ = loss_fn.d_loss(D, real, fake.detach(), LossContext())
    loss.backward()
    opt_d.step()
    D.requires_grad_(False)
    g, _ = loss_fn.g_loss(D, fake, LossContext())
    g.backward()
    opt_g.step()
    assert torch.isfinite(loss) and torch.isfinite(g)
    assert any(not torch.equal(a, b) for a, b in zip(before, D.parameters()))
