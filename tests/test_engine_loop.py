"""The training loop end to end on real shards: resume bit-for-bit, 2 gloo ranks, kills, NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMOKE
from dist_gan.config import load_config
from dist_gan.engine.checkpoint import list_checkpoints, load_checkpoint, load_generator
from dist_gan.engine.loop import TrainingDiverged, train
from dist_gan.errors import UserError

TRAIN = [sys.executable, str(REPO / "dist_gan" / "train.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_inprocess(*args: str) -> Path:
    return train(load_config([*SMOKE, *args]))


def states_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def straight_and_resumed(tmp_path: Path, *common: str) -> tuple:
    """One straight run (run_dir a) and one cut in two by a resume at 0.096 kimg (run_dir b): their newest
    checkpoints, after asserting that G, D and G_ema are equal bit for bit."""
    straight = run_inprocess(*common, f"run_dir={tmp_path / 'a'}")
    run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "train.kimg=0.096")
    resumed = run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "resume=auto")
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for key in ("G", "D", "G_ema"):
        assert states_equal(a[key], b[key]), key
    return a, b


def logged_lr_scales(run_dir: Path) -> list:
    return [json.loads(x)["lr_scale"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_dir_layout_and_outputs(shards32, tmp_path):
    run = run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'run'}")
    for name in ("recipe.yaml", "metrics.jsonl", "loss_curve.png", "final.json", "samples/latest.png", "samples/reals.png"):
        assert (run / name).exists(), name
    assert len(list_checkpoints(run / "checkpoints")) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kimg"] == pytest.approx(0.16)
    assert {"loss_d", "loss_g", "d_real", "d_fake", "img_per_s"} <= set(records[-1])


def test_resume_reaches_the_same_weights_bit_for_bit(shards32, tmp_path):
    common = [f"data={shards32}", "loader.workers=1", "train.kimg=0.192", "log.snapshot_kimg=0.096"]
    a, b = straight_and_resumed(tmp_path, *common)
    assert a["nimg"] == b["nimg"] == 192
    assert a["opt_G"]["state"][0]["exp_avg"].equal(b["opt_G"]["state"][0]["exp_avg"])


def test_diffaug_until_kimg_hands_d_plain_images_from_that_image_on(shards32, tmp_path):
    """DiffAugment on for 96 images then off equals a run that resumes those 96 images without it, bit for bit;
    a run that never augments ends elsewhere, so the first half really was augmented."""
    common = [f"data={shards32}", "train.kimg=0.192", "log.snapshot_kimg=0.096", "train.diffaug=translation"]
    switched = run_inprocess(*common, f"run_dir={tmp_path / 'a'}", "train.diffaug_until_kimg=0.096")
    run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "train.kimg=0.096")
    resumed_plain = run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "resume=auto", "train.diffaug=''")
    never = run_inprocess(*common, f"run_dir={tmp_path / 'c'}", "train.diffaug=''")
    a, b, c = (load_checkpoint(r) for r in (switched, resumed_plain, never))
    assert a["nimg"] == b["nimg"] == c["nimg"] == 192
    for key in ("G", "D", "G_ema"):
        assert states_equal(a[key], b[key]), key
    assert not states_equal(a["D"], c["D"])
    with pytest.raises(UserError, match="train.diffaug_until_kimg must be >= 0"):
        load_config([*SMOKE, "train.diffaug_until_kimg=-1"])


def test_lr_decay_follows_the_images_shown_and_resumes_bit_for_bit(shards32, tmp_path):
    """A decay window that a resume cuts in two ends at the same weights and rates as one straight run;
    the logged scale falls across the window; lr_decay_nets=d leaves G's rate alone."""
    common = [f"data={shards32}", "train.kimg=0.192", "log.snapshot_kimg=0.096", "log.every=1",
              "optim.lr_decay_kimg=[0.048,0.144]", "optim.lr_decay_to=0.25"]
    a, b = straight_and_resumed(tmp_path, *common)
    for net, lr in (("G", 2e-4), ("D", 2e-4)):
        assert a[f"opt_{net}"]["param_groups"][0]["lr"] == b[f"opt_{net}"]["param_groups"][0]["lr"] == pytest.approx(lr * 0.25)
    scales = logged_lr_scales(tmp_path / "a")
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.25)
    assert all(y <= x for x, y in zip(scales, scales[1:])) and 0.25 < scales[len(scales) // 2] < 1.0
    constant = load_checkpoint(run_inprocess(*common[:4], f"run_dir={tmp_path / 'c'}"))
    assert not states_equal(a["G"], constant["G"])  # the decay changed the trajectory
    d_only = load_checkpoint(run_inprocess(*common, "optim.lr_decay_nets=d", f"run_dir={tmp_path / 'd'}"))
    assert d_only["opt_G"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert d_only["opt_D"]["param_groups"][0]["lr"] == pytest.approx(0.5e-4)


def test_batch_scaling_and_warmup_set_the_rates_and_resume_bit_for_bit(shards32, tmp_path):
    """smoke's global batch 16 against ref_batch 4, linear: 4x the rates; a warm-up that a resume cuts in two
    ends at the same weights as one straight run, and the logged factor rises to 1."""
    common = [f"data={shards32}", "train.kimg=0.192", "log.snapshot_kimg=0.096", "log.every=1",
              "optim.lr_scaling=linear", "optim.ref_batch=4", "optim.warmup_kimg=0.128"]
    a, b = straight_and_resumed(tmp_path, *common)
    for net in ("G", "D"):
        assert a[f"opt_{net}"]["param_groups"][0]["lr"] == b[f"opt_{net}"]["param_groups"][0]["lr"] == pytest.approx(4 * 2e-4)
    scales = logged_lr_scales(tmp_path / "a")
    assert scales[0] == pytest.approx(1 / 128) and scales[-1] == 1.0
    assert all(y >= x for x, y in zip(scales, scales[1:]))
    plain = load_checkpoint(run_inprocess(*common[:4], f"run_dir={tmp_path / 'c'}"))
    assert not states_equal(a["G"], plain["G"])  # the rules changed the trajectory


def test_lazy_r1_is_paid_on_its_steps_and_resumes_bit_for_bit(shards32, tmp_path):
    """R1 every 2nd D step: logged where it was paid, cut in two by a resume it ends at the same weights,
    and it changes where D goes (the penalty really reached D's gradients)."""
    common = [f"data={shards32}", "train.kimg=0.192", "log.snapshot_kimg=0.096", "log.every=1",
              "loss.r1_gamma=10", "loss.r1_every=2"]
    a, _ = straight_and_resumed(tmp_path, *common)
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [("r1" in r) for r in records] == [i % 2 == 0 for i in range(len(records))] and len(records) == 12
    assert all(r["r1"] > 0 for r in records if "r1" in r)
    plain = load_checkpoint(run_inprocess(*common[:4], f"run_dir={tmp_path / 'c'}"))
    assert not states_equal(a["D"], plain["D"])


def test_stylegan2_path_length_is_lazy_and_its_mean_resumes_bit_for_bit(shards32, tmp_path):
    """Path length every 2nd G step: logged where paid; its running mean goes into the checkpoint, so a run cut by a
    resume ends at the same weights and the same mean as one straight run."""
    common = [f"data={shards32}", "train.kimg=0.128", "log.snapshot_kimg=0.064", "log.every=1", "model.arch=stylegan2",
              "model.nz=16", "model.w_dim=16", "model.mapping_depth=2", "model.channel_base=128", "model.channel_max=8",
              "loss.pl_weight=2", "loss.pl_every=2"]
    run_inprocess(*common, f"run_dir={tmp_path / 'a'}")
    run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "train.kimg=0.064")
    run_inprocess(*common, f"run_dir={tmp_path / 'b'}", "resume=auto")
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in ("G", "D", "G_ema"):
        assert states_equal(a[key], b[key]), key
    assert a["loss_state"]["pl_mean"].item() == b["loss_state"]["pl_mean"].item() > 0
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [("pl" in r) for r in records] == [i % 2 == 0 for i in range(len(records))] and len(records) == 8


def test_nan_stops_with_a_clear_message(shards32, tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "loss.instance_noise=1e40")


def test_nan_rollback_retries_then_gives_up(shards32, tmp_path):
    run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.kimg=0.08")
    with pytest.raises(TrainingDiverged, match="non-finite"):
        run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "resume=auto", "loss.instance_noise=1e40",
                      "train.nan_policy=rollback", "train.max_rollbacks=2")
    assert load_checkpoint(tmp_path / "r")["nimg"] == 80  # the good checkpoint survived


