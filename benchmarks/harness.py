"""The quality benchmarks' harness: pack the real data once, train, score each run with
``dist-gan eval``, read a run's newest checkpoint, draw the sample figure, write the tables.

``quality_vs_textbook.py`` (dist_gan against the textbook DCGAN) and ``quality_study.py``
(every recipe on one budget) differ in what they train and how they judge it; everything
else they do goes through here, once, so that a fix to packing, to evaluation reuse or to
the table layout reaches both.

Why a module of its own and not ``common.py``: ``common.py`` serves the speed benchmarks
(interleaved timing, medians, the ``dist_gan.bench/1`` envelope) and imports torch on
import; the quality path (subprocesses, eval stamps and locks, Markdown tables) is a
different concern with different users, and mixing the two would make ``common.py`` a
grab-bag that every benchmark imports for nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from dist_gan.files import atomic_write_json, atomic_write_text, process_alive

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
TRAIN_PY = REPO / "dist_gan" / "train.py"
ZIPS = {"celeba": "celeba-10k.zip", "anime": "anime-faces-20k.zip"}
ANIME_CASCADE = SHARED / "detectors" / "lbpcascade_animeface.xml"
BLOCK_SIZE = 256  # images per uint8 array when shards are packed as ``blocks``
GRID_SEED = 1234  # latents of every sample grid: runs with equal latent sizes draw the same z
GRID_N = 16  # 4x4 per panel
EVAL_LOCK = "eval_lock.json"
CLK = os.sysconf("SC_CLK_TCK")

Log = Callable[[str], None]


def make_log(name: str) -> Log:
    """``[name HH:MM:SS] msg`` lines, flushed at once (the runs last hours; the log is the progress bar)."""

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    return log


_log = make_log("harness")


# ------------------------------------------------------------------ data
def shared_zip(data: str) -> Path:
    """The real zip of data set ``data`` in ``../shared/data``; exits with a clear line when it is missing."""
    src = SHARED / "data" / ZIPS[data]
    if not src.is_file():
        raise SystemExit(f"missing {src}: the quality benchmarks pack the real zips from ../shared/data")
    return src


def pack_once(src: Path, out: Path, *, crop: str, limit: Optional[int], image_format: str = "png",
              log: Log = _log, resolution: int = 64) -> Path:
    """``src`` packed at ``resolution`` px into ``out``, unless ``out/manifest.json`` is there already.

    Packs into a private folder and renames it into place: candidates started together all
    pack the same folder, and writing one folder from several processes broke the losers'
    renames. The packer is deterministic, so the first rename wins and the rest drop their
    identical copy (``tests/test_benchmarks_quality.py`` starts three at once).
    """
    from dist_gan.data.pack import pack

    if (out / "manifest.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    log(f"packing {src.name} at {resolution} px ({crop} crop, {image_format}) -> {out}")
    try:
        pack(src, tmp, resolution=resolution, crop=crop, shard_size=2000, progress=False, limit=limit, workers=1,
             image_format=image_format, block_size=BLOCK_SIZE)
        if not (out / "manifest.json").is_file():
            shutil.rmtree(out, ignore_errors=True)  # a crashed pack's leftovers
            try:
                os.rename(tmp, out)
            except OSError:  # another invocation's identical pack got there first
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def first_images(shards: Path, n: Optional[int] = None):
    """The first ``n`` packed images (all when None) as one (n, R, R, 3) uint8 array at the shards' resolution R, in shard order."""
    from dist_gan.eval import reference as R

    ref = R.open_reference(shards)
    return R.load_images(ref, ref.count if n is None else n, ref.native_resolution or 64)


# ------------------------------------------------------------------ training
def train_args(recipe: str, shards: Path, run: Path, seed: int, kimg: float, workers: int) -> List[str]:
    """The ``dist_gan/train.py`` arguments every quality run starts with; callers append their own.

    One snapshot and one sample grid at the end of the budget, no TensorBoard, no progress bar:
    the benchmarks read the final checkpoint and ``metrics.jsonl`` only. The order is part of the
    reuse key (finished runs are stamped with their exact argument list), so keep it.
    """
    return [f"recipe={recipe}", f"data={shards}", f"run_dir={run}", f"seed={seed}", f"train.kimg={kimg}",
            f"loader.workers={workers}", "log.tensorboard=false", "log.progress=false", f"log.sample_kimg={kimg}",
            f"log.snapshot_kimg={kimg}", "log.keep=1"]


