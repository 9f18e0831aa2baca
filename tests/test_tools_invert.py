"""GAN inversion: exact recovery of generated images, affine alignment, CLI outputs and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.engine.checkpoint import save_checkpoint
from dist_gan.imaging import save_image
from dist_gan.tools.imageio_utils import psnr
from dist_gan.tools.invert import invert, shift_image
from dist_gan.tools.perceptual import build_loss, mse_loss
from dist_gan.tools.sample import demo_generator

RES, NZ, NGF = 32, 100, 16


def _text(res) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def G():
    return demo_generator(RES, NZ, NGF, seed=0)


@pytest.fixture(scope="module")
def target(G):
    z0 = torch.randn(1, NZ, generator=torch.Generator().manual_seed(123))
    return G(z0)


def make_ckpt(G, tmp_path: Path) -> Path:
    cfg = {"model": {"arch": "dcgan", "resolution": RES, "nz": NZ, "ngf": NGF, "ndf": 16}}
    return save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "run" / "checkpoints", 0)


def test_mse_inversion_recovers_a_generated_image(G, target):
    baseline = psnr(G(torch.randn(1, NZ, generator=torch.Generator().manual_seed(7))), target)
    r = invert(G, target, mse_loss, steps=300, restarts=4, lr=0.1, seed=0, show_progress=False)
    print(f"inversion PSNR {r.psnr:.1f} dB (random-latent baseline {baseline:.1f} dB)")
    assert baseline < 20  # the target is not trivially matched
    assert r.psnr > 30
    assert r.losses[-1] <= r.losses[0]
    assert len(r.final_losses) == 4 and r.best_restart == int(torch.tensor(r.final_losses).argmin())


def test_affine_recovers_a_shifted_target_better(G, target):
    shifted = shift_image(target, 3, 2)  # 3 px right, 2 px down
    plain = invert(G, shifted, mse_loss, steps=300, restarts=4, seed=0, show_progress=False)
    aligned = invert(G, shifted, mse_loss, steps=300, restarts=4, seed=0, affine=True, show_progress=False)
    p_plain, p_aff = psnr(plain.image, target), psnr(aligned.image, target)
    print(f"shifted target, PSNR vs the unshifted original: plain {p_plain:.1f} dB, affine {p_aff:.1f} dB")
    assert p_aff > p_plain + 5
    assert p_aff > 30
    tx, ty = aligned.affine[:2].tolist()
    assert tx == pytest.approx(3 * 2 / RES, abs=0.02) and ty == pytest.approx(2 * 2 / RES, abs=0.02)


def test_weighted_loss_runs_and_parses():
    f = build_loss("weighted", weights="mse=1,msssim=0.5,edge-mse=1")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    v = f(x, y)
    assert v.shape == (2,) and (v > 0).all() and torch.allclose(f(x, x), torch.zeros(2), atol=1e-4)


def test_invert_cli_writes_outputs(G, target, tmp_path):
    ckpt = make_ckpt(G, tmp_path)
    tpath = save_image(target, tmp_path / "target.png")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["invert", str(ckpt.parent.parent), str(tpath), "--steps", "40", "--restarts", "2",
                                   "--loss", "weighted", "--weights", "mse=1,msssim=0.5,edge-mse=1", "--affine", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("invert_reconstruction.png", "invert_strip.png", "invert_loss.png", "invert_latent.pt"):
        assert (out / name).is_file(), name
    latent = torch.load(out / "invert_latent.pt", weights_only=True)
    assert latent["z"].shape == (1, NZ) and latent["affine"].shape == (4,)
    from PIL import Image

    assert Image.open(out / "invert_strip.png").size[0] > 3 * RES


def test_invert_cli_errors(G, target, tmp_path):
    ckpt = make_ckpt(G, tmp_path)
    run = CliRunner().invoke
    tpath = save_image(target, tmp_path / "target.png")
    res = run(app, ["invert", str(tmp_path / "nope.pt"), str(tpath)])
    assert res.exit_code == 2 and "not found" in _text(res)
    big = save_image(torch.zeros(1, 3, 40, 48), tmp_path / "big.png")
    res = run(app, ["invert", str(ckpt), str(big), "--steps", "2"])
    assert res.exit_code == 2 and "--resize" in _text(res) and "48x40" in _text(res)
    res = run(app, ["invert", str(ckpt), str(big), "--steps", "2", "--restarts", "1", "--resize", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    res = run(app, ["invert", str(ckpt), str(tpath), "--loss", "weighted", "--weights", "mse=x"])
    assert res.exit_code == 2 and "not a number" in _text(res)
    res = run(app, ["invert", str(ckpt), str(tpath), "--loss", "nope"])
    assert res.exit_code == 2 and "unknown loss" in _text(res)


def test_w_plus_inversion_recovers_a_stylegan2_image_better_than_z():
    """The target mixes two w's (layers 0-3 from one z, the rest from another): outside W, inside W+.
    At equal steps and restarts W+ gets closer than z, and W sits in between or near z."""
    from dist_gan.models.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    G = StyleGAN2Generator(32, z_dim=16, w_dim=16, mapping_depth=2, channel_base=256, channel_max=16).eval()
    with torch.no_grad():
        a, b = G.mapping_ws(torch.randn(2, 16)).chunk(2)
        target = G.synthesize(torch.cat([a[:, :4], b[:, 4:]], 1), noise_mode="const")
    errs = {}
    for space in ("z", "w+"):
        r = invert(G, target, mse_loss, steps=150, restarts=2, lr=0.05, seed=1, space=space, show_progress=False)
        errs[space] = float(((r.image - target) ** 2).mean())
        assert r.space == space and r.tensors()["space"].item() == ("z", "w", "w+").index(space)
    assert r.z.shape == (1, G.num_ws, 16)
    assert errs["w+"] < 0.5 * errs["z"], errs


def test_invert_space_errors(G, target, tmp_path):
    ckpt = make_ckpt(G, tmp_path)
    tpath = save_image(target, tmp_path / "target.png")
    res = CliRunner().invoke(app, ["invert", str(ckpt), str(tpath), "--space", "w+", "--steps", "2"])
    assert res.exit_code == 2 and "mapping network" in _text(res)
    res = CliRunner().invoke(app, ["invert", str(ckpt), str(tpath), "--space", "q"])
    assert res.exit_code == 2 and "unknown latent space 'q'" in _text(res)
