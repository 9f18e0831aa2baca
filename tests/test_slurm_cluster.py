"""slurm.py against a real one-node SLURM (slurm/local-cluster.sh): submit, preempt, requeue, resume, evaluate.

The cluster is slurmctld + slurmd + slurmdbd (over MariaDB) + munged on this machine (Debian's slurm-wlm).
`.ci/run` starts it; the fixture starts it too when a developer runs pytest alone, and stops it afterwards
only then. Job states are read the ways a user reads them: squeue and scontrol while the job lives, sacct after.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "slurm" / "local-cluster.sh"
CLUSTER_DIR = Path(os.environ.get("DIST_GAN_SLURM_DIR", "/tmp/dist-gan-slurm"))


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running local cluster."""
    was_up = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not was_up:
        proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    conf = str(CLUSTER_DIR / "slurm.conf")
    yield {**os.environ, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not was_up:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _dist_gan(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dist_gan", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=cwd)


def _job_id(stdout: str) -> str:
    words = stdout.split()
    return words[words.index("job") + 1].rstrip(":")


# Pending reasons that waiting cannot cure on a one-node cluster (more cores or memory than the node has).
NEVER_RUNS = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "Resources_Unavailable"}


def _state(env, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True, env=env).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait(env, job: str, until, timeout: float = 300) -> list:
    """Poll squeue + scontrol every 0.5 s until ``until(state)``; returns every JobState seen, in order."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        st = _state(env, job)
        if st and (not seen or seen[-1] != st["JobState"]):
            seen.append(st["JobState"])
        assert st.get("Reason") not in NEVER_RUNS, f"job {job} can never start here: {st['Reason']}"
        if st and until(st):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"job {job} stuck: states {seen}, now {_state(env, job)}")


def _squeue_state(env, job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env).stdout.strip()


def _sacct(env, job: str, final: str = "COMPLETED", timeout: float = 30) -> list:
    """Every record sacct keeps of ``job`` (requeued runs included), once the last one reads ``final``.

    slurmctld reports to slurmdbd asynchronously, so the end state may arrive a moment after scontrol's."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-j", job, "-X", "-D", "-n", "-P", "-o", "JobID,State,ExitCode"],
                             capture_output=True, text=True, env=env)
        rows = [line.split("|") for line in out.stdout.splitlines() if line]
        if rows and rows[-1][1] == final or time.time() > deadline:
            return rows
        time.sleep(0.5)


def test_submit_trains_two_cpu_ranks_to_the_end(cluster, shards32, tmp_path):
    run = tmp_path / "runs" / "smoke"
    proc = _dist_gan(cluster, "slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={run}",
                     "loader.workers=0", "train.kimg=0.32", "--cpu-procs", "2", "--time", "00:10:00", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = _job_id(proc.stdout + proc.stderr)
    states = _wait(cluster, job, lambda s: s["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = (run / f"slurm-{job}.out").read_text()
    assert states[-1] == "COMPLETED", log[-3000:]
    assert "RUNNING" in states or "COMPLETING" in states
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"] and final["ranks"][0]["nimg"] == 320
    assert "1 node(s) x 2 process(es)" in log
    assert _sacct(cluster, job) == [[job, "COMPLETED", "0:0"]]


def test_usr1_checkpoints_requeues_and_resumes_to_the_end(cluster, shards32, tmp_path):
    run = tmp_path / "runs" / "pre"
    proc = _dist_gan(cluster, "slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={run}",
                     "loader.workers=0", "train.kimg=3", "log.snapshot_kimg=0.5", "--cpu-procs", "2",
                     "--time", "00:10:00", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = _job_id(proc.stdout + proc.stderr)
    _wait(cluster, job, lambda s: s["JobState"] == "RUNNING")
    assert _squeue_state(cluster, job) == "RUNNING"
    deadline = time.time() + 180
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline, "training never logged"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=cluster)
    states = _wait(cluster, job, lambda s: s["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                   and int(s.get("Restarts", 0)) >= 1, timeout=420)
    log = (run / f"slurm-{job}.out").read_text()
    assert states[-1] == "COMPLETED", (states, log[-3000:])
    assert "preemption signal" in log and "requeueing job" in log and "(restart 1)" in log
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"] and final["ranks"][0]["nimg"] == 3008  # 3 kimg in batches of 16
    stopped = re.search(r"preempted \(SIGUSR1\): checkpoint written at ([0-9.]+) kimg", log)
    resumed = re.search(r"resumed at ([0-9.]+) kimg", log)
    assert stopped and resumed and float(stopped.group(1)) == float(resumed.group(1)) > 0  # continued, not restarted
    assert [state for _, state, _ in _sacct(cluster, job)] == ["REQUEUED", "COMPLETED"]


def test_eval_job_splits_the_samples_over_two_processes(cluster, shards32, tmp_path):
    run = tmp_path / "runs" / "ev"
    proc = subprocess.run([sys.executable, str(REPO / "dist_gan" / "train.py"), "recipe=smoke", f"data={shards32}",
                           f"run_dir={run}", "loader.workers=0"], capture_output=True, text=True, env=cluster, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "ev-report"
    proc = _dist_gan(cluster, "slurm", "eval", str(run), "--ref", str(shards32), "--fid", "-n", "37", "--out", str(out),
                     "--cpu", "--procs", "2", "--cpus", "2", "--time", "00:10:00", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = _job_id(proc.stdout + proc.stderr)
    states = _wait(cluster, job, lambda s: s["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = (out / f"slurm-{job}.out").read_text()
    assert states[-1] == "COMPLETED", log[-3000:]
    assert "2 process(es)" in log and "torchrun" in out.with_name("ev-report.sbatch").read_text()
    assert _sacct(cluster, job) == [[job, "COMPLETED", "0:0"]]
    report = json.loads((out / "report.json").read_text())
    assert report["figures"]["fid_n_gen"] == 37 and report["figures"]["fid"] > 0
    assert report["checkpoint"]["nimg"] == 160


def test_start_brings_back_a_daemon_that_died_and_keeps_the_others(cluster):
    """A node whose slurmd died: `start` restarts slurmd alone (it used to restart the controller as well)."""
    ctld = (CLUSTER_DIR / "slurmctld.pid").read_text().strip()
    slurmd = int((CLUSTER_DIR / "slurmd.pid").read_text())
    os.kill(slurmd, 9)
    for _ in range(40):
        try:
            os.kill(slurmd, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (CLUSTER_DIR / "slurmctld.pid").read_text().strip() == ctld  # the controller kept, not restarted
    assert int((CLUSTER_DIR / "slurmd.pid").read_text()) != slurmd
    assert subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster).stdout.split() == ["idle"]
