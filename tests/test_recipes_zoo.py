"""Every variant recipe trains a few steps on 1 process and on 2 gloo ranks, and its checkpoint samples.

Tiny overrides keep each run to a handful of steps at 32 px with narrow nets
(dcgan128 keeps its 128 px: that is the point of the recipe). One 2-rank launch
per recipe; the dcgan64 one also turns on spectral norm + DiffAugment and resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_gan.config import load_config
from dist_gan.engine.checkpoint import list_checkpoints, load_checkpoint, load_generator
from dist_gan.engine.loop import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1"}
TINY = [
    "model.ngf=16", "model.ndf=16", "train.batch=16", "train.kimg=0.064", "loader.workers=0",
    "loader.shuffle=16", "log.tensorboard=false", "log.progress=false", "train.ema_kimg=0.1",
]
# Per recipe: extra overrides. wgan_gp needs 5 critic steps before its first G step (n_critic 5).
RECIPES = {
    "dcgan64": ["model.resolution=32"],
    "dcgan128": ["model.ngf=8", "model.ndf=8", "train.batch=8", "train.kimg=0.016"],
    "keras_improved": ["model.resolution=32"],
    "wgan_gp": ["model.resolution=32", "train.kimg=0.08"],
    "began": ["model.resolution=32", "model.nz=16"],
    "stylegan2_64": ["model.resolution=32", "model.nz=32", "model.w_dim=32", "model.channel_base=256",
                     "model.channel_max=16", "loss.r1_every=1"],
    "stylegan2_128": ["model.nz=16", "model.w_dim=16", "model.channel_base=256", "model.channel_max=8", "train.batch=8",
                      "train.kimg=0.016", "loss.r1_every=1"],
}
RUN_STATS = {
    "wgan_gp": {"wdist", "gp", "loss_g"},
    "began": {"k_t", "m_global", "l_real", "l_fake", "loss_g"},
    "stylegan2_64": {"loss_d", "loss_g", "r1"},
    "stylegan2_128": {"loss_d", "loss_g", "r1"},
}


def _pack(out: Path, n: int, size: int) -> Path:
    from dist_gan.data.pack import pack
    from dist_gan.data.synthetic import draw_faces

    faces = draw_faces(n, out / "faces.zip", size=size, seed=1)
    pack(faces, out / "shards", resolution=size, shard_size=max(n // 2, 1), progress=False, workers=1)
    return out / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {32: _pack(root / "s32", 40, 32), 128: _pack(root / "s128", 16, 128)}


def args_for(recipe: str, shards, run: Path):
    res = 128 if recipe in ("dcgan128", "stylegan2_128") else 32
    return [f"recipe={recipe}", f"data={shards[res]}", f"run_dir={run}", *TINY, *RECIPES[recipe]]


def check_run(run: Path, recipe: str) -> dict:
    cfg = load_config(args_for(recipe, {32: "x", 128: "x"}, run))
    ckpts = list_checkpoints(run / "checkpoints")
    assert ckpts, f"{recipe}: no checkpoint"
    state = load_checkpoint(ckpts[-1])
    assert state["nimg"] >= round(cfg.train.kimg * 1000)
    G, saved = load_generator(run)
    assert saved["recipe"] == recipe and saved["model"]["arch"] == cfg.model.arch
    with torch.no_grad():
        imgs = G(torch.randn(4, saved["model"]["nz"]))
    res = saved["model"]["resolution"]
    assert imgs.shape == (4, 3, res, res) and torch.isfinite(imgs).all()
    assert cfg.model.arch == "stylegan2" or imgs.abs().max() <= 1  # StyleGAN2's G has no tanh (the paper's)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(v == v for r in records for v in r.values() if isinstance(v, float))
    assert RUN_STATS.get(recipe, {"loss_d", "loss_g"}) <= set(records[-1]), records[-1]
    if recipe == "began":
        k_t = state["loss_state"]["k_t"]
        assert isinstance(k_t, torch.Tensor) and 0.0 <= k_t.item() <= 1.0
        assert k_t.item() == pytest.approx(records[-1]["k_t"], abs=1e-3)
    return state


def g_moved(state: dict, cfg) -> bool:
    """G's parameters differ from the seeded init the loop starts from: G really took steps."""
    from dist_gan.models import build_generator

    torch.manual_seed(cfg.seed)
    G0 = build_generator(cfg.model)
    return all(not torch.equal(p, state["G"][k]) for k, p in G0.named_parameters() if k.endswith("weight"))


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_trains_on_one_process_and_evaluates(recipe, shards, tmp_path):
    from dist_gan.eval.run import EvalOptions, evaluate

    cfg = load_config(args_for(recipe, shards, tmp_path / "run"))
    run = train(cfg)
    assert g_moved(check_run(run, recipe), cfg)
    res = cfg.model.resolution
    report = evaluate(EvalOptions(target=str(run), ref=str(shards[res]), out=tmp_path / "eval", metrics=["fid"],
                                  n=16, n_ref=16, batch=16, progress=False))
    fid = report["figures"]["fid"]
    assert fid == fid and fid > 0  # a real, finite FID of an untrained generator
    assert (tmp_path / "eval" / "report.json").is_file()


