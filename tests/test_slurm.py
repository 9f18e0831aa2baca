"""SLURM scripts rendered and checked, and run under stub sbatch/srun/scontrol where one machine's real
SLURM cannot go: 2 and 3 "nodes" (node ranks, the head node, per-node arguments, preemption across nodes).
Everything one node can show runs against the real cluster in test_slurm_cluster.py.

The stubs (written into tmp_path/bin) behave like the real tools where the scripts
depend on them: ``sbatch`` runs the script with bash and SLURM_* set (exec, so the test
can signal the batch shell as slurmctld would), ``srun`` starts its command once per
node with that node's SLURM_NODEID and relays signals, ``scontrol show hostnames``
lists 127.0.0.1 per node and ``scontrol requeue`` is logged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from conftest import REPO
from dist_gan import slurm
from dist_gan.cli import app
from dist_gan.engine.checkpoint import list_checkpoints, load_checkpoint

SBATCH = r"""#!/usr/bin/env bash
# stub sbatch: run the batch script here with bash (exec: same PID, so a test can signal
# it as slurmctld would), SLURM_* set from its #SBATCH lines; the log goes to --output.
parsable=0
while [[ $# -gt 0 && "$1" == -* ]]; do [[ "$1" == --parsable ]] && parsable=1; shift; done
script="$(realpath "$1")"; shift
opt() { sed -n "s/^#SBATCH --$1=//p" "$script" | head -n1; }
export SLURM_JOB_ID="${STUB_JOB_ID:-4242}"
export SLURM_NNODES="$(opt nodes)"; SLURM_NNODES="${SLURM_NNODES:-1}"
export SLURM_JOB_NUM_NODES="$SLURM_NNODES"
export SLURM_JOB_NODELIST="stubnode[0-$((SLURM_NNODES - 1))]"
export SLURM_CPUS_PER_TASK="$(opt cpus-per-task)"
export SLURM_SUBMIT_DIR="$PWD"
export SLURM_RESTART_COUNT="${SLURM_RESTART_COUNT:-0}"
echo "sbatch $script $*" >> "$STUB_LOG"
dir="$(opt chdir)"; [[ -n "$dir" ]] && cd "$dir"
out="$(opt output)"; out="${out:-slurm-%j.out}"; out="${out//%j/$SLURM_JOB_ID}"; out="${out//%x/stub}"
[[ $parsable == 1 ]] && echo "$SLURM_JOB_ID" || echo "Submitted batch job $SLURM_JOB_ID"
exec bash "$script" "$@" >> "$out" 2>&1
"""

SRUN = r"""#!/usr/bin/env bash
# stub srun: the command once per node, in the background, with that node's SLURM_NODEID;
# signals are relayed to every task (as srun does); exits with the first failure.
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
pids=()
for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NTASKS="${SLURM_NNODES:-1}" SLURMD_NODENAME="stubnode$i" "$@" &
    pids+=($!)
done
echo "srun ${#pids[@]} task(s)" >> "$STUB_LOG"
for s in USR1 USR2 TERM INT; do trap "kill -$s ${pids[*]} 2>/dev/null" $s; done
rc=0
for i in "${!pids[@]}"; do
    p=${pids[$i]}
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done
    wait "$p"; r=$?
    echo "srun task $i exit $r" >> "$STUB_LOG"
    [[ $rc == 0 ]] && rc=$r
done
exit $rc
"""

SCONTROL = r"""#!/usr/bin/env bash
# stub scontrol: `show hostnames` -> 127.0.0.1 once per node; `requeue ID` is logged.
case "$1 ${2:-}" in
    "show hostnames") for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do echo 127.0.0.1; done ;;
    requeue*) echo "requeue $2" >> "$STUB_LOG" ;;
    *) echo "stub scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""

# For the plumbing test only: records what each node would launch instead of training.
# One write per line: the nodes run at once, and three appends per line used to interleave.
FAKE_LAUNCHER = r"""#!/usr/bin/env bash
line="node=${SLURM_NODEID}$(printf ' [%s]' "$@")"
echo "$line" >> "$STUB_LOG"
"""

SMOKE_ARGS = ["recipe=smoke", "loader.workers=0", "log.progress=false", "log.tensorboard=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    """PATH with stub sbatch/srun/scontrol first; CPU gloo, one process per "node". Returns the stub log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        write_exe(bin_dir / name, text)
    log = tmp_path / "stub.log"
    log.touch()
    for key, value in {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log), "ACCELERATE_USE_CPU": "1",
        "DIST_GAN_GPUS_PER_NODE": "1", "DIST_GAN_MAIN_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "60",
    }.items():
        monkeypatch.setenv(key, value)
    return log


