"""EMA: the half-life is in images, so the batch size does not change the average."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dist_gan.engine.ema import ema_beta, update_ema


@pytest.mark.parametrize("batch", [32, 128, 512])
def test_half_life_is_batch_size_invariant(batch):
    half_life_kimg = 10.0
    steps = int(half_life_kimg * 1000 / batch)
    decay = ema_beta(batch, half_life_kimg, nimg=10**9) ** steps
    assert decay == pytest.approx(0.5, rel=0.05)  # whatever the batch, 10 kimg halves the weight


def test_rampup_caps_the_half_life_early():
    assert ema_beta(64, 10.0, nimg=1000, rampup=0.05) < ema_beta(64, 10.0, nimg=10**7, rampup=0.05)
    assert ema_beta(64, 10.0, nimg=0, rampup=0.05) == 0.0  # first step: copy G


def test_update_ema_lerps_params_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.75)
    for b, e, m in zip(before, ema.parameters(), model.parameters()):
        assert torch.allclose(e, 0.75 * b + 0.25 * m)
    assert torch.equal(ema[1].running_mean, torch.full((3,), 7.0))


# ---------------------------------------------------------------- EMA probes in a real run
def _probe_run(shards, run_dir, *args):
    from conftest import SMOKE
    from dist_gan.config import load_config
    from dist_gan.engine.loop import train

    common = [f"data={shards}", "train.kimg=0.192", "log.snapshot_kimg=0.096", "train.ema_rampup=0"]
    return train(load_config([*SMOKE, *common, f"run_dir={run_dir}", *args]))


def test_ema_probes_leave_training_alone_match_a_run_with_that_half_life_and_survive_resume(shards32, tmp_path):
    from dist_gan.engine.checkpoint import load_checkpoint, load_generator
    from dist_gan.errors import UserError

    plain = load_checkpoint(_probe_run(shards32, tmp_path / "plain"))  # train.ema_kimg=0.1, no probes
    long = load_checkpoint(_probe_run(shards32, tmp_path / "long", "train.ema_kimg=0.5"))
    probes = ["train.ema_probes=[0.02,0.5]"]
    _probe_run(shards32, tmp_path / "probed", *probes, "train.kimg=0.096")  # stop halfway, then resume
    probed = load_checkpoint(_probe_run(shards32, tmp_path / "probed", *probes, "resume=auto"))

    for key in ("G", "D", "G_ema"):  # the probes never feed back into training
        assert all(torch.equal(plain[key][k], probed[key][k]) for k in plain[key]), key
    assert sorted(probed["G_ema_probes"]) == ["0.02", "0.5"]
    p05, p002 = probed["G_ema_probes"]["0.5"], probed["G_ema_probes"]["0.02"]
    assert all(torch.equal(long["G_ema"][k], p05[k]) for k in p05)  # = a run whose main EMA had that half-life
    assert not all(torch.equal(p002[k], p05[k]) for k in p05)
    assert not all(torch.equal(p002[k], probed["G_ema"][k]) for k in p05)

    G, _ = load_generator(tmp_path / "probed", ema_kimg=0.5)
    assert all(torch.equal(v, p05[k]) for k, v in G.state_dict().items())
    G, _ = load_generator(tmp_path / "probed", ema_kimg=0.1)  # the main half-life names G_ema
    assert all(torch.equal(v, probed["G_ema"][k]) for k, v in G.state_dict().items())
    with pytest.raises(UserError, match=r"no EMA with a 3-kimg half-life; it has 0.02, 0.1, 0.5"):
        load_generator(tmp_path / "probed", ema_kimg=3)


@pytest.mark.parametrize("probes", ["[0]", "[0.5,0.5]", "[0.1]"])
def test_bad_ema_probes_fail_fast(probes):
    from conftest import SMOKE
    from dist_gan.config import load_config
    from dist_gan.errors import UserError

    with pytest.raises(UserError, match="train.ema_probes must be distinct positive"):
        load_config([*SMOKE, f"train.ema_probes={probes}"])


# ---------------------------------------------------------------- BN recalibration
def test_recalibrate_bn_sets_the_population_statistics_of_the_weights_sampled():
    from dist_gan.engine.ema import recalibrate_bn
    from dist_gan.models.dcgan import Generator

    torch.manual_seed(0)
    G = Generator(resolution=32, nz=8, ngf=8).eval()
    bn = G.net[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as an EMA copied from G carries
    bn.running_var.fill_(9.0)
    rng_before = torch.get_rng_state()
    recalibrate_bn(G, nz=8, n=2048, batch=256, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global RNG drawn
    assert not G.training and bn.momentum == 0.1  # eval mode and the momentum restored

    z = torch.randn(2048, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pre = G.net[0](z[:, :, None, None])  # the first BN's inputs for exactly those latents
    assert torch.allclose(bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, pre.var(dim=(0, 2, 3)), rtol=0.02)

    again = copy.deepcopy(G)
    recalibrate_bn(again, nz=8, n=2048, batch=256, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(G.buffers(), again.buffers()))  # deterministic


def test_recalibrate_bn_leaves_a_generator_without_batchnorm_alone():
    from dist_gan.engine.ema import has_batchnorm, recalibrate_bn

    G = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    before = copy.deepcopy(G.state_dict())
    recalibrate_bn(G.train(), nz=4)
    assert not has_batchnorm(G) and not G.training
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_untrained_share_is_a_half_at_one_half_life_and_tiny_with_a_rampup():
    from dist_gan.engine.ema import stale_ema_message, untrained_share

    assert untrained_share(5000, 5.0, 0.0) == pytest.approx(0.5)
    assert untrained_share(4000, 5.0, 0.0) > 0.5 and stale_ema_message(4000, 5.0, 0.0) is not None
    assert untrained_share(4000, 5.0, 0.05) < 1e-5 and stale_ema_message(4000, 5.0, 0.05) is None
    assert stale_ema_message(20000, 5.0, 0.0) is None
    assert "--no-ema" in stale_ema_message(1000, 5.0, 0.0)


def test_a_stale_ema_warns_shows_raw_grids_and_every_tool_can_take_the_raw_g(shards32, tmp_path):
    """A 0.192-kimg run with a 5-kimg half-life and no ramp-up (anime64's shape): G_ema is still
    mostly the init. Loading it warns; the training grid is the raw G's; --no-ema gives the raw G."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from dist_gan.cli import app
    from dist_gan.engine.checkpoint import load_generator
    from dist_gan.engine.ema import StaleEMAWarning
    from dist_gan.imaging import make_grid, to_uint8

    run = _probe_run(shards32, tmp_path / "r", "train.ema_kimg=5")
    with pytest.warns(StaleEMAWarning, match="still the untrained generator"):
        G_ema, cfg = load_generator(run)
    G_raw, _ = load_generator(run, ema=False)
    z = torch.randn(64, cfg["model"]["nz"], generator=torch.Generator().manual_seed(cfg["seed"]))
    with torch.no_grad():
        raw_grid = make_grid(to_uint8(G_raw(z)), nrow=8)
    assert np.array_equal(np.asarray(Image.open(run / "samples" / "latest.png")), raw_grid)

    res = CliRunner().invoke(app, ["sample", str(run), "--n", "4", "--out", str(tmp_path / "ema")])
    assert res.exit_code == 0 and "warning:" in res.output and "--no-ema" in res.output
    res = CliRunner().invoke(app, ["sample", str(run), "--n", "4", "--no-ema", "--out", str(tmp_path / "raw")])
    assert res.exit_code == 0 and "warning" not in res.output
    z4 = torch.load(tmp_path / "raw" / "latents.pt", weights_only=True)["z"]
    with torch.no_grad():
        expect = make_grid(to_uint8(G_raw(z4)), fill=255)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "raw" / "grid.png")), expect)
    for cmd in ("interpolate", "invert", "complete", "eval"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert "--no-ema" in res.output, cmd
