"""models/dcgan.py: the nearest-upsample start of G's transposed convs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_gan.config import load_config
from dist_gan.errors import UserError
from dist_gan.models import build_generator
from dist_gan.models.dcgan import Generator, nearest_upsample_init


def _phase_spread(y: torch.Tensor) -> float:
    """How far the four 2x2 pixel phases of an output differ (0 for a phase-free output)."""
    phases = torch.stack([y.detach()[..., a::2, b::2].mean() for a in (0, 1) for b in (0, 1)])
    return float(phases.max() - phases.min())


def test_nearest_init_makes_the_layer_upsample_then_conv():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(5, 7, 4, 2, 1, bias=False)
    nearest_upsample_init(layer)
    x = torch.randn(2, 5, 6, 6)
    y = layer(x)
    # recover the 3x3 kernel: W4 = (W3 (*) box2) / 2, so the layer equals upsample + conv with W3 flipped
    w4 = layer.weight.detach() * 2
    w3 = w4[:, :, :3, :3].clone()
    for i in range(3):  # undo the box filter row by row, column by column (first entries are W3's own)
        for j in range(3):
            w3[:, :, i, j] = w4[:, :, i, j] - (w3[:, :, i - 1, j] if i else 0) - (w3[:, :, i, j - 1] if j else 0) \
                - (w3[:, :, i - 1, j - 1] if i and j else 0)
    z = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w3.flip(2, 3).transpose(0, 1), padding=1)
    assert torch.allclose(2 * y, z, atol=1e-5)  # the layer is upsample + conv with W3 / 2


def test_a_constant_input_gives_no_checkerboard_only_with_nearest_init():
    torch.manual_seed(0)
    x = torch.ones(1, 8, 6, 6)
    random = nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False)
    nn.init.normal_(random.weight, 0.0, 0.02)
    fixed = nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False)
    nearest_upsample_init(fixed)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert _phase_spread(fixed(x)[inner]) < 1e-6
    assert _phase_spread(random(x)[inner]) > 1e-3


def test_nearest_init_keeps_the_entries_scale():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(64, 64, 4, 2, 1, bias=False)
    nearest_upsample_init(layer)
    inner = layer.weight[:, :, 1:3, 1:3]  # entries that sum four 3x3 entries
    assert 0.017 < float(inner.std()) < 0.023


def test_generator_applies_it_to_every_stride_2_layer_only():
    torch.manual_seed(0)
    G = Generator(64, nz=16, ngf=8, init="nearest")
    plain = Generator(64, nz=16, ngf=8)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convs[0].stride == (1, 1) and convs[0].weight.shape[2:] == (4, 4)
    assert 0.015 < float(convs[0].weight.std()) < 0.025  # the 1x1 -> 4x4 layer keeps the DCGAN draw
    for m, p in zip(convs[1:], [m for m in plain.modules() if isinstance(m, nn.ConvTranspose2d)][1:]):
        x = torch.ones(1, m.in_channels, 6, 6)
        assert _phase_spread(m(x)[..., 2:-2, 2:-2]) < 1e-6
        assert _phase_spread(p(x)[..., 2:-2, 2:-2]) > 1e-4
    assert G(torch.randn(2, 16)).shape == (2, 3, 64, 64)


def test_unknown_init_is_refused_by_the_model_and_the_recipe():
    with pytest.raises(ValueError, match="g_init"):
        Generator(64, init="xavier")
    with pytest.raises(UserError, match="model.g_init"):
        load_config(["recipe=smoke", "model.g_init=xavier"])


def test_recipe_key_reaches_the_generator():
    cfg = load_config(["recipe=smoke", "model.g_init=nearest"])
    torch.manual_seed(0)
    G = build_generator(dict(cfg.model))
    last = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    x = torch.ones(1, last.in_channels, 6, 6)
    assert _phase_spread(last(x)[..., 2:-2, 2:-2]) < 1e-6


def test_minibatch_std_lets_the_dcgan_d_see_the_batch_spread_and_is_off_by_default():
    from dist_gan.models import build_discriminator
    from dist_gan.models.dcgan import Discriminator
    from dist_gan.models.minibatch_std import MinibatchStd

    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    same = x[:1].expand(8, -1, -1, -1).clone()
    plain = build_discriminator(dict(load_config(["recipe=bigbatch", "model.resolution=32"]).model))
    assert not any(isinstance(m, MinibatchStd) for m in plain.modules())  # as every shipped dcgan recipe trains
    D = build_discriminator(dict(load_config(["recipe=bigbatch", "model.resolution=32", "model.mbstd_group=4"]).model))
    assert sum(isinstance(m, MinibatchStd) for m in D.modules()) == 1
    D.eval(), plain.eval()
    with torch.no_grad():  # eval mode: BN uses running stats, so only the mbstd channel links the samples
        assert abs(float(D(x)[0] - D(same)[0])) > 1e-4
        assert torch.allclose(plain(x)[0], plain(same)[0], atol=1e-6)
    assert Discriminator(32, 8, mbstd_group=4).net[-1].in_channels == 8 * 4 + 1


def test_mbstd_group_is_refused_where_no_d_reads_it():
    with pytest.raises(UserError, match="model.mbstd_group"):
        load_config(["recipe=keras_improved", "model.mbstd_group=4"])
    with pytest.raises(UserError, match="model.mbstd_group"):
        load_config(["recipe=bigbatch", "model.mbstd_group=-1"])