class _Result:
    def __init__(self, res):
        self.exit_code, self.raw = res.exit_code, res.output
        self.output = " ".join(res.output.split())  # rich wraps messages at 80 columns


def cli(*args: str) -> _Result:
    return _Result(CliRunner().invoke(app, list(args)))


# ------------------------------------------------------------ rendering
def test_checked_in_scripts_are_the_template(repo_root):
    for name, text in slurm.static_scripts().items():
        assert (repo_root / "slurm" / name).read_text() == text, f"slurm/{name} is stale: rewrite it from dist_gan.slurm.static_scripts()"
    assert (repo_root / "slurm" / "README.md").is_file()


def test_scripts_are_valid_bash_with_the_cluster_essentials(repo_root):
    for name in ("train.sbatch", "train_multinode.sbatch", "eval.sbatch"):
        subprocess.run(["bash", "-n", str(repo_root / "slurm" / name)], check=True)
    text = (repo_root / "slurm" / "train_multinode.sbatch").read_text()
    for needle in ("#SBATCH --ntasks-per-node=1", "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue",
                   'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1', 'scontrol requeue "$SLURM_JOB_ID"',
                   "trap forward_preemption USR1 TERM", "resume=auto", "--rdzv_backend"):
        assert needle in text, needle
    # $SLURM_NODEID sits inside the single-quoted `bash -c '...'`: it expands on each node.
    launch = re.search(r"bash -c '(.*?)'", text, re.S).group(1)
    assert '--machine_rank "$SLURM_NODEID"' in launch and "--num_machines" in launch
    code = [line for line in text.replace(launch, "").splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "SLURM_NODEID" in line]  # never expanded on the batch host


def test_submit_dry_run_renders_the_recipe(shards32, tmp_path):
    res = cli("slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.kimg=3",
              "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "12:00:00", "--dry-run")
    assert res.exit_code == 0, res.raw
    out = res.raw
    for needle in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00",
                   "#SBATCH --cpus-per-task=4", "recipe=smoke", "train.kimg=3", f"data={shards32}",
                   f"run_dir={tmp_path / 'r'}", f"--output={tmp_path / 'r'}/slurm-%j.out", "resume=auto"):
        assert needle in out, needle
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_eval_dry_run_asks_for_the_cores_given(tmp_path):
    default = cli("slurm", "eval", "runs/x", "--fid", "--out", str(tmp_path / "ev"), "--procs", "3", "--dry-run")
    assert default.exit_code == 0, default.raw
    assert "#SBATCH --cpus-per-task=6" in default.raw and "#SBATCH --gpus-per-node=3" in default.raw
    small = cli("slurm", "eval", "runs/x", "--fid", "--out", str(tmp_path / "ev"), "--procs", "2", "--cpus", "2",
                "--cpu", "--dry-run")
    assert small.exit_code == 0, small.raw
    assert "#SBATCH --cpus-per-task=2" in small.raw and "#SBATCH --gpus-per-node" not in small.raw
    too_few = cli("slurm", "eval", "runs/x", "--fid", "--out", str(tmp_path / "ev"), "--procs", "4", "--cpus", "2", "--dry-run")
    assert too_few.exit_code == 2 and "--cpus 2 is fewer than --procs 4" in too_few.output
    assert not (tmp_path / "ev").exists()


def test_submit_validates_before_rendering(shards32, tmp_path):
    bad = cli("slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={tmp_path / 'r'}", "train.lr=1", "--dry-run")
    assert bad.exit_code == 2 and "unknown recipe key 'train.lr'" in bad.output and "#SBATCH" not in bad.output
    odd = cli("slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={tmp_path / 'r'}",
              "--nodes", "3", "--gpus-per-node", "2", "--dry-run")
    assert odd.exit_code == 2
    assert "train.batch=16 does not divide over 3 node(s) x 2 GPU(s) = 6 ranks" in odd.output
    assert "train.batch=12 or 18" in odd.output
    resume = cli("slurm", "submit", "recipe=smoke", f"data={shards32}", "resume=/x/ckpt.pt", "--dry-run")
    assert resume.exit_code == 2 and "always passes resume=auto" in resume.output
    assert cli("slurm", "submit", "recipe=smoke", f"data={shards32}", "--time", "soon", "--dry-run").exit_code == 2


