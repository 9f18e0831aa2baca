"""Sampling: deterministic grids and singles, truncation, clear errors."""

from __future__ import annotations

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
