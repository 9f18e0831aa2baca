"""SLURM batch scripts for training, rendered from a recipe, and ``sbatch`` submission.

One template makes every training script: ``slurm/train.sbatch`` (one node) and
``slurm/train_multinode.sbatch`` (several nodes) are this template rendered with no
recipe baked in (``static_scripts()``; a test keeps the files and the template equal),
and ``dist-gan slurm submit`` renders it with the recipe's arguments, the node and GPU
counts and the partition/time limit filled in.

What the script does on the cluster:

* one task per node (``--ntasks-per-node=1``); ``srun`` starts ``accelerate launch`` on
  every node, and each node's ``--machine_rank`` is *its own* ``$SLURM_NODEID``: the
  command is single-quoted inside ``srun bash -c '...'``, so it expands on the node,
  not on the batch host;
* the head node is the first of ``scontrol show hostnames "$SLURM_JOB_NODELIST"``, the
  rendezvous is ``static`` (every node knows its rank from SLURM; ``c10d`` needs the
  head's store to be first, which a single test box cannot guarantee);
* preemption: ``--signal=B:USR1@120`` signals the batch shell two minutes before the
  end; its trap forwards USR1 to ``srun`` (srun relays signals to its tasks), the
  launcher forwards it to the training processes (``PET_SIGNALS_TO_HANDLE`` adds
  SIGUSR1 to torchrun's list, ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` gives them time to
  write the checkpoint), the ranks agree at their next sync point, rank 0 writes a
  checkpoint, and the script runs ``scontrol requeue $SLURM_JOB_ID``. ``resume=auto``
  is always on the command line, so the requeued job continues where it stopped.

Environment knobs (tests use them; a real cluster needs none of them):
``DIST_GAN_GPUS_PER_NODE`` (processes per node), ``DIST_GAN_MAIN_PORT``,
``DIST_GAN_RDZV_BACKEND`` (static | c10d), ``DIST_GAN_ACCELERATE_ARGS`` (extra launcher
flags), ``ACCELERATE_USE_CPU=1`` (passed through untouched: gloo on CPU).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig

from dist_gan.config import load_config, parse_overrides
from dist_gan.data.remote import is_remote
from dist_gan.errors import UserError

PREEMPT_NOTICE_S = 120  # SIGUSR1 this long before the time limit
SHUTDOWN_GRACE_S = 100  # how long the launcher lets the ranks checkpoint before SIGKILL
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


@dataclass
class BatchJob:
    """What every batch script of ours asks SLURM for, whatever it runs."""

    time: str = "24:00:00"
    partition: Optional[str] = None
    cpus_per_task: int = 24
    output: str = "slurm-%x-%j.out"
    chdir: Optional[str] = None
    setup: str = ""
    cpu: bool = False  # processes on CPU cores (gloo), no GPUs asked for

    def optional_lines(self) -> Dict[str, str]:
        """The ``#SBATCH`` lines only some jobs have: partition and working directory."""
        return {"partition": f"#SBATCH --partition={self.partition}\n" if self.partition else "",
                "chdir": f"#SBATCH --chdir={self.chdir}\n" if self.chdir else ""}


@dataclass
class TrainJob(BatchJob):
    """What one training script needs; ``train_args`` empty means "from the sbatch command line"."""

    nodes: int = 1
    gpus_per_node: int = 8  # with ``cpu``: processes per node
    job_name: str = "dist-gan"
    train_args: List[str] = field(default_factory=list)


_HEADER = """\
#!/usr/bin/env bash
{title}
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
{gpus}#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --time={time}
{partition}#SBATCH --signal=B:USR1@{notice}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={output}
{chdir}"""

