"""dist_gan's recipe against the textbook DCGAN: same images, same budget, same seed, scored alike.

Per data set (``--data celeba anime``), the real zip in ``../shared/data`` is packed ONCE at
64 px into a cache folder outside the repo (``dist_gan.data.pack``, ``--crop center`` by
default: the largest centred square, 89x89 of CelebA's 89x109, then Lanczos to 64 px, the
issue's baseline preprocessing). Both trainers read those shards: the textbook decodes them
into one uint8 array and draws shuffled batches from it (epoch permutations, drop-last, as
the example's DataLoader does); dist_gan streams them. Then three runs, same seed:

- ``textbook``: ``benchmarks.textbook.TextbookDCGAN`` (fp32, Sigmoid + BCELoss, separate
  real/fake passes, Adam 2e-4 (0.5, 0.999) for both nets, batch 128) for ``--kimg``;
- ``dist_gan@img``: ``dist_gan/train.py recipe=--recipe`` for the same ``--kimg`` (same image
  budget, DCGAN width 64);
- ``dist_gan@time``: the recipe plus ``--time-override`` (e.g. narrower nets), stopped by
  SIGTERM (the loop's preemption path: it checkpoints and exits) once it has used the
  textbook's time. ``--clock cpu`` (default) measures that time as the CPU seconds of the
  whole training process (user + system, start to exit, the textbook's own taken the same
  way): on a shared machine, wall time mostly measures the neighbours. ``--clock wall`` uses
  elapsed seconds (meaningful on a quiet machine only). Every process runs with
  ``--threads`` intra-op threads (``OMP_NUM_THREADS``).

With ``--parallel`` the three trainings run at once (the time-budgeted one is paused with
SIGSTOP whenever it is ahead of the textbook's CPU clock, so it never spends more than the
textbook has; it is stopped as soon as it reaches the textbook's final total), then the
evaluations run two at a time.

``--time-format blocks`` has dist_gan@time stream the same pixels packed as uint8 arrays of 256
images (``dist-gan data pack --format blocks``) instead of one PNG per image: the stream's
per-image tar and PNG decode go, as the textbook's one-off decode into memory is left out of
its budget. The textbook, ``dist_gan@img`` and every evaluation read the PNG shards.

Each run is scored by ``dist-gan eval RUN --fid --kid --detect --leak --ref SHARDS --n N``
(the textbook's G is written as a dist_gan checkpoint, G = G_ema, so the same evaluator,
latents and eval-mode BN apply): FID/KID against the packed reference (NVIDIA's Inception),
face detector misses on N samples and on N reals (Haar for CelebA; the anime LBP cascade
for anime), and the nearest-neighbour leak check. ``--bn-recal`` scores every run, the
textbook's included, with its G's BatchNorm statistics re-estimated for the weights scored
(``dist-gan eval --bn-recal``; the sample figure uses the same generators).

Packing, evaluation (and its reuse), checkpoints, the sample figure and the table files go
through ``benchmarks/harness.py``, as in ``quality_study.py``.

Writes under ``--out`` (default ``benchmarks/results/quality_vs_textbook``):
``results.json`` (schema ``dist_gan.quality_vs_textbook/1``), ``results.md`` (the tables),
``samples_<data>.png`` (reals | textbook | dist_gan@img | dist_gan@time, same latents),
``command.txt``. Runs and their evaluations (``report.json``) stay in the cache
(``qvt_runs/<data>/<run>``, ``qvt_evals/<data>/<run>``), where a rerun reuses them.

The issue's protocol (60 kimg, n=1000)::

    python benchmarks/quality_vs_textbook.py --data celeba anime --kimg 60 --n 1000 --parallel

Finished runs are reused while their command and resolved recipe are unchanged, so a new time-budget
candidate needs only ``--runs dist_gan@time`` and its ``--time-override`` (keep ``--override`` as it
was, or ``dist_gan@img`` retrains). Two candidates at once: ``--train-only --time-tag A`` and
``--train-only --time-tag B`` side by side (folders ``dist_gan_at_time-A`` and ``-B``), then the full
command with the chosen tag evaluates it and writes the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import shutil
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness as H  # noqa: E402
from benchmarks.common import cache_dir, machine_info  # noqa: E402
from benchmarks.harness import BLOCK_SIZE, GRID_N, Done, Job, fmt, wait_all  # noqa: E402
from dist_gan.files import atomic_write_json, atomic_write_text  # noqa: E402

SCHEMA = "dist_gan.quality_vs_textbook/1"
RUNS = ("textbook", "dist_gan@img", "dist_gan@time")

log = H.make_log("quality_vs_textbook")


# ------------------------------------------------------------------ data
def packed_shards(data: str, cache: Path, crop: str, limit: Optional[int], zip_path: Optional[Path] = None,
                  image_format: str = "png") -> Path:
    """``cache/shards/qvt-<data>-64-<crop>[-limitN][-blocks]``, packed once and reused while its manifest exists.

    ``image_format="blocks"`` packs the same images (same crop and resize; PNG is lossless, so the
    pixels are identical) as uint8 arrays of ``BLOCK_SIZE`` images: the stream then skips the
    per-image tar and PNG decode. That decode is one-off preprocessing, like the textbook's
    decode into memory, which its budget leaves out too."""
    suffix = (f"-limit{limit}" if limit else "") + ("" if image_format == "png" else f"-{image_format}")
    out = cache / "shards" / f"qvt-{data}-64-{crop}{suffix}"
    return H.pack_once(zip_path or H.shared_zip(data), out, crop=crop, limit=limit, image_format=image_format, log=log)


# ------------------------------------------------------------------ textbook
def train_textbook(images, kimg: float, seed: int, batch: int = 128, ngf: int = 64, ndf: int = 64,
                   nz: int = 100, log_every: int = 50) -> Dict[str, Any]:
    """The textbook DCGAN (``benchmarks.textbook``) for ceil(kimg*1000/batch) steps over ``images`` (uint8 NHWC).

    Batches: a fresh ``randperm`` per epoch (seeded), ``drop_last``, uint8 -> [-1, 1] as
    ToTensor + Normalize(0.5, 0.5) does. Returns the model and timing facts.
    """
    import torch

    from benchmarks.textbook import TextbookDCGAN

    model = TextbookDCGAN("cpu", resolution=images.shape[1], nz=nz, ngf=ngf, ndf=ndf, seed=seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW view
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(kimg * 1000 / batch)
    perm, pos, history = torch.randperm(n, generator=gen), 0, []
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        x = data[perm[pos:pos + batch]].float().div_(127.5).sub_(1.0)
        pos += batch
        stats = model.step(x)
        if (it + 1) % log_every == 0 or it + 1 == steps:
            history.append({"step": it + 1, "kimg": (it + 1) * batch / 1000, **{k: round(v, 4) for k, v in stats.items()}})
    return {"model": model, "steps": steps, "nimg": steps * batch, "loop_wall_s": time.perf_counter() - t0,
            "loop_cpu_s": time.process_time() - c0, "history": history}


def save_textbook_checkpoint(model, run: Path, nimg: int, ngf: int, ndf: int) -> Path:
    """The textbook netG as a dist_gan checkpoint (its ``main.*`` layers are dist_gan's ``net.*``); G_ema = G."""
    from dist_gan import config as config_mod
    from dist_gan.engine import checkpoint as ckpt
    from dist_gan.models import build_generator

    cfg = config_mod.to_dict(config_mod.load_config([f"model.ngf={ngf}", f"model.ndf={ndf}"], recipe="dcgan64"))
    cfg["recipe"] = "textbook"
    sd = {k.replace("main.", "net.", 1): v.detach().clone() for k, v in model.netG.state_dict().items()}
    build_generator(cfg["model"]).load_state_dict(sd)  # strict: the layers line up
    return ckpt.save_checkpoint({"cfg": cfg, "G": sd, "G_ema": sd, "nimg": nimg, "textbook": True},
                                run / "checkpoints", nimg, keep=1)


def textbook_child(a: argparse.Namespace) -> None:
    """``_textbook`` sub-command: one textbook run in its own process (so its CPU time is its own)."""
    import torch

    torch.set_num_threads(a.threads)
    run = Path(a.run)
    t0, c0 = time.perf_counter(), time.process_time()
    images = H.first_images(Path(a.shards))
    decode = {"decode_wall_s": time.perf_counter() - t0, "decode_cpu_s": time.process_time() - c0}
    res = train_textbook(images, a.kimg, a.seed, batch=a.batch, ngf=a.width, ndf=a.width)
    path = save_textbook_checkpoint(res.pop("model"), run, res["nimg"], a.width, a.width)
    atomic_write_json(run / "textbook_facts.json", {**res, **decode, "checkpoint": str(path), "images": int(images.shape[0])}, indent=1)


# ------------------------------------------------------------------ dist_gan runs
def dist_gan_args(a: argparse.Namespace, shards: Path, run: Path, extra: List[str], kimg: Optional[float]) -> List[str]:
    """train.py arguments; ``kimg=None``: open-ended (stopped by the time budget)."""
    big = 1e6
    k = kimg if kimg is not None else big
    return [*H.train_args(a.recipe, shards, run, a.seed, k, 0), *([] if kimg is not None else ["log.every=1"]),
            *a.override, *extra]


def textbook_cmd(a: argparse.Namespace, shards: Path, run: Path) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_textbook", "--shards", str(shards), "--run", str(run),
            "--kimg", str(a.kimg), "--seed", str(a.seed), "--threads", str(a.threads), "--batch", str(a.tb_batch),
            "--width", str(a.tb_width)]


