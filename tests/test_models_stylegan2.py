"""models/stylegan2.py: StyleGAN2 G and D (shapes, modulation, mixing, truncation, equalised lr, mbstd)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_gan.models.dcgan import Discriminator as DCGANDiscriminator
from dist_gan.models.stylegan2 import (EqualConv2d, EqualLinear, MappingNetwork, ModulatedConv2d,
                                       StyleGAN2Discriminator, StyleGAN2Generator, SynthesisLayer, SynthesisNetwork,
                                       ToRGB, num_ws_for)

# tiny widths: min(512 // r, 32) -> 32 channels at 4..16 px, 16 at 32 px, 8 at 64 px
SMALL = dict(channel_base=512, channel_max=32)


def _g(resolution: int = 32, **kw) -> StyleGAN2Generator:
    args = dict(z_dim=16, w_dim=16, mapping_depth=2, **SMALL)
    args.update(kw)
    return StyleGAN2Generator(resolution, **args)


def _capture_ws(G: StyleGAN2Generator) -> list[torch.Tensor]:
    """Records the ws tensor the synthesis network is called with."""
    seen: list[torch.Tensor] = []
    G.synthesis.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes_of_g_and_d_match_the_dcgan_contract(resolution):
    torch.manual_seed(0)
    G, D = _g(resolution), StyleGAN2Discriminator(resolution, **SMALL)
    z = torch.randn(3, G.nz)
    img = G(z)
    assert img.shape == (3, 3, resolution, resolution)
    assert G(z[:, :, None, None]).shape == img.shape  # (N, nz, 1, 1) latents, as the DCGAN G takes
    logits = D(img)
    ref = DCGANDiscriminator(resolution, ndf=8)(img)
    assert logits.shape == ref.shape == (3,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("resolution", [32, 64])
def test_num_ws_is_the_number_of_ws_the_synthesis_consumes(resolution):
    torch.manual_seed(0)
    G = _g(resolution).eval()
    layers = [m for m in G.synthesis.modules() if isinstance(m, SynthesisLayer)]
    torgbs = [m for m in G.synthesis.modules() if isinstance(m, ToRGB)]
    # one w per modulated conv, plus the last ToRGB's (the others share the next conv0's)
    assert G.num_ws == len(layers) + 1 == 2 * int(math.log2(resolution)) - 2 == num_ws_for(resolution)
    assert len(torgbs) == int(math.log2(resolution)) - 1
    ws = G.mapping_ws(torch.randn(2, G.z_dim))
    assert ws.shape == (2, G.num_ws, G.w_dim)
    for bad in (G.num_ws - 1, G.num_ws + 1):
        with pytest.raises(ValueError, match="ws must be"):
            G.synthesize(torch.randn(2, bad, G.w_dim))
    base = G.synthesize(ws, noise_mode="const")
    for i in range(G.num_ws):  # every one of the num_ws vectors reaches the image
        ws2 = ws.clone()
        ws2[:, i] += 1.0
        assert not torch.allclose(G.synthesize(ws2, noise_mode="const"), base, atol=1e-6), f"w[{i}] unused"


def test_demodulation_keeps_unit_variance_and_no_demodulation_does_not():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 24, 24)
    w = 3.0 * torch.randn(4, 16)  # large, random styles: demodulation must undo their scale
    for demod in (True, False):
        conv = ModulatedConv2d(64, 32, 3, w_dim=16, demodulate=demod)
        with torch.no_grad():
            y = conv(x, w)[..., 1:-1, 1:-1]  # the zero-padded border has fewer terms
        std = y.std(dim=(2, 3))  # per sample, per output channel
        inside = ((std > 0.8) & (std < 1.25)).float().mean().item()
        if demod:
            assert inside == 1.0, std
        else:
            assert inside < 0.2, std


def test_bf16_activations_stay_bf16_through_every_synthesis_layer():
    """A float32 style, demodulation coefficient or bias would promote each layer's output to float32
    under autocast: every elementwise op after it then runs on float32 (3x slower on a CPU)."""
    torch.manual_seed(0)
    G = _g(32)
    dtypes: list[torch.dtype] = []
    for m in G.modules():
        if isinstance(m, (SynthesisLayer, ToRGB)):
            m.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        G(torch.randn(2, 16))
    assert len(dtypes) == 1 + 2 * 3 + 4 and set(dtypes) == {torch.bfloat16}  # 4x4: 1 conv, 8..32: 2 each; 4 ToRGBs


def test_fused_grouped_conv_equals_the_activation_scaling_path_and_up_is_bilinear_then_conv():
    torch.manual_seed(0)
    x, w = torch.randn(2, 6, 8, 8), torch.randn(2, 16)
    for up in (False, True):
        conv = ModulatedConv2d(6, 5, 3, w_dim=16, up=up, fused=True)
        with torch.no_grad():
            y = conv(x, w)
            conv.fused = False  # the default
            assert torch.allclose(conv(x, w), y, atol=1e-5)
        assert y.shape == (2, 5, 16 if up else 8, 16 if up else 8)
    with torch.no_grad():  # up: transposed conv + [1,3,3,1] blur == bilinear 2x then conv (away from the border)
        wmod = conv.weight[None] * conv.affine(w)[:, None, :, None, None]
        wmod = wmod * (wmod.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt()[:, :, None, None, None]
        upx = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        ref = torch.stack([F.conv2d(upx[i:i + 1], wmod[i].flip(2, 3), padding=1)[0] for i in range(2)])
    assert torch.allclose(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-5)


def test_style_mixing_uses_two_ws_in_training_only():
    torch.manual_seed(0)
    z = torch.randn(4, 16)
    G = _g(style_mixing_prob=1.0).train()
    seen = _capture_ws(G)
    w_first = G.mapping(z, update_w_avg=False)
    for _ in range(3):
        G(z)
        ws = seen[-1]
        assert torch.allclose(ws[:, 0], w_first, atol=1e-6)  # cutoff >= 1: layer 0 keeps z's own w
        for i in range(ws.shape[0]):
            distinct = torch.unique(ws[i], dim=0)
            assert len(distinct) == 2, "mixing must switch to a second w at one cutoff"
            assert not torch.allclose(ws[i, -1], ws[i, 0])
    G.eval()
    G(z)
    assert (seen[-1] == seen[-1][:, :1]).all()  # eval: never mixes
    G0 = _g(style_mixing_prob=0.0).train()
    seen0 = _capture_ws(G0)
    G0(z)
    assert (seen0[-1] == seen0[-1][:, :1]).all()


def test_truncation_psi_zero_maps_every_z_to_w_avg():
    torch.manual_seed(0)
    G = _g()
    G.train()
    for _ in range(5):  # move w_avg away from its zero init
        G(torch.randn(4, 16))
    G.eval()
    assert G.mapping.w_avg.abs().sum() > 0
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    w = G.mapping(z1, truncation_psi=0.0)
    assert torch.allclose(w, G.mapping.w_avg.expand_as(w))
    a = G(z1, truncation_psi=0.0, noise_mode="const")
    b = G(z2, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(G(z1, noise_mode="const"), G(z2, noise_mode="const"), atol=1e-3)
    half = G.mapping(z1, truncation_psi=0.5)
    assert torch.allclose(half, (G.mapping(z1) + G.mapping.w_avg) / 2, atol=1e-6)


def test_w_avg_moves_in_training_forward_passes_only():
    torch.manual_seed(0)
    G = _g(style_mixing_prob=1.0).train()
    z = torch.randn(4, 16)
    before = G.mapping.w_avg.clone()
    expected = G.mapping(z, update_w_avg=False).mean(dim=0).lerp(before, 0.995)
    G(z)
    # exactly one EMA step from the batch's own w's: the mixing z does not update it
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-7)
    assert not torch.equal(G.mapping.w_avg, before)
    G.mapping_ws(torch.randn(4, 16))  # tools' mapping does not update it either
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-7)
    G.eval()
    frozen = G.mapping.w_avg.clone()
    G(torch.randn(4, 16))
    assert torch.equal(G.mapping.w_avg, frozen)


@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_equalised_lr_scales_the_stored_weight_at_run_time(lr_mul):
    torch.manual_seed(0)
    fc = EqualLinear(256, 128, lr_mul=lr_mul)
    assert fc.weight_gain == pytest.approx(lr_mul / math.sqrt(256))
    # stored: N(0, 1/lr_mul) (N(0, 1) at lr_mul=1); effective: He std 1/sqrt(fan_in) whatever lr_mul
    assert float(fc.weight.detach().std()) * lr_mul == pytest.approx(1.0, rel=0.03)
    assert float(fc.effective_weight().detach().std()) == pytest.approx(1 / math.sqrt(256), rel=0.03)
    x = torch.randn(3, 256)
    assert torch.allclose(fc(x), F.linear(x, fc.weight * lr_mul / 16, fc.bias * lr_mul), atol=1e-6)
    conv = EqualConv2d(32, 16, 3)
    assert float(conv.weight.detach().std()) == pytest.approx(1.0, rel=0.05)
    assert float(conv.effective_weight().detach().std()) == pytest.approx(1 / math.sqrt(32 * 9), rel=0.05)
    assert conv(torch.randn(1, 32, 8, 8)).shape == (1, 16, 8, 8)
    down = EqualConv2d(32, 16, 3, down=True), EqualConv2d(32, 16, 1, bias=False, down=True)
    assert all(d(torch.randn(1, 32, 8, 8)).shape == (1, 16, 4, 4) for d in down)


def test_bad_mapping_depth_resolution_and_noise_mode_raise():
    for depth in (1, 9):
        with pytest.raises(ValueError, match="depth"):
            MappingNetwork(16, 16, depth)
    with pytest.raises(ValueError, match="depth"):
        _g(mapping_depth=0)
    for make in (lambda: _g(48), lambda: StyleGAN2Discriminator(48, **SMALL), lambda: SynthesisNetwork(16, 48)):
        with pytest.raises(ValueError, match="resolution"):
            make()
    with pytest.raises(ValueError, match="noise_mode"):
        _g().eval()(torch.randn(1, 16), noise_mode="fixed")


def test_minibatch_std_lets_d_see_the_batch_spread():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    same = x[:1].expand(4, -1, -1, -1).clone()  # identical except that every sample equals the first
    D = StyleGAN2Discriminator(32, **SMALL).eval()
    with torch.no_grad():
        assert abs(float(D(x)[0] - D(same)[0])) > 1e-4
        plain = StyleGAN2Discriminator(32, mbstd_channels=0, **SMALL).eval()  # control: per-sample D
        assert torch.allclose(plain(x)[0], plain(same)[0], atol=1e-6)


def test_backward_gives_finite_grads_on_every_parameter():
    torch.manual_seed(0)
    G, D = _g(32).train(), StyleGAN2Discriminator(32, **SMALL).train()
    fake = G(torch.randn(4, 16))
    loss = F.softplus(-D(fake)).mean() + F.softplus(D(torch.randn(4, 3, 32, 32))).mean()
    loss.backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert G.synthesis.blocks[-1].conv1.noise_strength.grad.abs() > 0  # noise strength learns from 0


def test_registry_builds_stylegan2_from_the_recipe_keys():
    from dist_gan.config import load_config
    from dist_gan.errors import UserError
    from dist_gan.models import build_discriminator, build_generator

    cfg = load_config(["model.arch=stylegan2", "model.resolution=32", "model.nz=32", "model.w_dim=32",
                       "model.mapping_depth=2", "model.channel_base=256", "model.channel_max=16"]).model
    G, D = build_generator(cfg), build_discriminator(cfg)
    assert (G.nz, G.w_dim, len(G.mapping.layers)) == (32, 32, 2)
    assert G(torch.randn(2, 32)).shape == (2, 3, 32, 32) and D(torch.randn(2, 3, 32, 32)).shape == (2,)
    assert max(p.shape[0] for p in D.parameters() if p.dim() == 4) <= 16  # channel_max reached D's convs
    with pytest.raises(UserError, match="mapping_depth in 2..8"):
        load_config(["model.arch=stylegan2", "model.mapping_depth=9"])


def test_no_parameter_is_0_dim_and_a_0_dim_noise_strength_still_loads():
    """DeepSpeed cannot flatten 0-dim parameters, so the per-layer noise strength is [1]; a state dict with the
    official implementation's 0-dim strength loads into it with the value kept."""
    G = _g()
    assert all(p.dim() > 0 for p in G.parameters())
    state = {k: (v.reshape(()) + 0.25 if k.endswith("noise_strength") else v) for k, v in G.state_dict().items()}
    assert sum(k.endswith("noise_strength") for k in state) > 0
    fresh = _g()
    fresh.load_state_dict(state)
    assert all(v.shape == (1,) and v.item() == 0.25 for k, v in fresh.state_dict().items() if k.endswith("noise_strength"))