_BODY = r"""
# Preemption / time limit: SLURM sends USR1 to this shell {notice} s before the end; the trap
# below forwards it to every rank, rank 0 writes a checkpoint, and the job requeues itself.
# resume=auto is always passed, so the requeued job (and any re-submission) continues.
set -uo pipefail

{args_block}
TRAIN_ARGS+=( "$@" resume=auto )

{setup}{cpu}
export NNODES="${{SLURM_NNODES:-{nodes}}}"
export GPUS_PER_NODE="${{DIST_GAN_GPUS_PER_NODE:-{gpus_per_node}}}"
export HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
export MAIN_PORT="${{DIST_GAN_MAIN_PORT:-$(( 20000 + ${{SLURM_JOB_ID:-0}} % 20000 ))}}"
export RDZV_BACKEND="${{DIST_GAN_RDZV_BACKEND:-static}}"
export DIST_GAN_ACCELERATE_ARGS="${{DIST_GAN_ACCELERATE_ARGS:-}}"
# torchrun (under accelerate launch) forwards these signals to the training processes and
# waits this long for their checkpoint before it kills them.
export PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${{TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-{grace}}}"
echo "dist_gan: job ${{SLURM_JOB_ID:-?}} (restart ${{SLURM_RESTART_COUNT:-0}}): $NNODES node(s) x $GPUS_PER_NODE process(es), head $HEAD_NODE:$MAIN_PORT"

PREEMPTED=0
SRUN_PID=""
forward_preemption() {{
    PREEMPTED=1
    echo "dist_gan: preemption signal; asking every rank to checkpoint and stop"
    if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}}
trap forward_preemption USR1 TERM

# One task per node. The single quotes matter: $SLURM_NODEID expands on each node.
srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    ${{SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK}} \
    bash -c 'exec accelerate launch --multi_gpu \
        --num_machines "$NNODES" --machine_rank "$SLURM_NODEID" \
        --num_processes "$(( NNODES * GPUS_PER_NODE ))" \
        --main_process_ip "$HEAD_NODE" --main_process_port "$MAIN_PORT" \
        --rdzv_backend "$RDZV_BACKEND" --mixed_precision no --dynamo_backend no \
        $DIST_GAN_ACCELERATE_ARGS \
        -m dist_gan.train "$@"' dist-gan-node "${{TRAIN_ARGS[@]}}" &
SRUN_PID=$!
while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID"; done  # a trapped signal interrupts wait
wait "$SRUN_PID"
rc=$?

if [ "$PREEMPTED" = 1 ]; then
    echo "dist_gan: stopped at a checkpoint (launcher exit $rc); requeueing job ${{SLURM_JOB_ID:-?}}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$rc"
"""

_EVAL = r"""#!/usr/bin/env bash
# dist_gan evaluation (FID/KID/IS, face detectability, leak check) on one node.
#   sbatch slurm/eval.sbatch RUN_OR_CHECKPOINT --ref SHARDS --out OUT --fid --kid [-n 10000]
# Several GPUs (--gpus-per-node=K) split the samples over K processes (torchrun, gloo);
# the report is identical to a single-process run.
#SBATCH --job-name=dist-gan-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
{gpus}#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
{partition}#SBATCH --output={output}
{chdir}set -euo pipefail

{setup}{cpu}PROCS="${{DIST_GAN_GPUS_PER_NODE:-${{SLURM_GPUS_ON_NODE:-{procs}}}}}"
PYTHON="${{DIST_GAN_PYTHON:-python}}"
{args_block}
echo "dist_gan eval: job ${{SLURM_JOB_ID:-?}}, $PROCS process(es): ${{EVAL_ARGS[*]}} $*"
if [ "$PROCS" -gt 1 ]; then
    # torchrun's own parser would take --n: spell the sample count -n.
    exec srun --ntasks=1 torchrun --standalone --nproc_per_node "$PROCS" -m dist_gan eval "${{EVAL_ARGS[@]}}" "$@"
fi
exec srun --ntasks=1 "$PYTHON" -m dist_gan eval "${{EVAL_ARGS[@]}}" "$@"
"""


def _title(job: TrainJob) -> str:
    if job.train_args:
        return f"# dist_gan training, rendered by `dist-gan slurm submit`: {job.nodes} node(s) x {job.gpus_per_node} GPU(s)."
    if job.nodes == 1:
        usage = "sbatch slurm/train.sbatch recipe=bigbatch data=SHARDS run_dir=runs/NAME [key=value ...]"
        what = "one node, all its GPUs (edit --gpus-per-node)"
    else:
        usage = "sbatch --nodes=N slurm/train_multinode.sbatch recipe=bigbatch data=SHARDS run_dir=runs/NAME [key=value ...]"
        what = "N nodes x G GPUs, one launcher task per node (edit --nodes / --gpus-per-node)"
    return (f"# dist_gan training: {what}.\n#   {usage}\n"
            "# Or let `dist-gan slurm submit` render this script with the recipe checked first.")


