"""Sampling: deterministic grids and singles, truncation, clear errors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.engine.checkpoint import save_checkpoint
from dist_gan.tools.sample import demo_generator, truncated_normal


def _ckpt(tmp_path):
    G = demo_generator(32, 100, 16)
    cfg = {"model": {"arch": "dcgan", "resolution": 32, "nz": 100, "ngf": 16, "ndf": 16}}
    return save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "run" / "checkpoints", 0)


def test_truncation_bounds_and_determinism():
    a, b = truncated_normal(16, 100, seed=3, psi=0.7), truncated_normal(16, 100, seed=3, psi=0.7)
    assert torch.equal(a, b) and float(a.abs().max()) <= 0.7
    assert not torch.equal(truncated_normal(4, 100, 1), truncated_normal(4, 100, 2))


def test_sample_cli_is_deterministic(tmp_path):
    _ckpt(tmp_path)
    run = CliRunner().invoke
    for d in ("a", "b"):
        res = run(app, ["sample", str(tmp_path / "run"), "--n", "6", "--seed", "5", "--singles", "--out", str(tmp_path / d)])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()
    assert len(list((tmp_path / "a").glob("sample_*.png"))) == 6
    assert Image.open(tmp_path / "a" / "sample_00005.png").size == (32, 32)
    res = run(app, ["sample", str(tmp_path / "run"), "--n", "6", "--seed", "6", "--truncation", "0.5", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "grid.png").read_bytes() != (tmp_path / "a" / "grid.png").read_bytes()


def test_sample_cli_errors(tmp_path):
    run = CliRunner().invoke
    res = run(app, ["sample", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in " ".join(res.output.split())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = run(app, ["sample", str(bad)])
    assert res.exit_code == 2 and "cannot read checkpoint" in " ".join(res.output.split())


def test_sample_bn_recal_is_deterministic_and_changes_stale_statistics(tmp_path):
    G = demo_generator(32, 100, 16)
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(0.3)  # what an EMA inherits from G: statistics of other weights
    cfg = {"model": {"arch": "dcgan", "resolution": 32, "nz": 100, "ngf": 16, "ndf": 16}}
    save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, tmp_path / "run" / "checkpoints", 0)
    grids = {}
    for d, flags in (("stored", []), ("recal1", ["--bn-recal"]), ("recal2", ["--bn-recal"])):
        res = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--n", "8", "--out", str(tmp_path / d), *flags])
        assert res.exit_code == 0, res.output
        grids[d] = (tmp_path / d / "grid.png").read_bytes()
    assert grids["recal1"] == grids["recal2"] != grids["stored"]


def stylegan2_ckpt(folder):
    """A tiny StyleGAN2 checkpoint whose w_avg sits away from 0, as after training."""
    from dist_gan.config import load_config, to_dict
    from dist_gan.models import build_generator

    cfg = to_dict(load_config(["model.arch=stylegan2", "model.resolution=32", "model.nz=16", "model.w_dim=16",
                               "model.mapping_depth=2", "model.channel_base=256", "model.channel_max=16"]))
    torch.manual_seed(0)
    G = build_generator(cfg["model"])
    G.mapping.w_avg.normal_()
    return save_checkpoint({"cfg": cfg, "G": G.state_dict(), "G_ema": G.state_dict(), "nimg": 0}, folder, 0), G


def test_stylegan2_samples_truncate_toward_the_average_w(tmp_path):
    """psi pulls w toward w_avg: at 0.05 every face is nearly the average face, at 1 they differ; the same
    seed gives the same grid (fixed noise); a psi above 1 is refused in one line."""
    ckpt, G = stylegan2_ckpt(tmp_path / "run" / "checkpoints")
    run = CliRunner().invoke
    for d, psi in (("a", "1"), ("b", "1"), ("t", "0.05")):
        res = run(app, ["sample", str(tmp_path / "run"), "--n", "4", "--seed", "5", "--truncation", psi, "--singles",
                        "--out", str(tmp_path / d)])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()

    def spread(d):
        ims = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32))
                           for p in sorted((tmp_path / d).glob("sample_*.png"))])
        return float(ims.std(0).mean())

    assert spread("t") < 0.2 * spread("a")
    res = run(app, ["sample", str(tmp_path / "run"), "--truncation", "1.5", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "psi in [0.05, 1]" in " ".join(res.output.split())
