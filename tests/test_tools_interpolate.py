"""Latent-walk videos: slerp keeps the norm, GIF and MP4 have the right frame count."""

from __future__ import annotations

import imageio.v2 as imageio
import torch
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.engine.checkpoint import save_checkpoint
from dist_gan.tools.interpolate import path_latents, slerp
from dist_gan.tools.sample import demo_generator


def _ckpt(tmp_path):
    G = demo_generator(32, 100, 16)
    cfg = {"model": {"arch": "dcgan", "resolution": 32, "nz": 100, "ngf": 16, "ndf": 16}}
    return save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "ck", 0)


def test_slerp_path_loops_and_keeps_norm():
    keys = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    z = path_latents(keys, 5, use_slerp=True)
    assert z.shape == (15, 100)
    assert torch.allclose(z[0], keys[0]) and torch.allclose(z[5], keys[1]) and torch.allclose(z[10], keys[2])
    mid = slerp(keys[:1], keys[1:2], 0.5)
    lin = 0.5 * (keys[0] + keys[1])
    assert float(mid.norm()) > float(lin.norm())
    assert min(keys[0].norm(), keys[1].norm()) * 0.99 <= mid.norm() <= max(keys[0].norm(), keys[1].norm()) * 1.01


def test_gif_and_mp4_have_the_right_frame_count(tmp_path):
    ckpt = _ckpt(tmp_path)
    run = CliRunner().invoke
    for ext, extra in ((".gif", ["--slerp"]), (".mp4", ["--lerp"])):
        out = tmp_path / f"walk{ext}"
        res = run(app, ["interpolate", str(ckpt), "--n-keys", "3", "--frames", "4", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        if ext == ".gif":
            frames = imageio.mimread(out)
        else:
            with imageio.get_reader(out, format="FFMPEG") as rd:
                assert rd.count_frames() == 12
                frames = [f for f in rd]  # list(rd) would trust len() == inf
        assert len(frames) == 12 and frames[0].shape[:2] == (32, 32)


def test_interpolate_errors(tmp_path):
    ckpt = _ckpt(tmp_path)
    run = CliRunner().invoke
    res = run(app, ["interpolate", str(tmp_path / "none.pt"), "--out", str(tmp_path / "v.gif")])
    assert res.exit_code == 2 and "not found" in " ".join(res.output.split())
    res = run(app, ["interpolate", str(ckpt), "--out", str(tmp_path / "v.avi")])
    assert res.exit_code == 2 and ".gif or .mp4" in " ".join(res.output.split())
    res = run(app, ["interpolate", str(ckpt), "--n-keys", "1", "--out", str(tmp_path / "v.gif")])
    assert res.exit_code == 2


def test_mp4_without_ffmpeg_names_the_extra_before_rendering(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    res = CliRunner().invoke(app, ["interpolate", str(_ckpt(tmp_path)), "--out", str(tmp_path / "w.mp4"), "--frames", "2"])
    assert res.exit_code == 2 and "dist-gan[tools]" in res.output
    assert not (tmp_path / "w.mp4").exists()


def test_stylegan2_walks_in_w(tmp_path, monkeypatch):
    """A styled G walks a straight line in w: the frames it draws are synthesised from w's that are lerps of
    the mapped keys (the first frame is exactly the first key's w), and the video has every frame."""
    from test_tools_sample import stylegan2_ckpt

    from dist_gan.models.stylegan2 import StyleGAN2Generator

    ckpt, G = stylegan2_ckpt(tmp_path / "ck")
    seen = []
    real = StyleGAN2Generator.synthesize
    monkeypatch.setattr(StyleGAN2Generator, "synthesize", lambda self, ws, noise_mode="random": (seen.append(ws), real(self, ws, noise_mode))[1])
    res = CliRunner().invoke(app, ["interpolate", str(ckpt), "--n-keys", "2", "--frames", "3", "--out", str(tmp_path / "w.gif")])
    assert res.exit_code == 0, res.output
    assert len(imageio.mimread(tmp_path / "w.gif")) == 6
    ws = torch.cat(seen)
    assert ws.shape == (6, G.num_ws, 16) and torch.equal(ws[:, 0], ws[:, -1])  # one w per frame, every layer
    from dist_gan.tools.sample import truncated_normal

    with torch.no_grad():
        keys = G.mapping(truncated_normal(2, 16, 0))
    assert torch.allclose(ws[0, 0], keys[0], atol=1e-5) and torch.allclose(ws[3, 0], keys[1], atol=1e-5)
    mid = ws[1, 0]  # between the keys, on the segment: collinear with them
    t = float((mid - keys[0]).norm() / (keys[1] - keys[0]).norm())
    assert 0 < t < 1 and torch.allclose(mid, keys[0] + t * (keys[1] - keys[0]), atol=1e-4)
