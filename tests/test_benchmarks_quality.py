"""Smoke run of benchmarks/quality_vs_textbook.py: a few steps on 64 real CelebA faces, n=64 eval.

Checks the output files and the JSON schema only; no quality assertion (a few steps
teach nothing). Narrow nets (width 16) keep the three trainings to seconds; the cost
is the four Inception passes of 64 images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RUNS = ("textbook", "dist_gan@img", "dist_gan@time")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_dir):
    from benchmarks import quality_vs_textbook as qvt

    root = tmp_path_factory.mktemp("qvt")
    out = root / "out"
    qvt.main(["--data", "celeba", "--limit", "64", "--kimg", "0.064", "--n", "64", "--tb-width", "16", "--tb-batch", "32",
              "--override", "model.ngf=16", "model.ndf=16", "train.batch=32", "--time-override",
              "--parallel", "--bn-recal", "--cache", str(root / "cache"), "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def test_files_written(smoke):
    out, _ = smoke
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "results.json", "results.md", "samples_celeba.png"]
    evals = out.parent / "cache" / "qvt_evals" / "celeba-limit64"
    for run in RUNS:  # per-run evaluations stay in the cache, out of the results folder
        assert (evals / run.replace("@", "_at_") / "report.json").is_file()
        assert not (evals / run.replace("@", "_at_") / "eval_lock.json").exists()  # released when done


def test_schema(smoke):
    _, res = smoke
    assert res["schema"] == "dist_gan.quality_vs_textbook/1"
    block = res["datasets"]["celeba"]
    for key in ("command", "shards", "images", "crop", "settings", "rows", "ratios", "figure", "machine", "seconds"):
        assert key in block, key
    assert block["images"] == 64 and block["crop"] == "center"
    assert set(block["rows"]) == set(RUNS)
    for name, row in block["rows"].items():
        for key in ("fid", "kid_mean", "kid_std", "gen_no_face", "gen_n", "ref_no_face", "ref_n", "leak", "train", "eval"):
            assert key in row, (name, key)
        assert row["gen_n"] == 64 and row["ref_n"] == 64
        assert isinstance(row["fid"], float) and row["fid"] > 0
        for key in ("wall_s", "cpu_s", "nimg", "kimg", "command"):
            assert key in row["train"], (name, key)
        assert "copies" in row["leak"]
        assert row["eval"]["bn_recal"] is True and "--bn-recal" in row["eval"]["command"]  # every run, the textbook's too
        assert Path(os.path.expanduser(row["eval"]["report"])).is_file()  # the recorded path leads to the report
    tb, img, tm = (block["rows"][n]["train"] for n in RUNS)
    assert tb["nimg"] == img["nimg"] == 64  # same image budget
    assert tm["budget_s"] > 0 and tm["nimg"] > 0  # stopped by the textbook's time
    assert set(block["ratios"]) == {"fid_ratio_img", "fid_ratio_time"}


def test_render_only_rewrites_the_tables_and_judges_the_no_face_bound(smoke, tmp_path):
    """--render-only rebuilds results.md from results.json; the no-face target is 'at most 1 point above the reals'."""
    import shutil

    from benchmarks import quality_vs_textbook as qvt

    out, res = smoke
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    rows = res["datasets"]["celeba"]["rows"]
    rows["dist_gan@img"].update(gen_no_face=5, gen_n=100, ref_no_face=7, ref_n=100)  # 2 points *below* the reals
    rows["dist_gan@time"].update(gen_no_face=9, gen_n=100, ref_no_face=7, ref_n=100)  # 2 points above
    (copy / "results.json").write_text(json.dumps(res))
    (copy / "results.md").unlink()
    qvt.main(["--render-only", "--out", str(copy)])
    md = (copy / "results.md").read_text()
    assert "dist_gan@img no-face rate at most 1 point above the reals': -2.0 points (met)" in md
    assert "dist_gan@time no-face rate at most 1 point above the reals': +2.0 points (NOT met)" in md


def test_a_tagged_time_candidate_trains_beside_the_kept_one_against_the_same_textbook(smoke):
    """--time-tag B puts a second dist_gan@time into dist_gan_at_time-B: the textbook is reused, not retrained,
    and the untagged time run (with its eval) is left as it was."""
    from benchmarks import quality_vs_textbook as qvt

    out, _ = smoke
    root = out.parent / "cache" / "qvt_runs" / "celeba-limit64"
    kept = {n: (root / n / "job.json").read_text() for n in ("textbook", "dist_gan_at_time")}
    qvt.main(["--data", "celeba", "--limit", "64", "--kimg", "0.064", "--n", "64", "--tb-width", "16", "--tb-batch", "32",
              "--override", "model.ngf=16", "model.ndf=16", "train.batch=32", "--time-override", "train.batch=16",
              "--runs", "dist_gan@time", "--train-only", "--time-tag", "B", "--cache", str(out.parent / "cache"), "--out", str(out)])
    for name, text in kept.items():
        assert (root / name / "job.json").read_text() == text, name
    tagged = json.loads((root / "dist_gan_at_time-B" / "job.json").read_text())
    assert tagged["rc"] == 0 and tagged["budget"] > 0 and "train.batch=16" in tagged["cmd"]
    assert f"run_dir={root / 'dist_gan_at_time-B'}" in tagged["cmd"]
    assert qvt.run_folder("dist_gan@time", "B") == "dist_gan_at_time-B" and qvt.run_folder("textbook", "B") == "textbook"
    with pytest.raises(SystemExit):
        qvt.parse(["--time-tag", "../elsewhere"])


def test_time_format_blocks_streams_the_same_pixels_without_per_image_decode(smoke):
    """--time-format blocks: the time candidate reads uint8-block shards holding exactly the PNG shards' pixels;
    the textbook is still the reused one (its command names the PNG shards)."""
    import numpy as np

    from benchmarks import quality_vs_textbook as qvt
    from dist_gan.data.format import iter_images, open_shards
    from dist_gan.eval import reference as R

    out, _ = smoke
    cache = out.parent / "cache"
    root = cache / "qvt_runs" / "celeba-limit64"
    textbook = (root / "textbook" / "job.json").read_text()
    qvt.main(["--data", "celeba", "--limit", "64", "--kimg", "0.064", "--n", "64", "--tb-width", "16", "--tb-batch", "32",
              "--override", "model.ngf=16", "model.ndf=16", "train.batch=32", "--time-override", "train.batch=16",
              "--runs", "dist_gan@time", "--train-only", "--time-tag", "blk", "--time-format", "blocks",
              "--cache", str(cache), "--out", str(out)])
    assert (root / "textbook" / "job.json").read_text() == textbook
    blocks = cache / "shards" / "qvt-celeba-64-center-limit64-blocks"
    job = json.loads((root / "dist_gan_at_time-blk" / "job.json").read_text())
    assert job["rc"] == 0 and f"data={blocks}" in job["cmd"] and job["budget"] > 0
    manifest = json.loads((blocks / "manifest.json").read_text())
    assert manifest["image_format"] == "blocks" and manifest["num_samples"] == 64
    arrays = list(iter_images(open_shards(blocks)))
    png = R.open_reference(cache / "shards" / "qvt-celeba-64-center-limit64")
    assert np.array_equal(np.stack(arrays), R.load_images(png, 64, 64))


def test_invocations_started_together_pack_the_shards_once_without_clobbering(tmp_path, shared_dir):
    """Three candidates launched at once all pack the same folder: each gets a complete copy, none fails."""
    import threading

    from benchmarks import quality_vs_textbook as qvt
    from dist_gan.data.format import open_shards

    results, errors = [], []

    def one() -> None:
        try:
            results.append(qvt.packed_shards("anime", tmp_path, "center", 48, image_format="blocks"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    shards = open_shards(results[0])
    assert shards.manifest["counts"]["seen"] == 48 and shards.num_samples == shards.manifest["counts"]["written"] > 40
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [results[0].name]  # no private folders left


def test_an_evaluation_running_in_another_invocation_is_waited_for_not_repeated(tmp_path):
    """The lock of a live process running the same eval command makes a second invocation wait; a dead
    holder's lock, or one for another command, does not."""
    import subprocess
    import threading
    import time

    from benchmarks import harness as qvt

    cmd = ["python", "-m", "dist_gan", "eval", "RUN", "--fid"]
    lock = tmp_path / qvt.EVAL_LOCK
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "cmd": cmd}))
    assert qvt.wait_for_other_eval(tmp_path, cmd, poll_s=0.05) is False  # its holder is gone
    lock.write_text("{not json")
    assert qvt.wait_for_other_eval(tmp_path, cmd, poll_s=0.05) is False  # garbage is not a lock
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "cmd": cmd + ["--kid"]}))
        assert qvt.wait_for_other_eval(tmp_path, cmd, poll_s=0.05) is False  # another evaluation
        lock.write_text(json.dumps({"pid": holder.pid, "cmd": cmd}))
        threading.Timer(0.5, lock.unlink).start()  # the other invocation finishes and releases it
        t0 = time.perf_counter()
        assert qvt.wait_for_other_eval(tmp_path, cmd, poll_s=0.05) is True
        assert time.perf_counter() - t0 >= 0.4
    finally:
        holder.kill()
        holder.wait()
    qvt.claim_eval(tmp_path, cmd)  # our own lock never makes us wait
    assert qvt.wait_for_other_eval(tmp_path, cmd, poll_s=0.05) is False
    qvt.release_eval(tmp_path)
    assert not lock.exists()