def train_cmd(args: Sequence[str]) -> List[str]:
    """One training process with this interpreter (the one the benchmark runs under)."""
    return [sys.executable, str(TRAIN_PY), *args]


def two_rank_cmd(args: Sequence[str]) -> List[str]:
    """2 gloo ranks on this machine's CPU (``--multi_gpu`` with ACCELERATE_USE_CPU=1; ``--cpu`` would start one)."""
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            str(TRAIN_PY), *args]


def launch_two_ranks(args: Sequence[str], log_path: Path) -> float:
    """One 2-rank training launch, one thread per rank, output appended to ``log_path``; its wall seconds."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.run(two_rank_cmd(args), stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def train_two_ranks(args: Sequence[str], run: Path, log_path: Path, label: str) -> Tuple[float, Dict[str, Any]]:
    """Train ``args`` (which name ``run_dir=run``) on 2 gloo ranks, or reuse ``run`` when the same command
    finished there before (``stamp.json``); the wall seconds and ``final.json``. A world size other than 2 ends
    the study: the ranks would not have been real."""
    cmd = two_rank_cmd(args)
    stamp = run / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("cmd") == cmd and (run / "final.json").is_file():
        wall = json.loads(stamp.read_text())["wall_s"]
        print(f"{label}: reusing {run}", flush=True)
    else:
        if run.exists():
            shutil.rmtree(run)
        run.parent.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        wall = launch_two_ranks(args, log_path)
        atomic_write_json(stamp, {"cmd": cmd, "wall_s": wall})
    final = json.loads((run / "final.json").read_text())
    if final["world_size"] != 2:
        raise SystemExit(f"{label}: expected 2 ranks, final.json says {final['world_size']}")
    return wall, final


def resolved_train_config(args: List[str]) -> Dict[str, Any]:
    """The full config ``dist_gan/train.py *args`` trains with, less where it reads and writes.

    Why: the benchmarks reuse a finished run when nothing about it changed, and the argument
    list alone cannot tell: ``recipe=celeba64`` reads the same after the recipe file's
    defaults change. Comparing this instead catches that.
    """
    from dist_gan.config import load_config, to_dict

    cfg = to_dict(load_config(args))
    for key in ("data", "run_dir", "resume"):  # where, not what: the paths are in the arguments already
        cfg.pop(key, None)
    return cfg


def last_metrics(run: Path) -> Dict[str, Any]:
    """The run's last ``metrics.jsonl`` record, ``{}`` when it logged none."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return records[-1] if records else {}


# ------------------------------------------------------------------ checkpoints
def newest_checkpoint(run: Path) -> Optional[Path]:
    """The run's newest complete checkpoint (``run/checkpoints/ckpt-*.pt``), None before the first."""
    from dist_gan.engine.checkpoint import list_checkpoints

    found = list_checkpoints(run / "checkpoints")
    return found[-1] if found else None


def checkpoint_nimg(path: Path) -> int:
    """Real images shown to D when ``path`` was written (``dist_gan.engine.checkpoint.nimg_of``)."""
    from dist_gan.engine.checkpoint import nimg_of

    return nimg_of(path)


def checkpoint_key(run: Path) -> List[Any]:
    """``[path, size, mtime]`` of the run's newest checkpoint: an evaluation of it is reusable while this holds."""
    ck = newest_checkpoint(run)
    if ck is None:
        raise SystemExit(f"no checkpoint in {run / 'checkpoints'} to evaluate")
    st = ck.stat()
    return [str(ck), st.st_size, st.st_mtime]


