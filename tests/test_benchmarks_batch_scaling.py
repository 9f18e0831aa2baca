"""benchmarks/batch_scaling.py end to end at toy size: 64 real CelebA faces, a few steps per row on 2 gloo ranks.

No quality assertion (a few steps teach nothing): the rows' lengths, the world size, the files, the reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO


def test_every_bigbatch_row_reruns_with_the_settings_the_study_ran_with_while_the_recipe_moves_on():
    """The recorded rows ran with a 10-kimg EMA, Adam (0.5, 0.999), smoothing 0.9 and noise 0.02; bigbatch now
    ships 30, (0, 0.99), 1.0 and 0. Each row pins the old values unless it says otherwise."""
    from benchmarks import batch_scaling as B
    from dist_gan.config import load_config

    ran_with = {"train.ema_kimg": 10.0, "optim.g_betas": [0.5, 0.999], "optim.d_betas": [0.5, 0.999],
                "loss.real_label": 0.9, "loss.instance_noise": 0.02}
    shipped = load_config(["recipe=bigbatch"])
    for key, old in ran_with.items():
        assert OmegaConf.select(shipped, key) != old, f"bigbatch ships {key}={old} again: its pin is moot"

    def norm(value):  # an override's text, a config node or a number -> a float or a list of floats
        if isinstance(value, str):
            return [float(b) for b in value.strip("[]").split(",")] if value.startswith("[") else float(value)
        return [float(b) for b in value] if not isinstance(value, (int, float)) else float(value)

    for name, row in B.ROWS.items():
        recipe = row.get("recipe", "bigbatch")
        cfg = load_config([f"recipe={recipe}", *B.row_overrides(row, 40.0)])
        bare = load_config([f"recipe={recipe}"])
        for key, old in ran_with.items():
            explicit = [o.split("=", 1)[1] for o in row["overrides"] if o.startswith(key + "=")]
            want = explicit[-1] if explicit else (old if recipe == "bigbatch" else OmegaConf.select(bare, key))
            assert norm(OmegaConf.select(cfg, key)) == norm(want), (name, key)


def test_batch_scaling_gives_each_batch_the_same_gpu_time_on_two_ranks_and_reuses_finished_runs(tmp_path, shared_dir):
    """A tiny study (64 images, a few steps): two real gloo ranks per row, FID tracked, best.pt detected."""
    from benchmarks import batch_scaling as B

    assert B.row_kimg(512, 10) / B.row_kimg(128, 10) == pytest.approx(B.gpu_img_per_s(512) / B.gpu_img_per_s(128), rel=0.01)
    assert B.row_kimg(128, 10) == 10
    cmd = [sys.executable, str(REPO / "benchmarks" / "batch_scaling.py"), "--data", "celeba", "--rows", "b512",
           "--budget-kimg", "0.2", "--fid-n", "8", "--fid-points", "1", "--detect-n", "8", "--limit", "64", "--rescore-n", "16",
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert set(runs) == {"celeba/b512/s0"}
    r = runs["celeba/b512/s0"]
    assert r["world_size"] == 2 and r["fid_n"] == 8 and r["best_fid"] > 0 and r["detect"]["n"] == 8
    assert r["detect"]["detector"]["name"] == "mtcnn" and 0 <= r["detect"]["precision"] <= 1 and 0 <= r["detect"]["recall"] <= 1
    assert r["rescored"]["n"] == 16 and r["rescored"]["fid"] > 0 and "-n 16" in r["rescored"]["command"]
    assert f"({r['rescored']['fid']:.1f} at n = 16)" in (tmp_path / "out" / "results.md").read_text()
    assert r["kimg"] == B.row_kimg(512, 0.2) and r["gpu_s_est"] == pytest.approx(0.2 * 1000 / B.gpu_img_per_s(128), rel=0.05)
    for name in ("results.md", "fid_curves.png", "samples_celeba.png", "command.txt"):
        assert (tmp_path / "out" / name).is_file(), name
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout


def test_a_merge_whose_kept_runs_left_no_checkpoint_keeps_the_sample_figure(tmp_path, capsys):
    """A --merge on a machine without the kept runs' checkpoints must not redraw the grid from the new rows alone."""
    from benchmarks import batch_scaling as B

    figure = tmp_path / "samples_celeba.png"
    figure.write_bytes(b"the grid of every row")
    gone = {"data": "celeba", "row": "b128_sn", "seed": 0, "batch": 128, "run": str(tmp_path / "gone")}
    B.figure({"runs": {"celeba/b128_sn/s0": gone}}, tmp_path, {"celeba": tmp_path / "shards"})
    assert figure.read_bytes() == b"the grid of every row"
    assert "kept as it was" in capsys.readouterr().out