def run_facts(job: Any, run: Path, budget: Optional[float] = None) -> Dict[str, Any]:
    """What a training took and reached: clocks, images seen (from its newest checkpoint), last losses."""
    ck = H.newest_checkpoint(run)
    nimg = H.checkpoint_nimg(ck) if ck else 0
    facts: Dict[str, Any] = {"command": H.shown_command(job.cmd), "wall_s": round(job.wall_s, 1), "cpu_s": round(job.cpu_s, 1),
                             "nimg": nimg, "kimg": nimg / 1000, "img_per_cpu_s": round(nimg / job.cpu_s, 2) if job.cpu_s else None,
                             "checkpoint": H.shown_path(ck) if ck else None}
    if budget is not None:
        facts["budget_s"] = round(budget, 1)
        facts["stopped_by_budget"] = job.terminated
    last = H.last_metrics(run)
    if last:
        facts["steps"] = last.get("step")
        facts["last_stats"] = {k: round(v, 4) for k, v in last.items() if k.startswith(("loss", "d_real", "d_fake"))}
    tb = run / "textbook_facts.json"
    if tb.is_file():
        t = json.loads(tb.read_text())
        facts.update(steps=t["steps"], loop_wall_s=round(t["loop_wall_s"], 1), loop_cpu_s=round(t["loop_cpu_s"], 1),
                     decode_cpu_s=round(t.get("decode_cpu_s", 0.0), 1), decode_wall_s=round(t.get("decode_wall_s", 0.0), 1),
                     last_stats=t["history"][-1] if t["history"] else {})
    return facts


