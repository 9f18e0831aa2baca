"""Losses: masked MSE, MS-SSIM scale choice, Prewitt edges, the offline EfficientNet distance
with its real shipped weights, and LPIPS' clear error when its backbone weights are absent."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from dist_gan.errors import UserError
from dist_gan.tools import perceptual as P


def _celeba(shared_dir, n: int = 8, size: int = 64) -> torch.Tensor:
    with zipfile.ZipFile(shared_dir / "data" / "celeba-10k.zip") as zf:
        names = sorted(x for x in zf.namelist() if x.endswith(".jpg"))[:n]
        ims = [np.asarray(Image.open(io.BytesIO(zf.read(x))).convert("RGB").crop((0, 10, 89, 99)).resize((size, size))) for x in names]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_masked_mse_ignores_the_hole():
    x, y = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    y[..., :4, :] = 1.0
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4, :] = 0
    assert float(P.mse_loss(x, y, mask)) == 0.0
    assert float(P.mse_loss(x, y)) == pytest.approx(0.5)


def test_msssim_scales_and_values():
    assert P.msssim_scales(64) == 3 and P.msssim_scales(32) == 2 and P.msssim_scales(256) == 5
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(P.ms_ssim(x, x), torch.ones(2), atol=1e-4)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    loss = P.msssim_loss(noisy, x)
    assert (loss > 0.05).all()
    loss.sum().backward()
    assert torch.isfinite(noisy.grad).all()


def test_prewitt_edges():
    flat = torch.zeros(1, 3, 16, 16)
    assert float(P.prewitt_edges(flat).max()) < 1e-2
    step = torch.full((1, 3, 16, 16), -1.0)
    step[..., 8:] = 1.0
    e = P.prewitt_edges(step)[0, 0]
    assert float(e[:, 7:9].mean()) == pytest.approx(2.0, abs=0.01) and float(e[:, :5].max()) < 1e-2


def test_effnet_perceptual_offline_with_real_weights(shared_dir):
    faces = _celeba(shared_dir, 8)
    d = P.build_loss("effnet-perceptual")
    # the shipped ImageNet weights match the architecture: BN running statistics fit real photos
    net, errs = d.net, []
    hooks = [m.register_forward_pre_hook(lambda mod, a: errs.append(float(((a[0].mean((0, 2, 3)) - mod.running_mean) ** 2).mean() / mod.running_var.mean())))
             for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        net(F.interpolate(faces, size=128, mode="bilinear"))
    for h in hooks:
        h.remove()
    assert np.mean(errs) < 0.5, np.mean(errs)
    with torch.no_grad():
        same = d(faces, faces)
        slight = d(faces, (faces + 0.05 * torch.randn_like(faces)).clamp(-1, 1))
        other = d(faces, faces.roll(1, 0))
    assert torch.allclose(same, torch.zeros(8), atol=1e-6)
    assert (slight < other).all()
    x = faces[:2].clone().requires_grad_(True)
    d(x, faces[2:4]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert P.build_loss("edge-effnet")(faces[:2], faces[:2]).abs().max() < 1e-6


def test_lpips_without_backbone_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(P.LPIPS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="cannot be downloaded here.*--lpips-weights.*effnet-perceptual"):
        P.build_loss("lpips")
    with pytest.raises(UserError, match="not found"):
        P.build_loss("lpips", lpips_weights=tmp_path / "missing.pth")
    monkeypatch.setenv(P.LPIPS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match=P.LPIPS_ENV):
        P.build_loss("edge-lpips")


def test_lpips_cli_error_is_one_line(tmp_path, monkeypatch):
    from dist_gan.cli import app
    from dist_gan.engine.checkpoint import save_checkpoint
    from dist_gan.imaging import save_image
    from dist_gan.tools.sample import demo_generator

    monkeypatch.delenv(P.LPIPS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    G = demo_generator(32, 100, 16)
    cfg = {"model": {"arch": "dcgan", "resolution": 32, "nz": 100, "ngf": 16, "ndf": 16}}
    ckpt = save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "ck", 0)
    t = save_image(torch.zeros(1, 3, 32, 32), tmp_path / "t.png")
    res = CliRunner().invoke(app, ["invert", str(ckpt), str(t), "--loss", "lpips"])
    assert res.exit_code == 2 and "LPIPS needs the ImageNet" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_lpips_loads_local_backbone_and_matches_reference(tmp_path):
    """With a (here random) local AlexNet file, our LPIPS equals the reference package's."""
    import torchvision

    pytest.importorskip("lpips")
    torch.manual_seed(0)
    alex = torchvision.models.alexnet()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alex.state_dict(), path)
    ours = P.build_loss("lpips", lpips_weights=path)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        d = ours(x, y)
    assert torch.allclose(ours(x, x), torch.zeros(2), atol=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lpips

        ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    feats = alex.features
    for sl in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5):
        for name, mod in sl.named_children():
            mod.load_state_dict(feats[int(name)].state_dict())
    with torch.no_grad():
        expect = ref(x, y).flatten()
    assert torch.allclose(d, expect, rtol=1e-4, atol=1e-6)