def test_a_no_face_rate_exactly_one_point_above_the_reals_meets_the_bound():
    """17/1000 against the reals' 7/1000 is exactly 1 point (in floats 1.0000000000000002): met; 18/1000 is not."""
    from benchmarks import quality_vs_textbook as qvt

    leak = {"verdict": "no memorisation signal"}
    rows = {"textbook": {"fid": 400.0},
            "dist_gan@img": {"fid": 130.0, "gen_no_face": 17, "gen_n": 1000, "ref_no_face": 7, "ref_n": 1000, "leak": leak},
            "dist_gan@time": {"fid": 90.0, "gen_no_face": 18, "gen_n": 1000, "ref_no_face": 7, "ref_n": 1000, "leak": leak}}
    lines = qvt.target_lines(rows)
    assert "dist_gan@img no-face rate at most 1 point above the reals': +1.0 points (met)" in lines
    assert "dist_gan@time no-face rate at most 1 point above the reals': +1.1 points (NOT met)" in lines


def test_a_finished_run_is_reused_only_while_its_resolved_recipe_is_unchanged(tmp_path):
    """`recipe=celeba64` reads the same after celeba64's defaults change; the stamp's resolved config must not."""
    import sys
    from types import SimpleNamespace

    from benchmarks import quality_vs_textbook as qvt

    run = tmp_path / "run"
    run.mkdir()
    cmd = qvt.H.train_cmd(["recipe=celeba64", f"data={tmp_path}", f"run_dir={run}", "train.kimg=1"])
    qvt.stamp(SimpleNamespace(cmd=cmd, rc=0, wall_s=2.0, cpu_s=1.5, terminated=False), run)
    done = qvt.reusable(run, cmd, "dist_gan@img")
    assert done is not None and done.cpu_s == 1.5
    st = json.loads((run / "job.json").read_text())
    assert st["config"]["train"]["kimg"] == 1 and "run_dir" not in st["config"]
    st["config"]["train"]["batch"] += 16  # as if the recipe file's default had been different when it trained
    (run / "job.json").write_text(json.dumps(st))
    assert qvt.reusable(run, cmd, "dist_gan@img") is None
    del st["config"]  # a stamp from before configs were recorded
    (run / "job.json").write_text(json.dumps(st))
    assert qvt.reusable(run, cmd, "dist_gan@img") is None
    textbook = [sys.executable, "benchmarks/quality_vs_textbook.py", "_textbook", "--kimg", "1"]
    (run / "job.json").write_text(json.dumps({"cmd": textbook, "rc": 0, "wall_s": 1.0, "cpu_s": 1.0}))
    assert qvt.reusable(run, textbook, "textbook") is not None  # the textbook's command line is its whole config