def resolved_recipe(cmd: List[str]) -> Optional[Dict[str, Any]]:
    """Part of the reuse key: the config a dist_gan command trains with; None for the textbook,
    whose command line is its whole config."""
    return H.resolved_train_config(cmd[2:]) if cmd[1:2] == [str(H.TRAIN_PY)] else None


def run_folder(name: str, time_tag: str = "") -> str:
    """A run's folder name (training and evaluation): ``dist_gan@time`` -> ``dist_gan_at_time[-TAG]``.

    The tag lets several time-budget candidates train side by side against one finished textbook
    (``--runs dist_gan@time --train-only --time-tag A``, another with ``--time-tag B``) without one
    invocation deleting the other's run; the textbook and ``dist_gan@img`` folders never take it."""
    base = name.replace("@", "_at_")
    return f"{base}-{time_tag}" if time_tag and name == "dist_gan@time" else base


def reusable(run: Path, cmd: List[str], name: str) -> Optional[Done]:
    """The finished run in ``run`` when its ``job.json`` stamp has this command and resolved recipe."""
    stamp = run / "job.json"
    if stamp.is_file():
        st = json.loads(stamp.read_text())
        if st.get("cmd") == cmd and st.get("rc") == 0 and st.get("config") == resolved_recipe(cmd):
            log(f"{name}: reusing the finished run in {run}")
            return Done(name, st)
    return None


def stamp(job: Any, run: Path, budget: Optional[float] = None) -> None:
    """``job.json``: the reuse key (command, resolved recipe) and the clocks of a finished run."""
    atomic_write_json(run / "job.json", {"cmd": job.cmd, "config": resolved_recipe(job.cmd), "rc": job.rc,
                                         "wall_s": job.wall_s, "cpu_s": job.cpu_s,
                                         "terminated": job.terminated, "budget": budget}, indent=1)