def test_a_run_recorded_from_home_is_found_on_the_machine_that_reads_the_table(tmp_path, monkeypatch, capsys):
    """results.json names runs from ~ (no machine's home in a recorded table); the figure expands it again."""
    from benchmarks import batch_scaling as B
    from benchmarks import harness as H

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "here" / "checkpoints").mkdir(parents=True)
    (tmp_path / "here" / "checkpoints" / "best.pt").write_bytes(b"a checkpoint")
    assert H.shown_path(tmp_path / "here") == "~/here"

    def row(name, batch, run):
        return {"data": "celeba", "row": name, "seed": 0, "batch": batch, "run": run}

    runs = {"celeba/b512/s0": row("b512", 512, H.shown_path(tmp_path / "here")), "celeba/b128_sn/s0": row("b128_sn", 128, "~/gone")}
    B.figure({"runs": runs}, tmp_path, {"celeba": tmp_path / "shards"})
    out = capsys.readouterr().out
    assert "1 run(s) have no best.pt here (celeba/b128_sn/s0" in out and "celeba/b512/s0" not in out


def test_the_figure_looks_only_at_the_rows_the_study_picked(tmp_path, capsys):
    """--figure-rows: rows outside the pick neither appear nor hold the figure back."""
    from benchmarks import batch_scaling as B

    def gone(row, batch):
        return {"data": "celeba", "row": row, "seed": 0, "batch": batch, "run": str(tmp_path / row)}

    figure = tmp_path / "samples_celeba.png"
    figure.write_bytes(b"the grid of the picked rows")
    runs = {"celeba/b128_sn/s0": gone("b128_sn", 128), "celeba/b512/s0": gone("b512", 512)}
    runs["celeba/b512/s1"] = {**gone("b512", 512), "seed": 1}  # not drawn: the grid shows each row's lowest seed
    B.figure({"runs": runs, "figure_rows": ["b512"]}, tmp_path, {"celeba": tmp_path / "shards"})
    out = capsys.readouterr().out
    assert "1 run(s) have no best.pt here (celeba/b512/s0" in out and "b128_sn" not in out
    assert figure.read_bytes() == b"the grid of the picked rows"


def test_the_table_names_each_row_by_what_it_changes_from_the_recipe_as_it_ships():
    """A row spells out every key it ran with (some twice); the table shows each changed key once, its last value."""
    from benchmarks import batch_scaling as B

    assert B.changes("bigbatch", B.ROWS["b512_b0_plain"]["overrides"]) == []
    assert B.changes("bigbatch", B.ROWS["b128_plain"]["overrides"]) == ["train.batch=128"]
    # as run: the study's pinned keys first, so a row that ran before the recipe moved on says how it differs now
    ran = lambda row: B.row_overrides(B.ROWS[row], 365.3)  # noqa: E731
    assert B.changes("bigbatch", ran("b512_b0_plain")) == ["train.ema_bn_recal=false"]
    assert B.changes("bigbatch", ran("b512_plain_recal")) == []
    assert B.changes("bigbatch", ran("b128_plain_recal")) == ["train.batch=128"]
    assert B.changes("bigbatch", ["train.ema_kimg=10", "optim.g_lr=1e-3", "train.ema_kimg=30"]) == ["optim.g_lr=1e-3"]
    assert B.changes("dcgan64", ["train.batch=512", "optim.g_betas=[0.5,0.999]"]) == ["train.batch=512"]


