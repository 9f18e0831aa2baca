"""Super-resolution: a short CPU train on real CelebA beats bicubic on held-out faces;
model files load with weights_only; apply / shards / chaining after sample work."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.tools import superres as S


def _text(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def trained(shared_dir, tmp_path_factory):
    """300 training faces, 60 held-out ones, at most 25 s of training."""
    zip_path = shared_dir / "data" / "celeba-10k.zip"
    train_hr, eval_hr = S.load_pairs_source(zip_path, 300, 60, 64)
    t0 = time.monotonic()
    model = S.train_superres(train_hr, scale=2, steps=400, seconds=25, show_progress=False)
    took = time.monotonic() - t0
    metrics = S.evaluate(model, eval_hr)
    path = S.save_superres(model, tmp_path_factory.mktemp("sr") / "sr.pt", metrics)
    return model, metrics, path, took


def test_short_training_beats_bicubic_on_held_out_celeba(trained):
    model, m, path, took = trained
    print(f"x2 held-out: PSNR {m['psnr_model']:.2f} vs bicubic {m['psnr_bicubic']:.2f} dB; "
          f"SSIM {m['ssim_model']:.4f} vs {m['ssim_bicubic']:.4f}; trained {took:.1f}s")
    assert took < 60
    assert m["psnr_model"] > m["psnr_bicubic"] + 0.2
    assert m["ssim_model"] > m["ssim_bicubic"]


def test_untrained_model_is_exactly_bicubic():
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(S.SuperRes(4)(lr), S.bicubic_up(lr, 4))


def test_model_file_roundtrip_weights_only(trained, tmp_path):
    model, m, path, _ = trained
    state = torch.load(path, weights_only=True)
    assert state["config"] == {"scale": 2, "nf": 32, "n_blocks": 4} and state["metrics"]["psnr_model"] == m["psnr_model"]
    loaded = S.load_superres(path)
    x = torch.rand(1, 3, 20, 24) * 2 - 1
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(S.UserError, match="not a dist_gan super-resolution model"):
        S.load_superres(bad)


def test_apply_and_sample_chain_cli(trained, tmp_path):
    _, _, path, _ = trained
    from dist_gan.engine.checkpoint import save_checkpoint
    from dist_gan.tools.sample import demo_generator

    img = tmp_path / "in" / "face.png"
    img.parent.mkdir()
    Image.fromarray((np.random.rand(30, 40, 3) * 255).astype(np.uint8)).save(img)
    run = CliRunner().invoke
    res = run(app, ["superres", "apply", str(path), str(img.parent), "--out", str(tmp_path / "up")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "up" / "face_x2.png").size == (80, 60)
    res = run(app, ["superres", "apply", str(tmp_path / "missing.pt"), str(img)])
    assert res.exit_code == 2 and "not found" in _text(res)

    G = demo_generator(32, 100, 16)
    cfg = {"model": {"arch": "dcgan", "resolution": 32, "nz": 100, "ngf": 16, "ndf": 16}}
    ckpt = save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "ck", 0)
    res = run(app, ["sample", str(ckpt), "--n", "4", "--singles", "--superres", str(path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "s" / "sample_00000.png").size == (64, 64)


def _pack_shards(root, image_format: str = "png", n: int = 24, res: int = 32):
    """``n`` blocky random faces packed by the real packer (png, or blocks of 5)."""
    from dist_gan.data.pack import pack

    src = root / "src"
    if not src.is_dir():
        src.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            base = np.kron(rng.random((res // 4, res // 4, 3)), np.ones((4, 4, 1)))
            Image.fromarray((base * 255).astype(np.uint8)).save(src / f"{i:03d}.png")
    out = root / image_format
    pack(src, out, resolution=res, shard_size=10, progress=False, workers=1, image_format=image_format, block_size=5)
    return out


def test_train_cli_on_shards_and_errors(tmp_path):
    shards = _pack_shards(tmp_path)
    assert S.load_shard_images(shards).shape == (24, 3, 32, 32)
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(app, ["superres", "train", str(shards), "--scale", "4", "--steps", "3", "--n-eval", "8",
                                   "--hr-size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "bicubic" in _text(res) and S.load_superres(out).scale == 4
    res = CliRunner().invoke(app, ["superres", "train", str(tmp_path / "nothing"), "--steps", "1"])
    assert res.exit_code == 2 and "not found" in _text(res)
    res = CliRunner().invoke(app, ["superres", "train", str(shards), "--scale", "3"])
    assert res.exit_code == 2 and "2 or 4" in _text(res)


def test_train_on_blocks_shards(tmp_path):
    """Block shards (``--format blocks``) train like png ones: the same images (it once found "no .png samples")."""
    png, blocks = _pack_shards(tmp_path, "png"), _pack_shards(tmp_path, "blocks")
    assert torch.equal(S.load_shard_images(blocks), S.load_shard_images(png))
    assert torch.equal(S.load_shard_images(blocks, limit=7), S.load_shard_images(png)[:7])
    out = tmp_path / "m.pt"
    res = CliRunner().invoke(app, ["superres", "train", str(blocks), "--scale", "2", "--steps", "3", "--n-eval", "8",
                                   "--hr-size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "bicubic" in _text(res) and S.load_superres(out).scale == 2