def textbook_budget(tb, run: Path, clock: str) -> float:
    """The textbook process's seconds (CPU or wall) less its one-off decode of the whole shard set
    into memory (a harness artefact: the example's DataLoader decodes on the fly, as dist_gan's stream does)."""
    facts = json.loads((run / "textbook_facts.json").read_text())
    if clock == "cpu":
        return tb.cpu_s - facts.get("decode_cpu_s", 0.0)
    return tb.wall_s - facts.get("decode_wall_s", 0.0)


def train_all(a: argparse.Namespace, data: str, shards: Path, root: Path, reuse_only: bool = False,
              time_shards: Optional[Path] = None):
    """The trainings of one data set (``a.runs``; finished identical runs are reused); returns facts per run.
    ``time_shards``: what dist_gan@time reads (``--time-format``), default ``shards``."""
    runs = {name: root / run_folder(name, a.time_tag) for name in RUNS}
    clock = (lambda j: j.cpu_now()) if a.clock == "cpu" else (lambda j: j.wall_now())
    cmds = {"textbook": textbook_cmd(a, shards, runs["textbook"]),
            "dist_gan@img": H.train_cmd(dist_gan_args(a, shards, runs["dist_gan@img"], [], a.kimg)),
            "dist_gan@time": H.train_cmd(dist_gan_args(a, time_shards or shards, runs["dist_gan@time"], a.time_override, None))}
    log(f"{data}: " + " | ".join(f"{n}: {shlex.join(c[2:])}" for n, c in cmds.items()))
    jobs: Dict[str, Any] = {}
    needed = set(a.runs) | (set() if a.train_only else set(RUNS)) | ({"textbook"} if "dist_gan@time" in a.runs else set())
    for name in RUNS:
        if name not in needed:
            continue
        done = reusable(runs[name], cmds[name], name)
        if done is not None:
            jobs[name] = done
        elif reuse_only:
            continue
        elif name not in a.runs:
            raise SystemExit(f"{name} is needed but not trained yet: add it to --runs")
    budget: Dict[str, Optional[float]] = {"s": None}

    def start(name: str):
        shutil.rmtree(runs[name], ignore_errors=True)
        runs[name].mkdir(parents=True)
        jobs[name] = Job(name, cmds[name], runs[name] / "train.log", a.threads)
        return jobs[name]

    def keeper() -> None:
        tb, tj = jobs.get("textbook"), jobs.get("dist_gan@time")
        if tj is None or tj.rc is not None or tb is None:
            return
        if tb.rc is not None and budget["s"] is None:
            tb.check()
            budget["s"] = textbook_budget(tb, runs["textbook"], a.clock)
        limit = budget["s"] if budget["s"] is not None else clock(tb)
        used = clock(tj)
        started = (runs["dist_gan@time"] / "samples" / "reals.png").is_file()  # its SIGTERM handler is installed
        if budget["s"] is not None and used >= budget["s"] and not tj.terminated and started:
            tj.signal(signal.SIGCONT)
            tj.signal(signal.SIGTERM)
            tj.terminated = True
            log(f"{data}: dist_gan@time reached the budget ({used:.0f} of {budget['s']:.0f} {a.clock}-s): SIGTERM")
        elif a.clock == "cpu" and not tj.terminated:
            ahead = used >= limit
            if ahead and not tj.stopped:
                tj.signal(signal.SIGSTOP)
                tj.stopped = True
            elif not ahead and tj.stopped:
                tj.signal(signal.SIGCONT)
                tj.stopped = False

    todo = [] if reuse_only else [n for n in RUNS if n in a.runs and n not in jobs]
    def on_done(j) -> None:  # stamped at once, so a staged evaluation can pick it up while the others train
        stamp(j, runs[j.name], budget["s"] if j.name == "dist_gan@time" else None)

    if a.parallel:
        started = [start(n) for n in todo]
        wait_all(started, keeper, on_done=on_done)
    else:
        for n in todo:
            wait_all([start(n)], keeper, on_done=on_done)
            jobs[n].check()
    for n in todo:
        jobs[n].check()
    if "dist_gan@time" in jobs and budget["s"] is None:
        budget["s"] = textbook_budget(jobs["textbook"], runs["textbook"], a.clock)
    facts = {n: run_facts(j, runs[n], budget["s"] if n == "dist_gan@time" else None) for n, j in jobs.items()}
    return facts, {n: runs[n] for n in jobs}