def test_bad_key_fails_before_any_work(shards32, tmp_path):
    proc = subprocess.run([*TRAIN, *SMOKE, f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.lr=1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert "unknown recipe key 'train.lr'" in proc.stderr and "optim.g_lr" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_two_gloo_ranks_stay_in_sync_on_uneven_shards(shards32, tmp_path):
    run = tmp_path / "ddp"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(REPO / "dist_gan" / "train.py"),
           *SMOKE, f"data={shards32}", f"run_dir={run}", "loader.workers=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "ACCELERATE_USE_CPU": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2
    assert [r["iteration"] for r in final["ranks"]] == [10, 10]
    assert [r["data_step"] for r in final["ranks"]] == [10, 10]
    assert final["ranks_in_sync"], final["weight_checksums"]
    assert len(load_checkpoint(run)["rng_per_rank"]) == 2


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not list_checkpoints(run / "checkpoints"):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def test_sigkill_mid_run_resumes_and_loses_at_most_one_interval(shards32, tmp_path):
    run = tmp_path / "killed"
    args = [*SMOKE, f"data={shards32}", f"run_dir={run}", "train.kimg=2", "log.snapshot_kimg=0.032", "log.keep=2"]
    proc = subprocess.Popen([*TRAIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for_checkpoint(run, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kept = list_checkpoints(run / "checkpoints")
    assert kept and all(load_checkpoint(p)["nimg"] > 0 for p in kept)  # every file on disk is whole
    last = load_checkpoint(run)["nimg"]
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip().endswith("}")]
    assert records[-1]["kimg"] * 1000 - last <= 32  # lost at most one snapshot interval
    done = subprocess.run([*TRAIN, *args, "resume=auto", "train.kimg=" + str((last + 64) / 1000)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed at" in done.stderr
    assert load_checkpoint(run)["nimg"] == last + 64


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(shards32, tmp_path):
    run = tmp_path / "preempted"
    args = [*SMOKE, f"data={shards32}", f"run_dir={run}", "train.kimg=5", "log.snapshot_kimg=0.032"]
    proc = subprocess.Popen([*TRAIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err[-2000:]
    assert "preempted (SIGTERM)" in err
    nimg = load_checkpoint(run)["nimg"]
    assert 0 < nimg < 5000
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["kimg"] * 1000 == nimg  # the checkpoint is at the step the job stopped


def test_gradient_accumulation_keeps_the_global_batch(shards32, tmp_path):
    """accum=2: two half-size micro-batches per step; the same images are shown, the counters agree."""
    run = run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'acc'}", "train.accum=2", "train.kimg=0.064")
    final = json.loads((run / "final.json").read_text())["ranks"][0]
    assert final["nimg"] == 64 and final["iteration"] == 4
    assert final["data_step"] == 8  # two micro-batches of 8 per D step
    state = load_checkpoint(run)
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_a_run_dir_that_cannot_be_a_folder_fails_in_one_line(shards32, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, match in ((afile, "is a file, not a folder"), (afile / "run", "cannot be written"),
                       (Path("/proc/dist_gan_run"), "cannot be written")):
        with pytest.raises(UserError, match=match):
            run_inprocess(f"data={shards32}", f"run_dir={bad}", "train.kimg=0.032")


def test_resume_into_other_networks_names_the_keys_before_loading(shards32, tmp_path):
    run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.kimg=0.032", "model.ngf=8")
    with pytest.raises(UserError, match=r"networks differ \(model.ngf=8 there, 16 here\); resume with model.ngf=8,"):
        run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.kimg=0.064", "model.ngf=16", "resume=auto")
    # the advice works: the same keys resume
    run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.kimg=0.064", "model.ngf=8", "resume=auto")


def test_stale_checkpoint_temps_of_dead_writers_are_removed(shards32, tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run_dir / "checkpoints" / f".ckpt-000000032.pt.tmp-{int(dead.stdout)}"
    live = run_dir / "checkpoints" / f".ckpt-000000064.pt.tmp-{os.getpid()}"  # a writer that still runs: kept
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"in progress")
    run_inprocess(f"data={shards32}", f"run_dir={run_dir}", "train.kimg=0.032")
    assert not stale.exists() and live.exists()


def test_lengths_of_zero_are_refused():
    for key in ("train.kimg=0", "log.snapshot_kimg=0", "log.sample_kimg=-1"):
        with pytest.raises(UserError, match="must be positive"):
            load_config([*SMOKE, key])


def test_unreadable_shards_end_the_run_with_one_line_not_a_hang(shards32, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards32, bad)
    for shard in bad.glob("shard-*.tar"):
        shard.write_bytes(b"")
    proc = subprocess.run([*TRAIN, *SMOKE, f"data={bad}", f"run_dir={tmp_path / 'r'}", "train.kimg=0.3", "loader.workers=1"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unreadable samples or shards in a row" in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_terminal_the_log_gets_plain_progress_lines(shards32, tmp_path):
    """SLURM logs and pipes get no redrawn bar but readable lines, the last one at the end of the run;
    deepspeed is not imported (it announced its accelerator on every run) unless backend=deepspeed."""
    proc = subprocess.run([*TRAIN, *SMOKE, "log.progress=true", f"data={shards32}",
                           f"run_dir={tmp_path / 'r'}", "train.kimg=0.064"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train ")]
    assert lines and lines[-1].startswith("train 0.06/0.064 kimg") and "left" in lines[-1]
    assert "\r" not in proc.stderr and "Setting accelerator" not in proc.stderr + proc.stdout


class ScriptedFid:
    """An FID probe that returns the given values in turn: the loop's bookkeeping, without Inception."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def start(self, rank, world, device):
        return "scripted FID"

    def measure(self, G, nz):
        self.calls.append(G.training)
        return self.values[len(self.calls) - 1]


def fid_run(*args: str, values=(), probe=None) -> tuple:
    probe = probe or ScriptedFid(values)
    return train(load_config([*SMOKE, *args]), fid=probe), probe


def test_fid_marks_log_each_value_and_best_pt_keeps_the_lowest_past_pruning(shards32, tmp_path):
    common = [f"data={shards32}", "log.fid_kimg=0.032", "log.keep=1"]
    run, probe = fid_run(*common, f"run_dir={tmp_path / 'a'}", values=[5.0, 3.0, 4.0, 2.0, 6.0])
    assert len(probe.calls) == 5  # at 32, 64, 96, 128 and 160 images
    records = [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if "fid" in r]
    assert [(r["kimg"], r["fid"], r["best_fid"]) for r in records] == [
        (0.032, 5.0, 5.0), (0.064, 3.0, 3.0), (0.096, 4.0, 3.0), (0.128, 2.0, 2.0), (0.16, 6.0, 2.0)]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt-000000160.pt"]  # keep=1 pruned the rest
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["nimg"], best["best_fid"], best["best_kimg"]) == (128, 2.0, 0.128)
    last = load_checkpoint(run)
    assert (last["best_fid"], last["best_kimg"]) == (2.0, 0.128)
    assert (run / "fid_curve.png").stat().st_size > 0
    # best.pt holds the weights of its moment: not the final ones
    assert not states_equal(best["G_ema"], last["G_ema"])


def test_g_only_steps_repeat_no_mark(shards32, tmp_path):
    """2 G steps per D step: a G-only step shows D no reals, so it crosses no FID, sample or snapshot mark; the
    marks fall where a 1:1 run puts them, once each, and none at 0 kimg."""
    common = [f"data={shards32}", "log.fid_kimg=0.032", "log.sample_kimg=0.064", "log.snapshot_kimg=0.064",
              "optim.g_steps=2"]
    run, probe = fid_run(*common, f"run_dir={tmp_path / 'a'}", values=[5.0, 3.0, 4.0, 2.0, 6.0])
    assert len(probe.calls) == 5
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records if "fid" in r] == [0.032, 0.064, 0.096, 0.128, 0.16]
    assert [p.name for p in sorted((run / "samples").glob("fakes-*.png"))] == [
        "fakes-000000064.png", "fakes-000000128.png", "fakes-000000160.png"]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "ckpt-000000064.pt", "ckpt-000000128.pt", "ckpt-000000160.pt"]
    assert records[-1]["step"] == 2 * 160 // load_config([*SMOKE]).train.batch  # two iterations per D step


def test_the_best_fid_so_far_survives_resume(shards32, tmp_path):
    common = [f"data={shards32}", "log.fid_kimg=0.032", "log.snapshot_kimg=0.096"]
    run, _ = fid_run(*common, f"run_dir={tmp_path / 'a'}", "train.kimg=0.096", values=[5.0, 3.0, 4.0])
    # worse values after the resume: best.pt and the counters still name the 3.0 at 64 images
    run, probe = fid_run(*common, f"run_dir={tmp_path / 'a'}", "resume=auto", values=[7.0, 8.0])
    assert len(probe.calls) == 2
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["nimg"], best["best_fid"]) == (64, 3.0)
    assert (load_checkpoint(run)["best_fid"], load_checkpoint(run)["best_kimg"]) == (3.0, 0.064)


def test_fid_kimg_without_a_tracker_says_so_and_trains(shards32, tmp_path, capsys):
    run = run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'a'}", "log.fid_kimg=0.032")
    assert "no FID tracker was given" in capsys.readouterr().err
    assert not (run / "checkpoints" / "best.pt").exists()
    assert load_checkpoint(run)["nimg"] == 160


def test_a_loss_key_the_chosen_loss_ignores_is_named_at_start_up(shards32, tmp_path, capsys):
    run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'a'}", "loss.name=hinge", "loss.real_label=0.9", "train.kimg=0.032")
    assert "loss.real_label=0.9 has no effect with loss.name=hinge; only bce, lsgan read it" in capsys.readouterr().err
    run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'b'}", "loss.real_label=0.9", "train.kimg=0.032")
    assert "has no effect" not in capsys.readouterr().err


class SnapshotFid(ScriptedFid):
    """Keeps a copy of the generator it is asked to score, buffers included."""

    def measure(self, G, nz):
        self.seen = {k: v.clone() for k, v in G.state_dict().items()}
        return super().measure(G, nz)


def bn_means(state: dict) -> list:
    return [k for k in state if k.endswith("running_mean")]


def test_ema_bn_recal_gives_g_ema_statistics_of_its_own_weights_for_fid_and_checkpoints(shards32, tmp_path):
    common = [f"data={shards32}", "loader.workers=1", "train.kimg=0.192", "log.snapshot_kimg=0.096",
              "train.ema_bn_recal=true", "train.ema_probes=[0.05]"]
    a, b = straight_and_resumed(tmp_path, *common)  # bit for bit across a resume, buffers included
    assert states_equal(a["G_ema_probes"]["0.05"], b["G_ema_probes"]["0.05"])
    stored, _ = load_generator(tmp_path / "a")
    refitted, _ = load_generator(tmp_path / "a", bn_recal=True)
    assert states_equal(stored.state_dict(), refitted.state_dict())  # what eval --bn-recal would compute
    probe_refitted, _ = load_generator(tmp_path / "a", ema_kimg=0.05, bn_recal=True)
    assert states_equal(a["G_ema_probes"]["0.05"], probe_refitted.state_dict())
    keys = bn_means(a["G_ema"])
    assert keys and not any(torch.allclose(a["G_ema"][k], a["G"][k]) for k in keys)  # not G's statistics

    # the FID measures the refitted network
    run, probe = fid_run(f"data={shards32}", f"run_dir={tmp_path / 'c'}", "log.fid_kimg=0.16", "train.ema_bn_recal=true",
                         probe=SnapshotFid([1.0]))
    assert states_equal(probe.seen, load_checkpoint(run)["G_ema"])
    assert states_equal(probe.seen, load_generator(run, bn_recal=True)[0].state_dict())


def test_without_ema_bn_recal_g_ema_samples_with_g_statistics(shards32, tmp_path):
    run = run_inprocess(f"data={shards32}", f"run_dir={tmp_path / 'a'}", "train.kimg=0.064")
    state = load_checkpoint(run)
    keys = bn_means(state["G_ema"])
    assert keys and all(torch.equal(state["G_ema"][k], state["G"][k]) for k in keys)
