"""Quality study: every variant trained on the same shards, image budget and seed, then scored.

For each data set (``--data celeba anime``) the real zip in ``../shared/data`` is packed
once at 64 px into a cache folder (outside the repo); every variant is then trained with
``dist_gan/train.py`` (one process, or ``--procs K`` gloo ranks via accelerate) for
``--kimg`` thousand real images shown to D, with the same seed; and each run is scored by
``dist-gan eval RUN --fid --kid --pr --detect --leak --ref SHARDS --n N`` (MTCNN for
CelebA, the anime LBP cascade for anime faces: ``harness.detector_args``). Packing, evaluation,
checkpoints, the sample figure and the table files go through ``benchmarks/harness.py``, as in
``quality_vs_textbook.py``.

Writes, under ``--out`` (default ``benchmarks/results/quality_study``):

- ``table.md`` / ``table.json``: per data set, one row per variant, in the form of the
  paper's "can't detect face: DCGAN 281/1000, WGAN 123/1000, proposed 19/1000" table,
  beside FID, KID and the nearest-neighbour leak check, and the reals' own no-face count
  (the detector's floor);
- ``samples_<data>.png``: one 4x4 sample grid per variant side by side (same latents
  wherever the latent sizes agree), reals first;
- ``command.txt``: the exact command line.

Runs and their ``dist-gan eval`` reports stay in ``--cache`` (``runs/<data>-<variant>``,
``evals/<data>/<variant>``), where a rerun reuses them. A run over some of the data sets keeps
the other data sets' blocks of the table it finds in ``--out``, so the two data sets can be
run one at a time (or as two processes) and end in one table.

Variants: the recipes ``dcgan64``, ``keras_improved``, ``wgan_gp``, ``began`` and
``dcgan64`` with both D options (``model.spectral_norm=true train.diffaug=color,translation,cutout``).
``dcgan128`` is left out: the study's data is packed at 64 px.

What the committed results ran (8 kimg per variant; ~1 h 42 min on 2 cores with the two data sets
run as two one-thread processes, see ``benchmarks/results/quality_study/command.txt``)::

    python benchmarks/quality_study.py --data celeba anime --kimg 8 --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness as H  # noqa: E402
from benchmarks.harness import fmt  # noqa: E402
from dist_gan.files import atomic_write_json  # noqa: E402

# name -> (recipe, extra overrides)
VARIANTS: Dict[str, tuple] = {
    "dcgan64": ("dcgan64", []),
    "keras_improved": ("keras_improved", []),
    "wgan_gp": ("wgan_gp", []),
    "began": ("began", []),
    "dcgan64_sn_diffaug": ("dcgan64", ["model.spectral_norm=true", "train.diffaug=color,translation,cutout"]),
}

log = H.make_log("quality_study")


# ------------------------------------------------------------------ data
def packed_shards(data: str, cache: Path, limit: Optional[int]) -> Path:
    """``cache/shards/<data>-64[-limitN]`` (``auto`` crop), packed once and reused while its manifest exists."""
    out = cache / "shards" / (f"{data}-64" + (f"-limit{limit}" if limit else ""))
    return H.pack_once(H.shared_zip(data), out, crop="auto", limit=limit, log=log)


# ------------------------------------------------------------------ training
def train_args(variant: str, shards: Path, run: Path, a: argparse.Namespace) -> List[str]:
    recipe, extra = VARIANTS[variant]
    args = [*H.train_args(recipe, shards, run, a.seed, a.kimg, a.workers), f"train.ema_kimg={a.ema_kimg}"]
    if a.batch:
        args.append(f"train.batch={a.batch}")
    if a.width:
        args += [f"model.ngf={a.width}", f"model.ndf={a.width}"]
    return args + extra + list(a.override)


def train_variant(variant: str, shards: Path, run: Path, a: argparse.Namespace) -> Dict[str, Any]:
    """Train (or reuse a finished run with the same arguments and resolved config); returns timing facts."""
    args = train_args(variant, shards, run, a)
    config = H.resolved_train_config(args)  # `recipe=dcgan64` reads the same after the recipe file changes
    stamp = run / "study_args.json"
    ck = H.newest_checkpoint(run)
    if ck is not None and stamp.is_file():
        st = json.loads(stamp.read_text())
        if st["args"] == args and st.get("config") == config and H.checkpoint_nimg(ck) >= round(a.kimg * 1000):
            log(f"{variant}: reusing {run}")
            return st["facts"]
    shutil.rmtree(run, ignore_errors=True)
    if a.procs > 1:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(a.procs), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(H.TRAIN_PY), *args]
    else:
        cmd = H.train_cmd(args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"ACCELERATE_USE_CPU": "1"} if a.procs > 1 else {})}
    log(f"{variant}: training {a.kimg} kimg: {shlex.join(cmd[-len(args):])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: training failed\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    last = H.last_metrics(run)
    facts = {"train_seconds": round(seconds, 1), "steps": last.get("step"), "kimg": last.get("kimg"),
             "img_per_s": round(a.kimg * 1000 / seconds, 1), "last_stats": {k: v for k, v in last.items() if k.startswith(("loss", "d_", "k_t", "m_global", "wdist", "gp"))}}
    atomic_write_json(stamp, {"args": args, "config": config, "facts": facts}, indent=1)
    return facts


# ------------------------------------------------------------------ evaluation
def evaluate(run: Path, shards: Path, out: Path, a: argparse.Namespace, data: str) -> Dict[str, Any]:
    """``dist-gan eval`` of one variant into ``out`` (in the cache; reused while the command and the
    checkpoint are unchanged)."""
    task = H.eval_task(run, shards, out, n=a.n, seed=a.seed, data=data)
    return H.evaluate({run.name: task}, shards, a.n, log=log)[run.name]


def detector_name(reports: List[Dict[str, Any]]) -> str:
    """The detector the reports name (one per data set, ``harness.detector_args``), as the table heads it."""
    names = {str((H.scores(r)["detector"] or {}).get("name", "?")) for r in reports}
    return ", ".join(sorted(names)) or "?"


# ------------------------------------------------------------------ table
def row_for(variant: str, facts: Dict[str, Any], report: Dict[str, Any]) -> Dict[str, Any]:
    s = H.scores(report, leak_types=(int, float))
    recipe, extra = VARIANTS[variant]
    return {
        "variant": variant, "recipe": recipe, "extra_overrides": extra,
        "kimg": report["checkpoint"]["kimg"], "train_seconds": facts.get("train_seconds"),
        "steps": facts.get("steps"), "img_per_s": facts.get("img_per_s"),
        "no_face": s["gen_no_face"], "n": s["gen_n"], "ref_no_face": s["ref_no_face"], "ref_n": s["ref_n"],
        "fid": s["fid"], "kid_mean": s["kid_mean"], "kid_std": s["kid_std"], "precision": s["precision"],
        "recall": s["recall"], "leak": s["leak"],
        "eval_seconds": report.get("_eval_wall_s"), "last_train_stats": facts.get("last_stats"),
    }


def markdown(results: Dict[str, Any]) -> str:
    a = results["args"]
    lines = [
        "# Quality study: every variant on the same shards, budget and seed",
        "",
        f"**Budget: {a['kimg']} kimg per variant, on a 2-core CPU.** That is early training, far from "
        "convergence (the papers train for hundreds of kimg), so the numbers rank how fast each design "
        "starts to draw faces, not where it ends. The budget is `--kimg`; the same command with a larger "
        "one (or on a GPU) extends the study.",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Common settings: seed {a['seed']}, 64 px, global batch {a['batch'] or 'per recipe'}, "
        f"G/D width (ngf=ndf) {a['width'] or 'per recipe'}, EMA half-life {a['ema_kimg']} kimg, "
        f"{a['procs']} process(es); each recipe keeps its own loss, optimiser and D:G schedule "
        "(wgan_gp: 5 critic steps per G step, so its G takes 1/5 as many steps for the same images).",
        f"Evaluation: `dist-gan eval RUN --fid --kid --pr --detect --leak --ref SHARDS --n {a['n']}` on the EMA generator; "
        "P / R: improved precision and recall (k = 3) against as many reals.",
        "",
    ]
    for data, block in results["datasets"].items():
        rows = block["rows"]
        missing = [v for v in a["variants"] if v not in {r["variant"] for r in rows}]
        reals = f"{rows[0]['ref_no_face']}/{rows[0]['ref_n']}" if rows and rows[0]["ref_n"] else None
        lines += [
            f"## {data} ({block['detector']} detector; reference: {block['shards']})",
            "",
            *([f"*Partial: not run (the study was stopped before them): {', '.join(missing)}.*", ""] if missing else []),
            *([f"Machine: {block['machine']}; {block['threads']} thread(s) per training; train s and img/s are that "
               "machine's.", ""] if block.get("machine") else []),
            "Can't detect face: " + ", ".join(f"{r['variant']} {r['no_face']}/{r['n']}" for r in rows)
            + (f" (reals: {reals})" if reals else ""),
            "",
        ]
        table = [[r["variant"], f"`{r['recipe'] + (' ' + ' '.join(r['extra_overrides']) if r['extra_overrides'] else '')}`",
                  f"{r['no_face']}/{r['n']}", fmt(r["fid"]), H.kid_cell(r["kid_mean"], r["kid_std"]), H.pr_cell(r),
                  r["leak"].get("copies", "-"), fmt(r["train_seconds"], ".0f"), fmt(r["img_per_s"])] for r in rows]
        if reals:
            table.append(["reals (detector floor)", "-", reals, "-", "-", "-", "-", "-", "-"])
        lines += H.md_table(["variant", "recipe + overrides", "can't detect face", "FID", "KID x1e3", "P / R", "NN copies",
                             "train s", "img/s"], table)
        lines += ["", f"![samples]({block['figure']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main
def with_data(argv: List[str], data: List[str]) -> List[str]:
    """``argv`` with its ``--data`` values replaced by ``data``: the one command that rebuilds a merged table
    (every finished run and evaluation is reused)."""
    out, skip = [], False
    for x in argv:
        if x == "--data" or x.startswith("--data="):
            skip = x == "--data"
            continue
        if skip and not x.startswith("--"):
            continue
        skip = False
        out.append(x)
    return ["--data", *data, *out]


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", choices=sorted(H.ZIPS), default=["celeba"])
    p.add_argument("--kimg", type=float, default=2.0, help="training budget per variant (real images shown to D)")
    p.add_argument("--n", type=int, default=500, help="generated (and reference) images per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--batch", type=int, default=0, help="one global batch for every variant (0: each recipe's own)")
    p.add_argument("--width", type=int, default=0, help="ngf=ndf for every variant (0: each recipe's own)")
    p.add_argument("--ema-kimg", type=float, default=0.5, help="EMA half-life (recipes use 10, far beyond a tiny budget)")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images of each zip")
    p.add_argument("--procs", type=int, default=1, help="training processes (gloo ranks via accelerate launch)")
    p.add_argument("--workers", type=int, default=1, help="loader workers per rank")
    p.add_argument("--override", nargs="*", default=[], help="extra key=value for every variant")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("DIST_GAN_CACHE", Path.home() / ".cache" / "dist_gan")) / "quality_study")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality_study")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv_list)

    a.out.mkdir(parents=True, exist_ok=True)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    results: Dict[str, Any] = {"command": "", "args": args, "datasets": {}}
    kept = a.out / "table.json"
    if kept.is_file():  # the other data sets' blocks, where they ran with the same settings
        old = json.loads(kept.read_text())
        same = {k: v for k, v in old.get("args", {}).items() if k != "data"} == {k: v for k, v in args.items() if k != "data"}
        results["datasets"] = {d: b for d, b in old.get("datasets", {}).items() if same and d not in a.data}
    every = [d for d in sorted(H.ZIPS) if d in a.data or d in results["datasets"]]
    args["data"] = every
    results["command"] = command = "python benchmarks/quality_study.py " + shlex.join(with_data(argv_list, every))
    t_all = time.perf_counter()

    for data in a.data:
        t_data = time.perf_counter()
        shards = packed_shards(data, a.cache, a.limit)
        rows, reports, panels = [], [], [("reals", data, H.real_grid(shards))]
        fig = f"samples_{data}.png"
        block = {"shards": H.shown_path(shards), "detector": "?", "rows": rows, "figure": fig, "machine": H.machine(),
                 "threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)}
        results["datasets"] = dict(sorted({**results["datasets"], data: block}.items()))  # the order of ``every``
        for variant in a.variants:
            run = a.cache / "runs" / f"{data}-{variant}"
            facts = train_variant(variant, shards, run, a)
            reports.append(evaluate(run, shards, a.cache / "evals" / data / variant, a, data))
            block["detector"] = detector_name(reports)
            row = row_for(variant, facts, reports[-1])
            rows.append(row)
            log(f"{data}/{variant}: no face {row['no_face']}/{row['n']}, FID {fmt(row['fid'])}")
            panels.append((variant, f"no face {row['no_face']}/{row['n']}  FID {fmt(row['fid'], '.0f')}", H.sample_grid(run)))
            H.compose_figure(panels, a.out / fig, f"{data}, {a.kimg} kimg per variant, seed {a.seed} (EMA G, fixed latents)")
            # after every variant: an interrupted study still leaves a valid (partial) table
            block["seconds"] = round(time.perf_counter() - t_data, 1)
            H.write_tables(a.out, "table", results, markdown(results), [command])
    log(f"wrote {a.out / 'table.md'} ({time.perf_counter() - t_all:.0f} s)")
    return results


if __name__ == "__main__":
    main()