# ------------------------------------------------------------------ processes
def proc_cpu_s(pid: int) -> float:
    """user + system seconds of a live process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK
    except (OSError, IndexError, ValueError):
        return float("nan")


class Job:
    """A child process with its wall clock, CPU clock (from wait4's rusage at exit) and log file.

    ``threads`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for it; None leaves the environment's.
    """

    def __init__(self, name: str, cmd: List[str], logfile: Path, threads: Optional[int]) -> None:
        self.name, self.cmd = name, cmd
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads is not None:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        logfile.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(logfile, "w")
        self.logfile = logfile
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.rc: Optional[int] = None
        self.wall_s: Optional[float] = None
        self.cpu_s: Optional[float] = None
        self.stopped = False  # SIGSTOPped by a budget keeper
        self.terminated = False  # SIGTERMed at a budget

    def cpu_now(self) -> float:
        return self.cpu_s if self.rc is not None else proc_cpu_s(self.proc.pid)

    def wall_now(self) -> float:
        return self.wall_s if self.rc is not None else time.perf_counter() - self.t0

    def poll(self) -> bool:
        """True once finished (reaps it and records its clocks)."""
        if self.rc is not None:
            return True
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.rc
        self.wall_s = time.perf_counter() - self.t0
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.log.close()
        return True

    def signal(self, sig: int) -> None:
        if self.rc is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def check(self) -> None:
        if self.rc != 0:
            tail = self.logfile.read_text()[-4000:]
            raise SystemExit(f"{self.name} failed (exit {self.rc}): {shlex.join(self.cmd)}\n{tail}")


class Done:
    """A finished job reused from its stamp (same command line): the clocks it took then."""

    def __init__(self, name: str, stamp: Dict[str, Any]) -> None:
        self.name, self.cmd, self.rc = name, stamp["cmd"], 0
        self.wall_s, self.cpu_s, self.terminated = stamp["wall_s"], stamp["cpu_s"], stamp.get("terminated", False)

    def poll(self) -> bool:
        return True

    def check(self) -> None:
        pass


def wait_all(jobs: Sequence[Any], keeper: Optional[Callable[[], None]] = None, interval: float = 0.5,
             on_done: Optional[Callable[[Any], None]] = None) -> None:
    """Poll ``jobs`` until all have exited; ``keeper()`` runs every ``interval`` s (budget checks),
    ``on_done(job)`` once per job that exits with 0.

    Left early (Ctrl-C, SIGTERM, a failing callback), it ends the jobs still running first: a job the
    keeper had paused with SIGSTOP would otherwise stay stopped, an orphan, forever.
    """
    seen = set()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        while True:
            done = [j.poll() for j in jobs]
            for j, d in zip(jobs, done):
                if d and j.name not in seen:
                    seen.add(j.name)
                    if on_done is not None and j.rc == 0:
                        on_done(j)
            if keeper is not None:
                keeper()
            if all(done):
                return
            time.sleep(interval)
    except BaseException:
        for j in jobs:
            if isinstance(j, Job) and j.rc is None:
                j.signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once it runs
                j.signal(signal.SIGTERM)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class EvalTask:
    """One ``dist-gan eval``: the run it scores, the folder its report goes to, its command line."""

    run: Path
    out: Path
    cmd: List[str]


def eval_task(run: Path, ref: Path, out: Path, *, n: int, seed: int, data: str, bn_recal: bool = False) -> EvalTask:
    """``dist-gan eval RUN --fid --kid --pr --detect --leak --ref SHARDS --n N`` with the data set's detector.

    Runs as ``python -m dist_gan`` under this interpreter (the ``dist-gan`` CLI, without depending
    on which ``dist-gan`` is first on PATH). The detector is named, not left to the eval's pick
    from the layout, so the command (the reuse key) says what scored the run.
    """
    cmd = [sys.executable, "-m", "dist_gan", "eval", str(run), "--fid", "--kid", "--pr", "--detect", "--leak",
           "--ref", str(ref), "--n", str(n), "--seed", str(seed), "--out", str(out), "--batch", str(min(n, 250))]
    return EvalTask(run, out, cmd + detector_args(data) + (["--bn-recal"] if bn_recal else []))


def detector_args(data: str) -> List[str]:
    """The eval flags naming the data set's face detector: the anime LBP cascade for anime, else MTCNN, the
    strongest human-face detector the evaluator has that is fast (1.1% of real 64-px CelebA missed, Haar 7.9%:
    ``results/evaluator``)."""
    return ["--detector", "anime", "--cascade", str(ANIME_CASCADE)] if data == "anime" else ["--detector", "mtcnn"]


def shown_path(path: Path) -> str:
    """``path`` as a recorded table spells it: from ``~`` when under the home folder, so it reads on any machine."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def recorded_path(shown: str) -> Path:
    """A path a recorded table holds (``shown_path``'s spelling) as a path on this machine."""
    return Path(shown).expanduser()


def eval_once(run: Path, out: Path, flags: Sequence[str], label: str) -> Tuple[Dict[str, Any], List[str]]:
    """``dist-gan eval RUN *flags --out OUT``, reused while OUT holds the report of the same command (its
    ``cmd.json``); the report and the command. A failed evaluation ends the study, its stderr's tail shown."""
    cmd = [sys.executable, "-m", "dist_gan", "eval", str(run), *flags, "--out", str(out)]
    report, stamp = out / "report.json", out / "cmd.json"
    if not (report.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{label} on {run}: {proc.stderr[-2000:]}")
        stamp.write_text(json.dumps(cmd))
    return json.loads(report.read_text()), cmd


def shown_command(argv: Sequence[str]) -> str:
    """``argv`` as a recorded table spells it, to be run from the repository root in bash on any machine: this
    Python as ``python``, the repository's files relative to it, the home folder as ``~`` (bash expands it after
    ``=`` too) wherever the word needs no quotes."""
    home, repo = str(Path.home()), str(REPO)

    def word(w: str) -> str:
        if w == sys.executable:
            return "python"
        for prefix, short in ((repo + "/", ""), (home + "/", "~/")):
            if prefix in w and shlex.quote(w) == w:
                return w.replace(prefix, short)
        return shlex.quote(w)

    return " ".join(word(w) for w in argv)


def machine() -> str:
    """Cores, CPU model and native bf16, the line a study table names its machine by."""
    import torch

    from dist_gan.engine.precision import bf16_native

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    return f"{os.cpu_count()} cores, {cpu}, native bf16: {bf16_native(torch.device('cpu'))}"


def ref_cached(shards: Path, n: int) -> bool:
    """True when ``dist-gan eval --n n`` will find the reference statistics in its cache."""
    try:
        from dist_gan.eval import reference as R
        from dist_gan.eval.features import cache_dir, resolve_weights

        ref = R.open_reference(shards)
        key = R.stats_key(ref, 64, min(n, ref.count), resolve_weights(None).source_sha1)
        return R.load_stats(R.stats_path(cache_dir(), key)) is not None
    except Exception:  # no weights yet, unreadable cache: let the first eval build it
        return False


def wait_for_other_eval(out: Path, cmd: List[str], poll_s: float = 5.0, log: Log = _log) -> bool:
    """Wait while another live invocation runs this same evaluation into ``out`` (its lock file);
    True if there was one. A lock left by a dead process, or for another command, is ignored."""
    lock = out / EVAL_LOCK
    waited = False
    while lock.is_file():
        try:
            held = json.loads(lock.read_text())
        except FileNotFoundError:  # released between the check and the read: the loop ends
            continue
        except (OSError, ValueError):  # unreadable, or not a lock this code wrote (it writes them whole): ignore it
            return waited
        if held.get("pid") == os.getpid() or held.get("cmd") != cmd or not process_alive(int(held.get("pid", 0))):
            return waited
        if not waited:
            log(f"waiting for pid {held['pid']}, which is already running this evaluation into {out}")
        waited = True
        time.sleep(poll_s)
    return waited


def claim_eval(out: Path, cmd: List[str]) -> None:
    """Tell other invocations that this process is running ``cmd`` into ``out``."""
    atomic_write_json(out / EVAL_LOCK, {"pid": os.getpid(), "cmd": cmd})


def release_eval(out: Path) -> None:
    """Drop this process's lock on ``out`` (another process's lock is left alone)."""
    lock = out / EVAL_LOCK
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def evaluate(tasks: Mapping[str, EvalTask], shards: Path, n: int, *, threads: Optional[int] = None,
             parallel: bool = False, log: Log = _log) -> Dict[str, Dict[str, Any]]:
    """Run ``dist-gan eval`` per task; the reports, each with ``_eval_command``, ``_eval_wall_s``,
    ``_eval_cpu_s`` and ``_out`` added.

    The first runs alone when the reference statistics are not cached yet (it computes and caches
    them), the rest two or more at a time with ``parallel``. An identical finished evaluation (same
    command, same checkpoint file: ``eval_stamp.json``) is reused; one that another invocation is
    running right now is waited for, then reused, instead of being run twice. Each eval's log is
    ``<run>/eval.log``.
    """
    jobs: Dict[str, Any] = {}

    def reuse(name: str) -> bool:  # an identical evaluation of the same checkpoint, already done: keep it
        t = tasks[name]
        st = t.out / "eval_stamp.json"
        if st.is_file() and (t.out / "report.json").is_file():
            stamp = json.loads(st.read_text())
            if stamp["cmd"] == t.cmd and stamp["checkpoint"] == checkpoint_key(t.run):
                log(f"eval {name}: reusing {t.out / 'report.json'}")
                jobs[name] = Done(f"eval {name}", stamp)
                return True
        return False

    for name, t in tasks.items():
        if not reuse(name) and wait_for_other_eval(t.out, t.cmd, log=log):
            reuse(name)
    todo = [name for name in tasks if name not in jobs]

    def launch(name: str) -> Job:
        t = tasks[name]
        claim_eval(t.out, t.cmd)
        return Job(f"eval {name}", t.cmd, t.run / "eval.log", threads)

    def finish(name: str, j: Job) -> None:
        j.check()
        t = tasks[name]
        if not (t.out / "report.json").is_file():  # exit 0 without a report: not an evaluation that ran
            raise SystemExit(f"{j.name} wrote no {t.out / 'report.json'}: {shlex.join(j.cmd)}\n{j.logfile.read_text()[-4000:]}")
        jobs[name] = j
        atomic_write_json(t.out / "eval_stamp.json", {"cmd": j.cmd, "rc": 0, "wall_s": j.wall_s, "cpu_s": j.cpu_s,
                                                      "checkpoint": checkpoint_key(t.run)}, indent=None)
        release_eval(t.out)

    try:
        if todo and not jobs and not ref_cached(shards, n):  # the first one alone computes and caches the reference statistics
            first = launch(todo[0])
            wait_all([first])
            finish(todo[0], first)
            rest = todo[1:]
        else:
            rest = todo
        width = max(1, len(rest)) if parallel else 1
        for i in range(0, len(rest), width):
            batch = [launch(name) for name in rest[i:i + width]]
            wait_all(batch)
            for name, j in zip(rest[i:i + width], batch):
                finish(name, j)
    finally:  # a failed evaluation leaves no lock that would make the next invocation wait
        for name in todo:
            release_eval(tasks[name].out)
    reports = {}
    for name, t in tasks.items():
        rep = json.loads((t.out / "report.json").read_text())
        rep["_eval_command"] = shlex.join(jobs[name].cmd)
        rep["_eval_wall_s"] = round(jobs[name].wall_s, 1)
        rep["_eval_cpu_s"] = round(jobs[name].cpu_s, 1)
        rep["_out"] = str(t.out)
        reports[name] = rep
    return reports


def scores(report: Dict[str, Any], leak_types: Tuple[type, ...] = (int, float, str)) -> Dict[str, Any]:
    """The headline figures of one eval report: FID, KID, precision and recall, detector misses (generated and
    real), leak. A figure the report lacks (a report from before its metric was asked for) is None.

    ``leak_types``: which leak fields to keep (the numbers, and by default the verdict string).
    """
    m = report["metrics"]
    det, kid, fid, leak, pr = m.get("detect", {}), m.get("kid", {}), m.get("fid", {}), m.get("leak", {}), m.get("pr", {})
    return {
        "fid": fid.get("fid"), "kid_mean": kid.get("kid_mean"), "kid_std": kid.get("kid_std"),
        "precision": pr.get("precision"), "recall": pr.get("recall"),
        "gen_no_face": det.get("gen_no_face"), "gen_n": det.get("gen_n"),
        "ref_no_face": det.get("ref_no_face"), "ref_n": det.get("ref_n"), "detector": det.get("detector"),
        "leak": {k: v for k, v in leak.items() if isinstance(v, leak_types) and not isinstance(v, bool)},
    }


# ------------------------------------------------------------------ figure
def plot_fid_curves(results: Dict[str, Any], out: Path, *, order: Callable[[Dict[str, Any]], Any],
                    label: Callable[[Dict[str, Any]], str], right_x: Callable[[Dict[str, Any], Dict[str, Any]], float],
                    right_label: str, legend_size: int = 7, group: Optional[Callable[[Dict[str, Any]], str]] = None) -> None:
    """``out/fid_curves.png``: per data set, each run's FID against kimg (left) and against ``right_x(run, point)``
    (right), runs in ``order``; every study with FID-tracked runs (``results['runs']``) draws the same figure.

    Runs of one ``group`` (e.g. a row's seeds) share a colour and differ by marker, so a table of many
    single-point runs stays readable; the legend sits outside the axes, where it hides no point."""
    from dist_gan.imaging import pyplot

    plt = pyplot()
    group = group or label
    datas = sorted({r["data"] for r in results["runs"].values()})
    fig, axes = plt.subplots(len(datas), 2, figsize=(14, 4.2 * len(datas)), squeeze=False)
    markers = "os^Dv"
    for i, data in enumerate(datas):
        runs = sorted((r for r in results["runs"].values() if r["data"] == data), key=order)
        groups = list(dict.fromkeys(group(r) for r in runs))
        cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
        for r in runs:
            f = [p["fid"] for p in r["curve"]]
            style = dict(marker=markers[int(r.get("seed", 0)) % len(markers)], ms=4, label=label(r),
                         color=cmap(groups.index(group(r)) % cmap.N))
            axes[i][0].plot([p["kimg"] for p in r["curve"]], f, **style)
            axes[i][1].plot([right_x(r, p) for p in r["curve"]], f, **style)
        axes[i][0].set_xlabel("kimg"), axes[i][1].set_xlabel(right_label)
        for ax in axes[i]:
            ax.set_ylabel(f"FID ({data}, n={results['fid_n']})")
        axes[i][1].legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(out / "fid_curves.png", dpi=100)
    plt.close(fig)


def tile(imgs, cols: int = 4):
    """Tiles on white, 2 px apart, no outer border."""
    from dist_gan.imaging import make_grid

    return make_grid(imgs, nrow=cols, pad=2, fill=255)[2:-2, 2:-2]


def sample_grid(run: Path, n: int = GRID_N, bn_recal: bool = False):
    """``n`` EMA samples of the run's newest checkpoint, tiled; latents from ``GRID_SEED``
    (the same for every run with the same latent size, so panels compare like for like)."""
    import numpy as np
    import torch

    from dist_gan.engine.checkpoint import load_generator
    from dist_gan.imaging import to_uint8

    G, cfg = load_generator(run, bn_recal=bn_recal)
    z = torch.randn(n, int(cfg["model"]["nz"]), generator=torch.Generator().manual_seed(GRID_SEED))
    with torch.no_grad():
        return tile(np.asarray(to_uint8(G(z))))


def real_grid(shards: Path, n: int = GRID_N):
    """The first ``n`` packed reals, tiled like the sample grids."""
    import numpy as np

    return tile(np.asarray(first_images(shards, n)))


def compose_figure(panels: List[tuple], path: Path, title: str) -> None:
    """Panels (label, caption, grid) side by side, labels above, captions below."""
    from PIL import Image, ImageDraw

    scale = 2
    ims = [Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST) for _, _, g in panels]
    pad, top, bottom = 12, 40, 36
    width = sum(im.width for im in ims) + pad * (len(ims) + 1)
    height = max(im.height for im in ims) + top + bottom
    fig = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(fig)
    draw.text((pad, 4), title, fill="black")
    x = pad
    for (label, caption, _), im in zip(panels, ims):
        fig.paste(im, (x, top))
        draw.text((x, top - 16), label, fill="black")
        draw.text((x, top + im.height + 4), caption, fill="black")
        x += im.width + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour adaptive palette: a sample figure at about 40% of its RGB size, so results/ stays small
    fig.quantize(colors=256).save(path, optimize=True)


# ------------------------------------------------------------------ tables
def fmt(v: Any, spec: str = ".1f") -> str:
    """A table cell: ``-`` for a figure that is missing (an eval left a metric out)."""
    return "-" if v is None else format(v, spec)


def kid_cell(mean: Optional[float], std: Optional[float]) -> str:
    """KID as ``mean ± std`` in units of 1e-3 (the tables' ``KID x1e3`` column)."""
    if mean is None:
        return "-"
    return f"{mean * 1e3:.1f}" if std is None or std < 1e-12 else f"{mean * 1e3:.1f} ± {std * 1e3:.1f}"


def pr_cell(row: Dict[str, Any]) -> str:
    """Improved precision and recall as ``P / R`` (the tables' ``P / R`` column); ``-`` where the run was not scored."""
    if row.get("precision") is None or row.get("recall") is None:
        return "-"
    return f"{row['precision']:.3f} / {row['recall']:.3f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> List[str]:
    """A Markdown table as lines: the header, the ``|---|`` rule, one line per row (cells as ``str``)."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def write_tables(out: Path, stem: str, results: Dict[str, Any], markdown: str, commands: Sequence[str]) -> None:
    """``<stem>.json``, ``<stem>.md`` and ``command.txt`` in ``out``, each written atomically: a reader
    (or an interrupted run) never finds half a table, and a partial study's table is still valid."""
    atomic_write_json(out / f"{stem}.json", results, indent=1)
    atomic_write_text(out / f"{stem}.md", markdown)
    atomic_write_text(out / "command.txt", "\n".join(commands) + "\n")