def render_train(job: TrainJob) -> str:
    """The batch script for ``job`` (bash)."""
    if job.train_args:
        lines = "\n".join(f"    {shlex.quote(a)}" for a in job.train_args)
        args_block = f"# The recipe and overrides (validated at submit time); extra key=value after the script name are appended.\nTRAIN_ARGS=(\n{lines}\n)"
    else:
        args_block = "# Recipe arguments come from the sbatch command line (key=value ...).\nTRAIN_ARGS=()"
    setup = (f"# Environment setup\n{job.setup}\n" if job.setup
             else "# Environment setup (module load ..., source venv/bin/activate) goes here.\n")
    header = _HEADER.format(
        title=_title(job), job_name=job.job_name, nodes=job.nodes, gpus=_gpu_line(job.cpu, job.gpus_per_node),
        cpus_per_task=job.cpus_per_task, time=job.time, notice=PREEMPT_NOTICE_S, output=job.output,
        **job.optional_lines(),
    )
    body = _BODY.format(args_block=args_block, setup=setup, nodes=job.nodes, gpus_per_node=job.gpus_per_node,
                        notice=PREEMPT_NOTICE_S, grace=SHUTDOWN_GRACE_S, cpu=_cpu_block(job.cpu, job.gpus_per_node))
    return header + body


def _gpu_line(cpu: bool, gpus_per_node: int) -> str:
    return "" if cpu else f"#SBATCH --gpus-per-node={gpus_per_node}\n"


def _cpu_block(cpu: bool, procs: int) -> str:
    """CPU jobs: gloo ranks, each with its share of the task's cores as torch threads (no oversubscription)."""
    if not cpu:
        return ""
    return ("# CPU processes (gloo), no GPUs: each gets its share of the task's cores as torch threads.\n"
            "export ACCELERATE_USE_CPU=1\n"
            f"export OMP_NUM_THREADS=\"$(( ${{SLURM_CPUS_PER_TASK:-{procs}}} / {procs} > 0 ? ${{SLURM_CPUS_PER_TASK:-{procs}}} / {procs} : 1 ))\"\n")


@dataclass
class EvalJob(BatchJob):
    """One evaluation job; ``eval_args`` empty means "from the sbatch command line"."""

    time: str = "04:00:00"
    cpus_per_task: int = 8
    procs: int = 1
    eval_args: List[str] = field(default_factory=list)


def render_eval(job: EvalJob = EvalJob()) -> str:
    """The evaluation script (bash); the checked-in ``slurm/eval.sbatch`` is the default job."""
    if job.eval_args:
        lines = "\n".join(f"    {shlex.quote(a)}" for a in job.eval_args)
        args_block = f"# Rendered by `dist-gan slurm eval`; extra arguments after the script name are appended.\nEVAL_ARGS=(\n{lines}\n)"
    else:
        args_block = "EVAL_ARGS=()  # the evaluator's arguments come from the sbatch command line"
    return _EVAL.format(
        gpus=_gpu_line(job.cpu, job.procs), cpus=job.cpus_per_task, time=job.time, output=job.output,
        **job.optional_lines(), setup=f"{job.setup}\n" if job.setup else "", cpu=_cpu_block(job.cpu, job.procs), procs=job.procs,
        args_block=args_block,
    )


def cpus_for(cfg: DictConfig, gpus_per_node: int) -> int:
    """One core per training process plus its loader workers."""
    return max(1, gpus_per_node * (int(cfg.loader.workers) + 1))


def static_scripts() -> Dict[str, str]:
    """The files in ``slurm/``: the template with nothing baked in (dcgan64's loader: 3 cores per GPU)."""
    return {
        "train.sbatch": render_train(TrainJob(nodes=1, gpus_per_node=8, cpus_per_task=24, job_name="dist-gan")),
        "train_multinode.sbatch": render_train(TrainJob(nodes=2, gpus_per_node=8, cpus_per_task=24, job_name="dist-gan")),
        "eval.sbatch": render_eval(EvalJob()),
    }