@pytest.mark.parametrize("loss", ["hinge", "lsgan"])
def test_any_recipe_takes_a_loss_by_name(loss, shards, tmp_path):
    cfg = load_config([*args_for("dcgan64", shards, tmp_path / "run"), f"loss.name={loss}", "train.kimg=0.032"])
    run = train(cfg)
    assert g_moved(load_checkpoint(run), cfg) and load_checkpoint(run)["cfg"]["loss"]["name"] == loss


def launch2(*args: str) -> subprocess.CompletedProcess:
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(REPO / "dist_gan" / "train.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "dcgan64"])
def test_recipe_trains_on_two_ranks(recipe, shards, tmp_path):
    launch2(*args_for(recipe, shards, tmp_path / "run"))
    assert g_moved(check_run(tmp_path / "run", recipe), load_config(args_for(recipe, shards, tmp_path / "run")))


def test_spectral_norm_and_diffaug_on_two_ranks_with_resume(shards, tmp_path):
    """dcgan64 with both D options: 2 ranks, a checkpoint, then a resumed 2-rank run from it."""
    run = tmp_path / "run"
    opts = [*args_for("dcgan64", shards, run), "model.spectral_norm=true", "train.diffaug=color,translation,cutout"]
    launch2(*opts, "train.kimg=0.032")
    first = load_checkpoint(run)
    assert any("parametrizations.weight.original" in k for k in first["D"])
    assert any(k.endswith("_u") for k in first["D"])
    launch2(*opts, "resume=auto")
    state = check_run(run, "dcgan64")
    assert state["nimg"] == 64 and first["nimg"] == 32
    assert state["cfg"]["model"]["spectral_norm"] and state["cfg"]["train"]["diffaug"] == "color,translation,cutout"
    # the resumed D kept its spectral-norm parametrisation and moved on
    assert not torch.equal(first["D"]["net.0.parametrizations.weight.original"], state["D"]["net.0.parametrizations.weight.original"])


def test_stylegan2_on_two_ranks_resumes_bit_for_bit(shards, tmp_path):
    """stylegan2_64 (style mixing, noise inputs, lazy R1 every 2nd D step, path length every 2nd G step) on
    2 gloo ranks: cut in two by a resume, it ends at the weights of one straight run, w_avg and the path-length
    mean included."""
    base = [*TINY, *RECIPES["stylegan2_64"], "loss.r1_every=2", "loss.pl_weight=2", "loss.pl_every=2",
            "train.kimg=0.064", "log.snapshot_kimg=0.032",
            "recipe=stylegan2_64", f"data={shards[32]}"]
    launch2(*base, f"run_dir={tmp_path / 'a'}")
    launch2(*base, f"run_dir={tmp_path / 'b'}", "train.kimg=0.032")
    launch2(*base, f"run_dir={tmp_path / 'b'}", "resume=auto")
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["nimg"] == b["nimg"] == 64
    for net in ("G", "D", "G_ema"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert not torch.equal(a["G"]["mapping.w_avg"], torch.zeros_like(a["G"]["mapping.w_avg"]))
    assert a["loss_state"]["pl_mean"].item() == b["loss_state"]["pl_mean"].item() > 0


def test_began_k_t_survives_resume(shards, tmp_path):
    """k_t goes into the checkpoint; a resume with lambda_k=0 must hold it exactly (not restart at 0)."""
    run = tmp_path / "run"
    base = args_for("began", shards, run)
    train(load_config([*base, "train.kimg=0.032", "loss.lambda_k=0.5"]))
    k1 = load_checkpoint(run)["loss_state"]["k_t"].item()
    assert 0 < k1 <= 1
    train(load_config([*base, "loss.lambda_k=0", "resume=auto"]))
    state = load_checkpoint(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert state["nimg"] == 64
    assert state["loss_state"]["k_t"].item() == k1 and records[-1]["k_t"] == pytest.approx(k1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