def test_the_zoo_study_reuses_a_run_only_while_its_resolved_recipe_is_unchanged(tmp_path, monkeypatch):
    """quality_study.py keys its reuse on the resolved config too (the twin of the test above)."""
    import subprocess
    from types import SimpleNamespace

    from benchmarks import quality_study as qs
    from benchmarks.harness import resolved_train_config
    from dist_gan.engine.checkpoint import save_checkpoint

    a = SimpleNamespace(seed=0, kimg=0.032, workers=0, ema_kimg=0.5, batch=0, width=8, override=[], procs=1)
    run = tmp_path / "run"
    save_checkpoint({"nimg": 32}, run / "checkpoints", 32)  # a finished 0.032-kimg run
    args = qs.train_args("dcgan64", tmp_path, run, a)
    stamp = {"args": args, "config": resolved_train_config(args), "facts": {"train_seconds": 1.0}}
    (run / "study_args.json").write_text(json.dumps(stamp))
    assert qs.train_variant("dcgan64", tmp_path, run, a) == stamp["facts"]  # reused: nothing trained

    def no_training(cmd, **kw):
        raise SystemExit(f"trained: {cmd[-len(args):] == args}")

    monkeypatch.setattr(subprocess, "run", no_training)
    stamp["config"]["train"]["batch"] += 16  # as if dcgan64's default had been different when it trained
    (run / "study_args.json").write_text(json.dumps(stamp))
    with pytest.raises(SystemExit, match="trained: True"):
        qs.train_variant("dcgan64", tmp_path, run, a)