def test_submit_without_sbatch_says_so(shards32, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = cli("slurm", "submit", "recipe=smoke", f"data={shards32}", f"run_dir={tmp_path / 'r'}", "--nodes", "2", "--gpus-per-node", "1")
    assert res.exit_code == 2 and "`sbatch` is not on PATH" in res.output
    assert (tmp_path / "r.sbatch").is_file()  # written next to the run dir, ready to copy


def test_static_script_passes_node_rank_and_args_per_node(stubs, tmp_path, repo_root):
    write_exe(tmp_path / "bin" / "accelerate", FAKE_LAUNCHER)
    script = tmp_path / "job.sbatch"  # the checked-in multinode script, 3 nodes
    script.write_text((repo_root / "slurm" / "train_multinode.sbatch").read_text().replace("--nodes=2", "--nodes=3")
                      .replace("--output=slurm-%x-%j.out", f"--output={tmp_path}/job-%j.out"))
    proc = subprocess.run(["sbatch", str(script), "recipe=smoke", "data=/d/my shards", "run_dir=/r"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, (tmp_path / "job-4242.out").read_text()
    lines = sorted(line for line in stubs.read_text().splitlines() if line.startswith("node="))
    assert len(lines) == 3
    port = os.environ["DIST_GAN_MAIN_PORT"]
    for rank, line in enumerate(lines):
        assert line.startswith(f"node={rank} [launch] [--multi_gpu]")
        for flags in ("[--num_machines] [3]", f"[--machine_rank] [{rank}]", "[--num_processes] [3]",
                      f"[--main_process_ip] [127.0.0.1] [--main_process_port] [{port}]", "[--rdzv_backend] [static]",
                      "[-m] [dist_gan.train] [recipe=smoke] [data=/d/my shards] [run_dir=/r] [resume=auto]"):
            assert flags in line, (flags, line)


# ------------------------------------------------------------ end to end: 2 "nodes", preempted, requeued
def _children_named(pid: int, needle: str):
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if needle in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def test_two_nodes_train_get_preempted_requeue_and_finish(stubs, shards32, tmp_path):
    run = tmp_path / "runs" / "mn"
    args = [*SMOKE_ARGS, f"data={shards32}", f"run_dir={run}", "train.kimg=0.48", "log.snapshot_kimg=0.032"]
    # `dist-gan slurm submit` for real: validate, render, write runs/mn.sbatch, call (stub) sbatch.
    submit = subprocess.Popen(
        [sys.executable, "-c", "from dist_gan.cli import app; app()", "slurm", "submit", *args,
         "--nodes", "2", "--gpus-per-node", "1", "--time", "00:10:00"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    script = run.with_name("mn.sbatch")
    deadline = time.time() + 180
    while not list_checkpoints(run / "checkpoints"):
        assert submit.poll() is None, submit.communicate()[1] + (run / "slurm-4242.out").read_text()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    batch_shell = _children_named(submit.pid, script.name)
    assert len(batch_shell) == 1
    batch_shell[0].send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    out, err = submit.communicate(timeout=150)
    job_log = (run / "slurm-4242.out").read_text()
    assert submit.returncode == 0, err + job_log
    assert "submitted job 4242" in err
    assert "preempted (SIGUSR1)" in job_log and "requeueing job 4242" in job_log
    assert "requeue 4242" in stubs.read_text()
    stopped = load_checkpoint(run)["nimg"]
    assert 0 < stopped < 480
    final = json.loads((run / "final.json").read_text())  # both ranks got through the clean exit path
    assert final["world_size"] == 2 and final["ranks_in_sync"]
    assert [r["nimg"] for r in final["ranks"]] == [stopped, stopped]

    # The requeued job: the same script again, as SLURM reruns it.
    env = {**os.environ, "SLURM_RESTART_COUNT": "1"}
    proc = subprocess.run(["sbatch", str(script)], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    job_log = (run / "slurm-4242.out").read_text()
    assert proc.returncode == 0, job_log[-4000:]
    assert f"resumed at {stopped / 1000:.2f} kimg" in job_log
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"], final
    assert [r["nimg"] for r in final["ranks"]] == [480, 480]
    assert stubs.read_text().count("requeue 4242") == 1
    assert all(load_checkpoint(p)["nimg"] > 0 for p in list_checkpoints(run / "checkpoints"))
