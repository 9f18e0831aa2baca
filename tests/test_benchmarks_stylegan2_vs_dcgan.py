"""benchmarks/stylegan2_vs_dcgan.py end to end at toy size: 64 real CelebA faces, a few steps per row on 2 gloo ranks.

No quality assertion (a few steps teach nothing): both recipes on 2 ranks, the evaluator's figures, the
equal-time reading, the resume check, the files and the reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

TINY = ["model.ngf=8", "model.ndf=8", "model.nz=16", "model.w_dim=16", "model.channel_base=128", "model.channel_max=16",
        "train.batch=16", "loader.shuffle=16"]


def test_at_time_reads_the_last_point_reached_within_the_time():
    from benchmarks.stylegan2_vs_dcgan import at_time

    curve = [{"kimg": 10, "fid": 200.0, "train_s": 100.0}, {"kimg": 20, "fid": 150.0, "train_s": 210.0}]
    assert at_time(curve, 209.0)["kimg"] == 10 and at_time(curve, 210.0)["kimg"] == 20 and at_time(curve, 99.0) is None


def test_study_trains_both_recipes_on_two_ranks_scores_them_and_checks_resume(tmp_path, shared_dir):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "stylegan2_vs_dcgan.py"), "--data", "celeba", "--kimg", "0.064",
           "--fid-n", "8", "--fid-points", "2", "-n", "8", "--limit", "64", "--resume-check", "--resume-kimg", "0.032",
           "--work", str(tmp_path / "work"), "--out", str(out), "--override", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]) == {"celeba/dcgan/s0", "celeba/stylegan2/s0"}
    for r in res["runs"].values():
        assert r["world_size"] == 2 and len(r["curve"]) == 2 and r["curve"][-1]["kimg"] >= 0.064
        e = r["eval"]
        assert e["fid"] > 0 and 0 <= e["precision"] <= 1 and 0 <= e["recall"] <= 1 and e["gen_n"] == 8
        assert 0 < r["curve"][0]["train_s"] < r["curve"][1]["train_s"]  # FID time taken out, still increasing
    assert res["runs"]["celeba/dcgan/s0"]["recipe"] == "celeba64" and res["runs"]["celeba/stylegan2/s0"]["recipe"] == "stylegan2_64"
    rc = res["resume_check"]
    assert rc["bit_for_bit"] and rc["world_size"] == 2 and rc["nimg"] == [64, 64] and rc["tensors"] > 50
    md = (out / "results.md").read_text()
    assert "## Equal CPU time" in md and "bit for bit" in md
    for name in ("fid_curves.png", "samples_celeba.png", "command.txt"):
        assert (out / name).is_file(), name
    again = subprocess.run([c for c in cmd if c not in ("--resume-check",)], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2