# ------------------------------------------------------------------ evaluation
def evaluate_all(a: argparse.Namespace, data: str, shards: Path, runs: Dict[str, Path], evals: Path) -> Dict[str, Dict[str, Any]]:
    """``dist-gan eval`` per run into ``evals/<run folder>`` (``harness.evaluate``: the first alone
    while the reference statistics are uncached, finished identical evaluations reused, one that another
    invocation is running waited for); ``--parallel`` runs the rest side by side."""
    tasks = {n: H.eval_task(runs[n], shards, evals / run_folder(n, a.time_tag), n=a.n, seed=a.seed, data=data,
                            bn_recal=a.bn_recal) for n in runs}
    return H.evaluate(tasks, shards, a.n, threads=a.threads, parallel=a.parallel, log=log)


def row(name: str, facts: Dict[str, Any], rep: Dict[str, Any]) -> Dict[str, Any]:
    """One table row: the run's training facts, its scores, and how its evaluation ran (the report lives in the cache)."""
    return {
        "run": name, "train": facts, **H.scores(rep),
        "eval": {"command": rep.get("_eval_command"), "bn_recal": bool(rep["checkpoint"].get("bn_recal")),
                 "wall_s": rep.get("_eval_wall_s"), "cpu_s": rep.get("_eval_cpu_s"),
                 "report": H.shown_path(Path(rep["_out"]) / "report.json")},
    }