# ------------------------------------------------------------------ the shared harness (benchmarks/harness.py)
def test_the_table_formatter_writes_markdown_rows_and_the_kid_and_missing_cells():
    """Both quality scripts' tables come out of md_table/fmt/kid_cell: pin the layout they share."""
    from benchmarks import harness as H

    lines = H.md_table(["run", "FID", "KID x1e3"], [["a", H.fmt(12.345), H.kid_cell(0.01234, 0.00056)],
                                                    ["b", H.fmt(None), H.kid_cell(None, None)], ["c", 7, 0]])
    assert lines == ["| run | FID | KID x1e3 |", "|---|---|---|", "| a | 12.3 | 12.3 ± 0.6 |", "| b | - | - |", "| c | 7 | 0 |"]
    assert H.fmt(1234.5, ".0f") == "1234"


def test_write_tables_puts_json_markdown_and_command_atomically(tmp_path):
    from benchmarks import harness as H

    out = tmp_path / "out"
    H.write_tables(out, "table", {"rows": [1, 2]}, "# t\n", ["python a.py --x 1", "python a.py --x 2"])
    assert json.loads((out / "table.json").read_text()) == {"rows": [1, 2]}
    assert (out / "table.json").read_text().endswith("\n")
    assert (out / "table.md").read_text() == "# t\n"
    assert (out / "command.txt").read_text() == "python a.py --x 1\npython a.py --x 2\n"
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "table.json", "table.md"]  # no temp files left


def test_both_scripts_render_their_tables_through_the_shared_formatter():
    """quality_study's and quality_vs_textbook's Markdown: the table lines they have always written."""
    from benchmarks import quality_study as qs
    from benchmarks import quality_vs_textbook as qvt

    study_row = {"variant": "dcgan64", "recipe": "dcgan64", "extra_overrides": ["model.spectral_norm=true"], "no_face": 3, "n": 10,
                 "ref_no_face": 1, "ref_n": 10, "fid": 101.26, "kid_mean": 0.05, "kid_std": 0.002, "precision": 0.61234,
                 "recall": 0.4, "leak": {"copies": 0},
                 "train_seconds": 61.4, "img_per_s": 33.33}
    study = {"command": "python benchmarks/quality_study.py", "datasets": {"celeba": {
        "shards": "S", "detector": "haar", "rows": [study_row], "figure": "samples_celeba.png", "machine": "2 cores, X", "threads": 2}},
        "args": {"kimg": 1.0, "seed": 0, "batch": 0, "width": 0, "ema_kimg": 0.5, "procs": 1, "n": 10, "variants": ["dcgan64"]}}
    md = qs.markdown(study)
    assert ("| variant | recipe + overrides | can't detect face | FID | KID x1e3 | P / R | NN copies | train s | img/s |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            "| dcgan64 | `dcgan64 model.spectral_norm=true` | 3/10 | 101.3 | 50.0 ± 2.0 | 0.612 / 0.400 | 0 | 61 | 33.3 |\n"
            "| reals (detector floor) | - | 1/10 | - | - | - | - | - | - |\n") in md
    assert "Can't detect face: dcgan64 3/10 (reals: 1/10)" in md
    assert "Machine: 2 cores, X; 2 thread(s) per training;" in md  # the clocks' machine, per data set

    leak = {"under_real_p1": 2, "under_real_p1_expected": 1.5, "copies": 0, "verdict": "no memorisation signal"}
    train = {"kimg": 1.0, "steps": 8, "wall_s": 10.0, "cpu_s": 9.0, "budget_s": 9.0, "stopped_by_budget": True, "decode_cpu_s": 1.0}
    rows = {n: {"train": train, "fid": fid, "kid_mean": None, "kid_std": None, "precision": p, "recall": 0.25, "gen_no_face": 2,
                "gen_n": 10, "ref_no_face": 1, "ref_n": 10, "leak": leak, "detector": {"name": "haar", "working_size": 64}}
            for n, fid, p in (("textbook", 200.0, 0.5), ("dist_gan@img", 100.0, 0.75), ("dist_gan@time", None, None))}
    settings = {"seed": 0, "kimg": 1.0, "clock": "cpu", "threads": 1, "parallel": False, "n": 10, "recipe": "celeba64",
                "override": [], "time_override": []}
    md = qvt.markdown({"datasets": {"celeba": {"settings": settings, "rows": rows, "command": "c", "shards": "S", "images": 64,
                                               "crop": "center", "figure": "f.png"}}})
    assert ("| run | kimg | steps | train wall s | train CPU s | FID | FID / textbook | KID x1e3 | P / R | no face | "
            "leak (under real p1 / expected, copies, verdict) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            "| textbook | 1.00 | 8 | 10 | 9 | 200.0 | 1.000 | - | 0.500 / 0.250 | 2/10 | 2 / 1.5, 0, no memorisation signal |\n"
            "| dist_gan@img | 1.00 | 8 | 10 | 9 | 100.0 | 0.500 | - | 0.750 / 0.250 | 2/10 | 2 / 1.5, 0, no memorisation signal |\n"
            "| dist_gan@time | 1.00 | 8 | 10 | 9 | - | - | - | - | 2/10 | 2 / 1.5, 0, no memorisation signal |\n"
            "| reals (detector floor) | - | - | - | - | - | - | - | - | 1/10 | - |\n") in md