def test_render_rewrites_the_table_and_lists_commands_in_table_order(tmp_path):
    """--render trains nothing: the table and command.txt come from results.json, in the same order."""
    from benchmarks import batch_scaling as B

    def run(row, seed, batch, fid):
        return {"data": "celeba", "row": row, "seed": seed, "batch": batch, "recipe": "bigbatch",
                "overrides": B.ROWS[row]["overrides"], "kimg": 10.0, "gpu_s_est": 1.0, "best_fid": fid, "best_kimg": 10.0,
                "final_fid": fid, "curve": [{"kimg": 10.0, "fid": fid, "fid_s": 1.0}], "cpu_wall_s": 60.0,
                "detect": {"gen_no_face": 1, "ref_no_face": 1, "n": 10, "detector": {"name": "mtcnn"}},
                "command": f"train {row} s{seed}"}
    runs = [run("b512_b0_plain", 1, 512, 60.0), run("b128_plain", 0, 128, 70.0), run("b512_b0_plain", 0, 512, 65.0)]
    (tmp_path / "results.json").write_text(json.dumps({"budget_kimg": 10, "resolution": 32, "fid_n": 8, "machine": "m",
                                                       "runs": {B.key(r): r for r in runs}}))
    B.main(["--render", "--out", str(tmp_path)])
    assert (tmp_path / "command.txt").read_text().split("\n")[:3] == ["train b128_plain s0", "train b512_b0_plain s0",
                                                                      "train b512_b0_plain s1"]
    table = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| celeba")]
    assert [line.split(" | ")[1:3] for line in table] == [["b128_plain", "0"], ["b512_b0_plain", "0"], ["b512_b0_plain", "1"]]
    assert table[0].endswith("`bigbatch` train.batch=128 |") and table[1].endswith("`bigbatch` as it ships |")
    assert (tmp_path / "fid_curves.png").is_file()


def test_a_row_that_changes_the_work_per_image_claims_no_gpu_time_and_leaves_the_gpu_axis(tmp_path):
    """The H100 img/s were measured with bigbatch's nets and its 1:1 D:G schedule: a wider G or D, or another
    schedule, runs bigbatch's kimg, but its GPU seconds are unknown: the table shows -, and the figure draws it
    against kimg only."""
    from benchmarks import batch_scaling as B

    for row in ("b512_recal_ngf128", "b512_recal_ndf128", "b512_recal_g2", "b512_recal_d2"):
        assert B.gpu_s_est(B.ROWS[row], 365.3) is None, row
    plain = B.gpu_s_est(B.ROWS["b512_plain_recal"], 365.3)
    assert plain == pytest.approx(365.3 * 1000 / B.gpu_img_per_s(512))
    assert B.gpu_s_est(B.ROWS["b128_plain_recal"], 80.0) == pytest.approx(plain, rel=0.01)  # equal GPU time
    assert B.row_kimg(512, 80) == 365.3  # what every batch-512 row runs, widened nets included

    def run(row, gpu_s):
        return {"data": "celeba", "row": row, "seed": 0, "batch": 512, "recipe": "bigbatch", "overrides": B.ROWS[row]["overrides"],
                "kimg": 10.0, "gpu_s_est": gpu_s, "best_fid": 60.0, "best_kimg": 10.0, "final_fid": 60.0,
                "curve": [{"kimg": 5.0, "fid": 90.0, "fid_s": 1.0}, {"kimg": 10.0, "fid": 60.0, "fid_s": 1.0}],
                "cpu_wall_s": 60.0, "detect": {"gen_no_face": 1, "ref_no_face": 1, "n": 10, "detector": {"name": "mtcnn"}},
                "command": f"train {row}"}
    runs = [run("b512_plain_recal", 0.2), run("b512_recal_ngf128", None)]
    (tmp_path / "results.json").write_text(json.dumps({"budget_kimg": 10, "resolution": 32, "fid_n": 8, "machine": "m",
                                                       "runs": {B.key(r): r for r in runs}}))
    B.main(["--render", "--out", str(tmp_path)])
    cells = {line.split(" | ")[1]: line.split(" | ")[5] for line in (tmp_path / "results.md").read_text().splitlines()
             if line.startswith("| celeba")}
    assert cells == {"b512_plain_recal": "0.2", "b512_recal_ngf128": "-"}
    assert (tmp_path / "fid_curves.png").stat().st_size > 0