# ------------------------------------------------------------------ tables
def ratios(rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    tb = rows["textbook"]
    out: Dict[str, Any] = {}
    for name in ("dist_gan@img", "dist_gan@time"):
        r = rows.get(name)
        if r and tb.get("fid") and r.get("fid") is not None:
            out[f"fid_ratio_{name.split('@')[1]}"] = r["fid"] / tb["fid"]
    return out


def target_lines(rows: Dict[str, Dict[str, Any]]) -> List[str]:
    """The issue's targets, each with met / not met."""
    tb, out = rows["textbook"], []
    for name, goal in (("dist_gan@img", 0.4), ("dist_gan@time", 0.25)):
        r = rows.get(name)
        if r and r.get("fid") and tb.get("fid"):
            ratio = r["fid"] / tb["fid"]
            out.append(f"{name} FID <= {goal} x textbook: {ratio:.3f} ({'met' if ratio <= goal else 'NOT met'})")
    for name in ("dist_gan@img", "dist_gan@time"):
        r = rows.get(name)
        if r and r.get("gen_n") and r.get("ref_n"):
            # The issue's bound: "within 1 point of the real rate (<= 8 % when real is 7.1 %)", i.e. at most
            # 1 point above the reals'. Below the reals' rate means the detector finds a face in more samples
            # than in real photos (smooth, frontal, centred faces), which the target does not penalise.
            # Exact fractions: 17/1000 - 7/1000 is 1.0000000000000002 points in floats, which would fail the bound.
            gap = 100 * (Fraction(r["gen_no_face"], r["gen_n"]) - Fraction(r["ref_no_face"], r["ref_n"]))
            out.append(f"{name} no-face rate at most 1 point above the reals': {float(gap):+.1f} points ({'met' if gap <= 1 else 'NOT met'})")
    for name in ("dist_gan@img", "dist_gan@time"):
        r = rows.get(name)
        if r:
            v = r["leak"].get("verdict", "-")
            out.append(f"{name} leak: {v} ({'met' if v == 'no memorisation signal' else 'NOT met'})")
    return out


def markdown(results: Dict[str, Any]) -> str:
    lines = ["# dist_gan vs the textbook DCGAN: same images, same budget, same seed", ""]
    for data, block in results["datasets"].items():
        s = block["settings"]
        rows = block["rows"]
        ref = rows["textbook"]
        lines += [
            f"## {data}", "",
            f"Command: `{block['command']}`", "",
            f"Shards: `{block['shards']}` ({block['images']} images, {block['crop']} crop, 64 px); seed {s['seed']}; "
            f"image budget {s['kimg']} kimg; time budget = the textbook's {s['clock']} seconds; "
            f"{s['threads']} thread(s) per process; {'trainings run concurrently' if s['parallel'] else 'one at a time'}; "
            f"eval n = {s['n']} generated vs {s['n']} reference images (EMA G for dist_gan; the textbook has no EMA)"
            + ("; every G's BN statistics re-estimated from 4096 latents (`--bn-recal`)" if s.get("bn_recal") else "") + ".", "",
            f"dist_gan@img: `recipe={s['recipe']}{''.join(' ' + o for o in s['override'])}`; dist_gan@time adds "
            + (f"`{' '.join(s['time_override'])}`" if s["time_override"] else "nothing")
            + (f" and reads the same images packed as uint8 blocks of {BLOCK_SIZE} (`--time-format blocks`: no per-image "
               "decode in the stream; the packing, like the textbook's decode into memory, is outside the budget)"
               if s.get("time_format", "png") == "blocks" else "") + ".", "",
        ]
        table = []
        for name in RUNS:
            r = rows.get(name)
            if not r:
                continue
            t, leak = r["train"], r["leak"]
            ratio = f"{r['fid'] / ref['fid']:.3f}" if r.get("fid") and ref.get("fid") else "-"
            leak_s = (f"{leak.get('under_real_p1', '-')} / {fmt(leak.get('under_real_p1_expected'), '.1f')}, "
                      f"{leak.get('copies', '-')}, {leak.get('verdict', '-')}")
            table.append([name, f"{t['kimg']:.2f}", t.get("steps", "-"), fmt(t["wall_s"], ".0f"), fmt(t["cpu_s"], ".0f"),
                          fmt(r["fid"]), ratio, H.kid_cell(r["kid_mean"], r["kid_std"]), H.pr_cell(r),
                          f"{r['gen_no_face']}/{r['gen_n']}", leak_s])
        table.append(["reals (detector floor)", *["-"] * 8, f"{ref['ref_no_face']}/{ref['ref_n']}", "-"])
        lines += H.md_table(["run", "kimg", "steps", "train wall s", "train CPU s", "FID", "FID / textbook", "KID x1e3",
                             "P / R", "no face", "leak (under real p1 / expected, copies, verdict)"], table)
        tm = rows.get("dist_gan@time", {}).get("train", {})
        tbt = ref["train"]
        lines += ["", f"Time budget: the textbook's {s['clock']} seconds less its one-off decode of the shards into memory "
                  f"({tbt['cpu_s']:.0f} - {tbt.get('decode_cpu_s', 0):.0f} CPU s; wall {tbt['wall_s']:.0f} s) = {fmt(tm.get('budget_s'), '.0f')} s; "
                  f"dist_gan@time used {fmt(tm.get('cpu_s'), '.0f')} CPU s ({fmt(tm.get('wall_s'), '.0f')} s wall), "
                  f"stopped by the budget: {tm.get('stopped_by_budget')}."]
        lines += ["", "Targets: " + "; ".join(target_lines(rows))]
        det = ref.get("detector") or {}
        det_s = f"{det.get('name')}, {det.get('working_size')}" if isinstance(det, dict) else str(det)
        lines += ["", f"Detector: {det_s}. \"no face\": samples in which it finds no face, out of n; the reals row is its floor.", "",
                  f"![samples]({block['figure']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main
def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", choices=sorted(H.ZIPS), default=["celeba"])
    p.add_argument("--kimg", type=float, default=60.0, help="image budget (thousands of real images shown to D)")
    p.add_argument("--n", type=int, default=1000, help="generated (and reference) images per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default="celeba64", help="dist_gan recipe for both dist_gan runs")
    p.add_argument("--override", nargs="*", default=[], help="key=value for both dist_gan runs")
    p.add_argument("--time-override", nargs="*", default=["model.ngf=32", "model.ndf=32"],
                   help="key=value for the time-budgeted dist_gan run only")
    p.add_argument("--time-format", choices=("png", "blocks"), default="png",
                   help="shard format dist_gan@time streams (same images): blocks skips the per-image decode")
    p.add_argument("--time-tag", default="", help="suffix of the dist_gan@time run's folders (several time candidates at once)")
    p.add_argument("--bn-recal", action="store_true",
                   help="score every run (the textbook's too) with its G's BN statistics re-estimated (dist-gan eval --bn-recal)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="how the time budget is measured")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--parallel", action="store_true", help="train the three at once; evaluate two at a time")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="runs to train (others must be finished)")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) and stop: no evaluation or tables")
    p.add_argument("--eval-finished", action="store_true", help="only evaluate the runs already trained (staged runs)")
    p.add_argument("--crop", default="center", choices=("center", "celeba", "auto"), help="packing crop")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images (smoke tests)")
    p.add_argument("--tb-batch", type=int, default=128)
    p.add_argument("--tb-width", type=int, default=64, help="textbook ngf = ndf")
    p.add_argument("--cache", type=Path, default=None, help="shards and runs (outside the repo)")
    p.add_argument("--render-only", action="store_true", help="rewrite results.md from --out's results.json (no training, no eval)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality_vs_textbook")
    a = p.parse_args(argv)
    if a.time_tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", a.time_tag):
        p.error(f"--time-tag {a.time_tag!r}: use letters, digits, '_', '.' and '-' (it names folders)")
    return a


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_textbook":
        p = argparse.ArgumentParser()
        for k in ("--shards", "--run"):
            p.add_argument(k, required=True)
        p.add_argument("--kimg", type=float, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--batch", type=int, default=128)
        p.add_argument("--width", type=int, default=64)
        textbook_child(p.parse_args(argv[1:]))
        return {}
    a = parse(argv)
    if a.render_only:  # e.g. after a change to the tables' wording or the targets' judgement
        results = json.loads((a.out / "results.json").read_text())
        for data in results["datasets"].values():
            data["ratios"] = ratios(data["rows"])
        atomic_write_text(a.out / "results.md", markdown(results))
        return results
    cache = a.cache or cache_dir()
    command = "python benchmarks/quality_vs_textbook.py " + shlex.join(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    if results.get("schema") != SCHEMA:
        results = {"schema": SCHEMA, "datasets": {}}
    import torch

    for data in a.data:
        shards = packed_shards(data, cache, a.crop, a.limit)
        time_shards = packed_shards(data, cache, a.crop, a.limit, image_format=a.time_format)
        root = cache / "qvt_runs" / (data + (f"-limit{a.limit}" if a.limit else ""))
        t0 = time.perf_counter()
        if a.eval_finished:  # score the runs already trained (reused later by the full invocation); no tables
            facts, runs = train_all(a, data, shards, root, reuse_only=True, time_shards=time_shards)
            if runs:
                evaluate_all(a, data, shards, runs, cache / "qvt_evals" / root.name)
            log(f"{data}: evaluated the finished runs {sorted(runs)}")
            continue
        facts, runs = train_all(a, data, shards, root, time_shards=time_shards)
        if a.train_only:
            log(f"{data}: trained: " + json.dumps({n: {k: f.get(k) for k in ("kimg", "wall_s", "cpu_s")} for n, f in facts.items()}))
            continue
        if set(runs) != set(RUNS):
            raise SystemExit(f"evaluation needs all of {RUNS}; have {sorted(runs)}")
        reports = evaluate_all(a, data, shards, runs, cache / "qvt_evals" / root.name)
        rows = {n: row(n, facts[n], reports[n]) for n in RUNS}
        fig = f"samples_{data}.png"
        panels = [("reals", "training shards", H.real_grid(shards, GRID_N))]
        for n in RUNS:
            r = rows[n]
            panels.append((f"{n} ({r['train']['kimg']:.1f} kimg)", f"FID {fmt(r['fid'], '.0f')}  no face {r['gen_no_face']}/{r['gen_n']}", H.sample_grid(runs[n], GRID_N, a.bn_recal)))
        H.compose_figure(panels, a.out / fig, f"{data}: textbook DCGAN vs dist_gan (seed {a.seed}, same latents, dist_gan EMA G)")
        with open(shards / "manifest.json") as fh:
            manifest = json.load(fh)
        if res_path.is_file():  # another invocation (another data set) may have written since we started
            latest = json.loads(res_path.read_text())
            if latest.get("schema") == SCHEMA:
                results = latest
        results["datasets"][data] = {
            "command": command, "shards": H.shown_path(shards), "images": manifest.get("num_samples"), "crop": manifest.get("crop"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k not in ("data", "out", "cache")},
            "rows": rows, "ratios": ratios(rows), "figure": fig,
            "machine": {**machine_info(torch.device("cpu")), "torch_threads": a.threads},
            "seconds": round(time.perf_counter() - t0, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        H.write_tables(a.out, "results", results, markdown(results), [b["command"] for b in results["datasets"].values()])
        log(f"{data}: " + ", ".join(f"{n} FID {fmt(rows[n]['fid'])}" for n in RUNS) + f" -> {a.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