# ------------------------------------------------------------ submit
def check_divisible(cfg: DictConfig, nodes: int, gpus_per_node: int) -> None:
    ranks = nodes * gpus_per_node
    accum = int(cfg.train.accum)
    batch = int(cfg.train.batch)
    if nodes < 1 or gpus_per_node < 1:
        raise UserError(f"--nodes and --gpus-per-node must be at least 1 (got {nodes} and {gpus_per_node})")
    if batch % (ranks * accum):
        unit = ranks * accum
        lo, hi = (batch // unit) * unit, (batch // unit + 1) * unit
        near = " or ".join(str(b) for b in (lo, hi) if b > 0)
        raise UserError(
            f"the global batch train.batch={batch} does not divide over {nodes} node(s) x {gpus_per_node} GPU(s) = "
            f"{ranks} ranks" + (f" x {accum} accumulation rounds" if accum > 1 else "")
            + f": pick a multiple of {unit} (e.g. train.batch={near}) or change --nodes/--gpus-per-node"
        )


def _check_time(time: str) -> None:
    if not _TIME.match(time):
        raise UserError(f"--time {time!r} is not a SLURM time limit; use HH:MM:SS, MM:SS or D-HH:MM:SS")


def prepare(args: Sequence[str], nodes: int, gpus_per_node: int, partition: Optional[str] = None,
            time: str = "24:00:00", setup: str = "", cwd: Optional[Path] = None,
            cpu: bool = False) -> Tuple[TrainJob, DictConfig, Path]:
    """Validate the recipe (unknown keys, values, divisibility) and build the job; nothing is written."""
    cfg = load_config(list(args))  # unknown keys and bad values fail here, before any rendering
    overrides = parse_overrides(args)
    if overrides.get("resume", "auto") not in ("", "auto"):
        raise UserError(
            f"resume={overrides['resume']} is not supported here: the SLURM script always passes resume=auto, "
            "so a requeued job continues its own run_dir"
        )
    if not cfg.data:
        raise UserError("data=SHARDS is required (a shard folder made by `dist-gan data pack`)")
    check_divisible(cfg, nodes, gpus_per_node)
    _check_time(time)
    cwd = Path(cwd or os.getcwd()).resolve()
    run_dir = (cwd / cfg.run_dir).resolve()
    data = cfg.data if is_remote(cfg.data) else (cwd / cfg.data).resolve()  # a URL stays a URL
    # Paths are made absolute: the job's working directory is fixed by --chdir, but be explicit.
    baked = [f"recipe={overrides.pop('recipe', cfg.recipe)}", f"data={data}", f"run_dir={run_dir}"]
    baked += [f"{k}={v}" for k, v in overrides.items() if k not in ("data", "run_dir", "resume")]
    job = TrainJob(
        nodes=nodes, gpus_per_node=gpus_per_node, time=time, partition=partition,
        job_name=f"dg-{cfg.recipe}-{run_dir.name}", cpus_per_task=cpus_for(cfg, gpus_per_node),
        output=str(run_dir / "slurm-%j.out"), chdir=str(cwd), setup=setup, train_args=baked, cpu=cpu,
    )
    return job, cfg, run_dir


def prepare_eval(args: Sequence[str], out: Path, procs: int = 1, partition: Optional[str] = None,
                 time: str = "04:00:00", setup: str = "", cpu: bool = False, cpus: Optional[int] = None,
                 cwd: Optional[Path] = None) -> Tuple[EvalJob, Path]:
    """An evaluation job for ``dist-gan eval ARGS --out OUT``, and OUT made absolute; the job log goes to OUT/slurm-JOBID.out.

    ``cpus`` (cores for the job) defaults to 2 per process: one for the process, one for decoding the reference."""
    if procs < 1:
        raise UserError(f"--procs must be at least 1, got {procs}")
    cpus = 2 * procs if cpus is None else cpus
    if cpus < procs:
        raise UserError(f"--cpus {cpus} is fewer than --procs {procs}: each process needs at least one core")
    _check_time(time)
    cwd = Path(cwd or os.getcwd()).resolve()
    out = (cwd / out).resolve()
    job = EvalJob(procs=procs, cpus_per_task=cpus, time=time, partition=partition,
                  output=str(out / "slurm-%j.out"), chdir=str(cwd), setup=setup, cpu=cpu,
                  eval_args=[*args, "--out", str(out)])
    return job, out


def script_path(run_dir: Path) -> Path:
    """The rendered script lives next to the run directory: ``runs/NAME.sbatch``."""
    return run_dir.with_name(run_dir.name + ".sbatch")


def submit(script: Path, sbatch: str = "sbatch") -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    exe = shutil.which(sbatch)
    if exe is None:
        raise UserError(
            f"`{sbatch}` is not on PATH: this machine is not a SLURM login node. The script was written to {script}; "
            "copy it to the cluster and run `sbatch` there, or use --dry-run to just print it"
        )
    proc = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    out = proc.stdout.strip().splitlines()
    return out[-1].split(";")[0].strip() if out else ""
