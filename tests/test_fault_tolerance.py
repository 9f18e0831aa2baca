"""Fault tolerance with 2 real gloo ranks: preemption of one rank, a killed rank, elastic world size.

* SIGTERM to one rank: both ranks agree at the next sync point, rank 0 checkpoints, both exit 0.
* SIGKILL of one rank: the launcher exits non-zero promptly (peer socket closed, or the
  ``train.collective_timeout_s`` timeout), every checkpoint on disk loads, resume=auto finishes.
* Elastic restart 2 -> 1 -> 2 ranks: the global batch and the recipe's learning rates are kept
  (the local batch doubles on 1 rank) and kimg continues.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import psutil
import torch

from conftest import REPO, SMOKE
from dist_gan.engine.checkpoint import atomic_save, list_checkpoints, load_checkpoint

TRAIN = str(REPO / "dist_gan" / "train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1"}
RECIPE_LR = 2e-4  # smoke.yaml: g_lr = d_lr


def launch_cmd(nproc: int, *args: str) -> List[str]:
    if nproc == 1:
        return [sys.executable, TRAIN, *SMOKE, *args]
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", TRAIN, *SMOKE, *args]


def start(nproc: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(launch_cmd(nproc, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def run(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(nproc, *args), capture_output=True, text=True, env=ENV, timeout=240)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not list_checkpoints(run_dir / "checkpoints"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process with RANK=rank among the launcher's children."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if TRAIN in child.cmdline() and child.environ().get("RANK") == str(rank):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"rank {rank} not found under the launcher")


def lrs(state: dict) -> List[float]:
    return [g["lr"] for key in ("opt_G", "opt_D") for g in state[key]["param_groups"]]


def test_sigterm_to_one_rank_then_elastic_restart_on_1_and_2_ranks(shards32, tmp_path):
    run_dir = tmp_path / "elastic"
    common = [f"data={shards32}", f"run_dir={run_dir}", "log.snapshot_kimg=0.032"]

    # 1. Two ranks; SIGTERM reaches rank 1 only (as when one node is preempted first).
    launcher = start(2, *common, "train.kimg=5")
    wait_for_checkpoint(run_dir, launcher)
    rank_process(launcher, 1).send_signal(signal.SIGTERM)
    err = launcher.communicate(timeout=120)[1]
    assert launcher.returncode == 0, err[-3000:]  # torchrun exits 0 only if both ranks did
    assert "preempted (peer)" in err  # rank 0 was not signalled: it learnt it at the sync point
    stopped = load_checkpoint(run_dir)
    nimg0 = stopped["nimg"]
    assert 0 < nimg0 < 5000 and stopped["world_size"] == 2 and len(stopped["rng_per_rank"]) == 2
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"]
    assert [r["nimg"] for r in final["ranks"]] == [nimg0, nimg0]  # the checkpoint is at the stop point
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["kimg"] * 1000 == nimg0

    # A stale learning rate in the checkpoint (e.g. a sqrt(world)-scaled one) must not survive a restart.
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    for key in ("opt_G", "opt_D"):
        for group in stopped[key]["param_groups"]:
            group["lr"] = 1.0
    atomic_save(stopped, newest)

    # 2. The "requeued" job gets one rank: same global batch (16/rank), same lrs, kimg continues.
    one = run(1, *common, "resume=auto", f"train.kimg={(nimg0 + 64) / 1000}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert f"resumed at {nimg0 / 1000:.2f} kimg" in one.stderr
    assert "1 rank(s) on cpu, global batch 16 (16/rank x 1)" in one.stderr
    state = load_checkpoint(run_dir)
    assert state["nimg"] == nimg0 + 64 and state["world_size"] == 1 and len(state["rng_per_rank"]) == 1
    assert lrs(state) == [RECIPE_LR, RECIPE_LR]

    # 3. Back on two ranks.
    two = run(2, *common, "resume=auto", f"train.kimg={(nimg0 + 128) / 1000}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"resumed at {(nimg0 + 64) / 1000:.2f} kimg" in two.stderr
    assert "2 rank(s) on cpu, global batch 16 (8/rank x 1)" in two.stderr
    state = load_checkpoint(run_dir)
    assert state["nimg"] == nimg0 + 128 and state["world_size"] == 2
    assert lrs(state) == [RECIPE_LR, RECIPE_LR]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"]
    assert [r["nimg"] for r in final["ranks"]] == [nimg0 + 128] * 2
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_sigkill_of_one_rank_ends_the_job_promptly_and_resume_finishes(shards32, tmp_path):
    run_dir = tmp_path / "killed"
    timeout_s = 30
    common = [f"data={shards32}", f"run_dir={run_dir}", "log.snapshot_kimg=0.032", "log.keep=2",
              f"train.collective_timeout_s={timeout_s}"]
    launcher = start(2, *common, "train.kimg=5")
    wait_for_checkpoint(run_dir, launcher)
    time.sleep(1.0)
    survivor, victim = rank_process(launcher, 0), rank_process(launcher, 1)
    t0 = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    err = launcher.communicate(timeout=timeout_s + 60)[1]
    elapsed = time.monotonic() - t0
    print(f"\nSIGKILL of rank 1 -> launcher exit {launcher.returncode} after {elapsed:.1f} s")
    assert launcher.returncode != 0
    assert elapsed < timeout_s + 60
    assert "SIGKILL" in err  # torchrun names the dead rank as the root cause
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE  # no orphan left behind

    kept = list_checkpoints(run_dir / "checkpoints")
    assert kept and all(load_checkpoint(p)["nimg"] > 0 for p in kept)  # every file on disk is whole
    last = load_checkpoint(run_dir)["nimg"]
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip().endswith("}")]
    assert records[-1]["kimg"] * 1000 - last <= 32  # lost at most one snapshot interval

    done = run(2, *common, "resume=auto", f"train.kimg={(last + 64) / 1000}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed at {last / 1000:.2f} kimg" in done.stderr
    assert load_checkpoint(run_dir)["nimg"] == last + 64
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"]


def rank_processes(launcher: subprocess.Popen) -> List[psutil.Process]:
    return [rank_process(launcher, rank) for rank in (0, 1)]


def assert_stopped_at_checkpoint(run_dir: Path) -> int:
    """Both ranks stopped together and rank 0's checkpoint holds the stop point; returns its nimg."""
    nimg = load_checkpoint(run_dir)["nimg"]
    final = json.loads((run_dir / "final.json").read_text())
    assert 0 < nimg < 5000 and final["ranks_in_sync"]
    assert [r["nimg"] for r in final["ranks"]] == [nimg, nimg]
    return nimg