def test_eval_task_names_the_detector_and_the_newest_checkpoint_keys_reuse(tmp_path):
    """One eval command for both scripts (the data set picks the detector); the reuse key is the newest checkpoint file."""
    import sys

    from benchmarks import harness as H
    from dist_gan.engine.checkpoint import save_checkpoint

    celeba = H.eval_task(tmp_path / "run", tmp_path / "ref", tmp_path / "out", n=500, seed=3, data="celeba")
    assert celeba.cmd[:5] == [sys.executable, "-m", "dist_gan", "eval", str(tmp_path / "run")]
    assert {"--fid", "--kid", "--pr", "--detect", "--leak"} <= set(celeba.cmd)  # every kept table scores P / R too
    assert celeba.cmd[-2:] == ["--detector", "mtcnn"] and "--batch" in celeba.cmd and celeba.cmd[celeba.cmd.index("--batch") + 1] == "250"
    anime = H.eval_task(tmp_path / "run", tmp_path / "ref", tmp_path / "out", n=64, seed=0, data="anime", bn_recal=True)
    assert anime.cmd[-5:] == ["--detector", "anime", "--cascade", str(H.ANIME_CASCADE), "--bn-recal"]

    run = tmp_path / "run"
    assert H.newest_checkpoint(run) is None
    with pytest.raises(SystemExit):
        H.checkpoint_key(run)
    save_checkpoint({"nimg": 32}, run / "checkpoints", 32, keep=0)
    newest = save_checkpoint({"nimg": 64}, run / "checkpoints", 64, keep=0)
    assert H.newest_checkpoint(run) == newest and H.checkpoint_nimg(newest) == 64
    assert H.checkpoint_key(run) == [str(newest), newest.stat().st_size, newest.stat().st_mtime]


def test_scores_reads_one_eval_report_for_both_scripts():
    from benchmarks import harness as H

    rep = {"metrics": {"fid": {"fid": 50.0}, "kid": {"kid_mean": 0.01, "kid_std": 0.001},
                       "detect": {"gen_no_face": 4, "gen_n": 100, "ref_no_face": 2, "ref_n": 100, "detector": {"name": "haar"}},
                       "leak": {"copies": 0, "verdict": "no memorisation signal", "flag": True, "detail": {"x": 1}}}}
    s = H.scores(rep)
    assert (s["fid"], s["kid_mean"], s["gen_no_face"], s["ref_n"], s["detector"]) == (50.0, 0.01, 4, 100, {"name": "haar"})
    assert s["leak"] == {"copies": 0, "verdict": "no memorisation signal"}  # no bools, no nested dicts
    assert H.scores(rep, leak_types=(int, float))["leak"] == {"copies": 0}  # the study's table keeps the numbers only
    assert H.scores({"metrics": {}})["fid"] is None and H.scores({"metrics": {}})["precision"] is None
    s = H.scores({"metrics": {"pr": {"precision": 0.8, "recall": 0.6, "k": 3}}})
    assert (s["precision"], s["recall"]) == (0.8, 0.6) and H.pr_cell(s) == "0.800 / 0.600"


