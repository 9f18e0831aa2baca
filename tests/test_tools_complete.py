"""Masked completion: a 25% hole in a generated image is restored; mask errors are clear."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.engine.checkpoint import save_checkpoint
from dist_gan.tools.complete import complete
from dist_gan.imaging import save_image
from dist_gan.tools.imageio_utils import psnr
from dist_gan.tools.perceptual import mse_loss
from dist_gan.tools.sample import demo_generator

RES, NZ, NGF = 32, 100, 16


def _text(res) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def _setup():
    G = demo_generator(RES, NZ, NGF, seed=0)
    target = G(torch.randn(1, NZ, generator=torch.Generator().manual_seed(321)))
    mask = torch.ones(1, 1, RES, RES)
    mask[..., 8:24, 8:24] = 0  # 16x16 of 32x32 = 25% hole
    return G, target, mask


def test_completion_restores_a_quarter_hole():
    G, target, mask = _setup()
    assert float(1 - mask.mean()) == 0.25
    c = complete(G, target, mask, mse_loss, steps=300, restarts=4, seed=0, show_progress=False)
    hole = 1 - mask
    p_hole = psnr(c.completed, target, hole)
    print(f"completion PSNR inside the 25% hole: {p_hole:.1f} dB")
    assert p_hole > 25
    assert torch.equal(c.completed * mask, target * mask)  # known pixels untouched


def test_complete_cli_and_mask_errors(tmp_path):
    G, target, mask = _setup()
    cfg = {"model": {"arch": "dcgan", "resolution": RES, "nz": NZ, "ngf": NGF, "ndf": 16}}
    ckpt = save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "ck", 0)
    tpath = save_image(target, tmp_path / "t.png")
    mpath = tmp_path / "m.png"
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)).save(mpath)
    run = CliRunner().invoke
    out = tmp_path / "out"
    res = run(app, ["complete", str(ckpt), str(tpath), str(mpath), "--steps", "30", "--restarts", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "complete_before_after.png").is_file() and (out / "complete_result.png").is_file()
    assert Image.open(out / "complete_before_after.png").size[0] > 3 * RES

    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(small)
    res = run(app, ["complete", str(ckpt), str(tpath), str(small)])
    assert res.exit_code == 2 and "same size" in _text(res)
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((RES, RES), np.uint8)).save(black)
    res = run(app, ["complete", str(ckpt), str(tpath), str(black)])
    assert res.exit_code == 2 and "all black" in _text(res)
    res = run(app, ["complete", str(ckpt), str(tpath), str(tmp_path / "missing.png")])
    assert res.exit_code == 2 and "not found" in _text(res)
    res = run(app, ["complete", str(tmp_path / "nock"), str(tpath), str(mpath)])
    assert res.exit_code == 2 and "not found" in _text(res)


def test_complete_help_states_mask_convention():
    res = CliRunner().invoke(app, ["complete", "--help"], terminal_width=200)
    assert "WHITE = known" in _text(res) and "BLACK = hole" in _text(res)