def test_sigusr1_to_a_launcher_with_pet_signals_checkpoints_and_exits_138(shards32, tmp_path):
    """README: with PET_SIGNALS_TO_HANDLE the launcher forwards the signal; ranks checkpoint, it exits 128+10."""
    run_dir = tmp_path / "forwarded"
    env = {**ENV, "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
    launcher = subprocess.Popen(launch_cmd(2, f"data={shards32}", f"run_dir={run_dir}", "log.snapshot_kimg=0.032",
                                           "train.kimg=5"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)
    wait_for_checkpoint(run_dir, launcher)
    launcher.send_signal(signal.SIGUSR1)
    err = launcher.communicate(timeout=120)[1]
    assert launcher.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert "preempted (SIGUSR1)" in err
    assert_stopped_at_checkpoint(run_dir)


def test_a_signal_that_kills_a_bare_launcher_leaves_no_orphan_ranks(shards32, tmp_path):
    """Without PET_SIGNALS_TO_HANDLE, SIGUSR1 to the group kills the launcher alone (its ranks run in their
    own session); the kernel signals each rank as its parent dies; they checkpoint and exit."""
    run_dir = tmp_path / "orphans"
    env = {k: v for k, v in ENV.items() if k != "PET_SIGNALS_TO_HANDLE"}
    launcher = subprocess.Popen(launch_cmd(2, f"data={shards32}", f"run_dir={run_dir}", "log.snapshot_kimg=0.032",
                                           "train.kimg=5"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env, start_new_session=True)
    wait_for_checkpoint(run_dir, launcher)
    ranks = rank_processes(launcher)
    os.killpg(launcher.pid, signal.SIGUSR1)
    try:
        err = launcher.communicate(timeout=120)[1]  # the ranks share the pipe: EOF once they are gone too
    finally:
        alive = psutil.wait_procs(ranks, timeout=5)[1]
        for proc in alive:
            proc.kill()
    assert launcher.returncode == -signal.SIGUSR1
    assert not alive, "ranks outlived their launcher"
    assert "preempted (launcher gone)" in err, err[-3000:]
    assert_stopped_at_checkpoint(run_dir)