def test_the_zoo_study_writes_its_table_and_reuses_its_run_and_eval(tmp_path, shared_dir, monkeypatch):
    """quality_study.py end to end on 64 faces (width 8, 32 images): table files, figure, report; a rerun
    retrains nothing and re-evaluates nothing (the shared harness's reuse), and writes the same table."""
    import subprocess

    from benchmarks import harness as H
    from benchmarks import quality_study as qs

    args = ["--data", "celeba", "--limit", "64", "--kimg", "0.032", "--n", "64", "--variants", "dcgan64", "--width", "8",
            "--batch", "16", "--workers", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    res = qs.main(args)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "samples_celeba.png", "table.json", "table.md"]
    assert (tmp_path / "cache" / "evals" / "celeba" / "dcgan64" / "report.json").is_file()  # per-run evals stay in the cache
    assert "## celeba (mtcnn detector;" in (out / "table.md").read_text()  # named by the report, not by a constant
    row = json.loads((out / "table.json").read_text())["datasets"]["celeba"]["rows"][0]
    assert row["n"] == row["ref_n"] == 64 and row["kimg"] == 0.032 and row["fid"] > 0 and row["eval_seconds"] > 0
    assert "verdict" not in row["leak"] and "copies" in row["leak"]
    assert "| dcgan64 | `dcgan64` | " in (out / "table.md").read_text()

    def nothing_runs(*a, **kw):
        raise AssertionError("a finished run or evaluation was repeated")

    monkeypatch.setattr(subprocess, "run", nothing_runs)
    monkeypatch.setattr(H, "Job", nothing_runs)
    table = json.loads((out / "table.json").read_text())
    table["datasets"]["anime"] = {**table["datasets"]["celeba"], "rows": [{**row, "fid": 1.5}]}  # as if anime had run before
    (out / "table.json").write_text(json.dumps(table))
    again = qs.main(args)
    assert again["datasets"]["celeba"]["rows"] == res["datasets"]["celeba"]["rows"]
    assert again["datasets"]["anime"]["rows"][0]["fid"] == 1.5  # a run over celeba keeps the anime block
    assert again["command"].startswith("python benchmarks/quality_study.py --data anime celeba --limit 64 ")
    assert (out / "command.txt").read_text() == again["command"] + "\n"

    table["args"]["n"] = 32  # the anime block ran with other settings: not merged into this table
    (out / "table.json").write_text(json.dumps(table))
    assert list(qs.main(args)["datasets"]) == ["celeba"]


def test_the_zoo_study_command_names_every_data_set_of_its_table():
    from benchmarks import quality_study as qs

    assert qs.with_data(["--data", "celeba", "--kimg", "8"], ["anime", "celeba"]) == ["--data", "anime", "celeba", "--kimg", "8"]
    assert qs.with_data(["--kimg", "8", "--data", "anime", "celeba", "--n", "9"], ["anime"]) == ["--data", "anime", "--kimg", "8", "--n", "9"]
    assert qs.with_data(["--data=celeba", "--n", "9"], ["anime", "celeba"]) == ["--data", "anime", "celeba", "--n", "9"]


def test_a_wait_left_early_ends_the_job_its_keeper_had_paused(tmp_path):
    """Ctrl-C while the budget keeper holds dist_gan@time stopped: the job is ended, not left a stopped orphan."""
    import signal
    import sys
    import time

    from benchmarks import harness as H

    job = H.Job("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "sleeper.log", threads=1)

    def keeper() -> None:
        if not job.stopped:
            job.signal(signal.SIGSTOP)
            job.stopped = True
        else:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        H.wait_all([job], keeper, interval=0.05)
    deadline = time.time() + 20
    while not job.poll():
        assert time.time() < deadline, "the paused job was left running (stopped)"
        time.sleep(0.05)
    assert job.rc == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the harness's handler is gone again
