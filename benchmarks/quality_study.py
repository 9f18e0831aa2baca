"""Quality study: every variant trained on the same shards, image budget and seed, then scored.

For each data set (``--data celeba anime``) the real zip in ``../shared/data`` is packed
once at 64 px into a cache folder (outside the repo); every variant is then trained with
``dist_gan/train.py`` (one process, or ``--procs K`` gloo ranks via accelerate) for
``--kimg`` thousand real images shown to D, with the same seed; and each run is scored by
``dist-gan eval RUN --fid --kid --detect --leak --ref SHARDS --n N`` (Haar cascade for
CelebA, the anime cascade for anime faces: the eval picks it from the shards' layout).

Writes, under ``--out`` (default ``benchmarks/results/quality_study``):

- ``table.md`` / ``table.json``: per data set, one row per variant, in the form of the
  paper's "can't detect face: DCGAN 281/1000, WGAN 123/1000, proposed 19/1000" table,
  beside FID, KID and the nearest-neighbour leak check, and the reals' own no-face count
  (the detector's floor);
- ``samples_<data>.png``: one 4x4 sample grid per variant side by side (same latents
  wherever the latent sizes agree), reals first;
- ``<data>/<variant>/report.json`` + ``report.md``: each ``dist-gan eval`` report (its
  grid.png/pairs.png are dropped unless ``--keep-eval-images``);
- ``command.txt``: the exact command line.

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
sys.path.insert(0, str(REPO))

SHARED = (REPO / ".." / "shared").resolve()
TRAIN_PY = REPO / "dist_gan" / "train.py"
ZIPS = {"celeba": "celeba-10k.zip", "anime": "anime-faces-20k.zip"}
DETECTOR = {"celeba": "haar (OpenCV frontal face)", "anime": "lbpcascade_animeface"}

# name -> (recipe, extra overrides)
VARIANTS: Dict[str, tuple] = {
    "dcgan64": ("dcgan64", []),
    "keras_improved": ("keras_improved", []),
    "wgan_gp": ("wgan_gp", []),
    "began": ("began", []),
    "dcgan64_sn_diffaug": ("dcgan64", ["model.spectral_norm=true", "train.diffaug=color,translation,cutout"]),
}
GRID_SEED = 1234
GRID_N = 16  # 4x4 per variant


def log(msg: str) -> None:
    print(f"[quality_study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ data
def packed_shards(data: str, cache: Path, limit: Optional[int]) -> Path:
    """``cache/shards/<data>-64[-limitN]``: packed once, reused while the manifest is complete."""
    from dist_gan.data.pack import pack

    src = SHARED / "data" / ZIPS[data]
    if not src.is_file():
        raise SystemExit(f"missing {src}: the study packs the real zips from ../shared/data")
    out = cache / "shards" / (f"{data}-64" + (f"-limit{limit}" if limit else ""))
    if (out / "manifest.json").is_file():
        return out
    log(f"packing {src.name} at 64 px -> {out}")
    pack(src, out, resolution=64, crop="auto", shard_size=2000, progress=False, limit=limit)
    return out


# ------------------------------------------------------------------ training
def train_args(variant: str, shards: Path, run: Path, a: argparse.Namespace) -> List[str]:
    recipe, extra = VARIANTS[variant]
    args = [
        f"recipe={recipe}", f"data={shards}", f"run_dir={run}", f"seed={a.seed}", f"train.kimg={a.kimg}",
        f"loader.workers={a.workers}", "log.tensorboard=false", "log.progress=false",
        f"log.sample_kimg={a.kimg}", f"log.snapshot_kimg={a.kimg}", "log.keep=1",
        f"train.ema_kimg={a.ema_kimg}",
    ]
    if a.batch:
        args.append(f"train.batch={a.batch}")
    if a.width:
        args += [f"model.ngf={a.width}", f"model.ndf={a.width}"]
    return args + extra + list(a.override)


def train_variant(variant: str, shards: Path, run: Path, a: argparse.Namespace) -> Dict[str, Any]:
    """Train (or reuse a finished run with the same arguments); returns timing facts."""
    from benchmarks.common import resolved_train_config
    from dist_gan.engine.checkpoint import list_checkpoints, load_checkpoint

    args = train_args(variant, shards, run, a)
    config = resolved_train_config(args)  # `recipe=dcgan64` reads the same after the recipe file changes
    stamp = run / "study_args.json"
    ckpts = list_checkpoints(run / "checkpoints")
    if ckpts and stamp.is_file():
        st = json.loads(stamp.read_text())
        if st["args"] == args and st.get("config") == config and load_checkpoint(ckpts[-1])["nimg"] >= round(a.kimg * 1000):
            log(f"{variant}: reusing {run}")
            return st["facts"]
    shutil.rmtree(run, ignore_errors=True)
    if a.procs > 1:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(a.procs), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN_PY), *args]
    else:
        cmd = [sys.executable, str(TRAIN_PY), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"ACCELERATE_USE_CPU": "1"} if a.procs > 1 else {})}
    log(f"{variant}: training {a.kimg} kimg: {shlex.join(cmd[-len(args):])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: training failed\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = records[-1] if records else {}
    facts = {"train_seconds": round(seconds, 1), "steps": last.get("step"), "kimg": last.get("kimg"),
             "img_per_s": round(a.kimg * 1000 / seconds, 1), "last_stats": {k: v for k, v in last.items() if k.startswith(("loss", "d_", "k_t", "m_global", "wdist", "gp"))}}
    stamp.write_text(json.dumps({"args": args, "config": config, "facts": facts}, indent=1))
    return facts


# ------------------------------------------------------------------ evaluation
def eval_command() -> List[str]:
    exe = shutil.which("dist-gan")
    return [exe] if exe else [sys.executable, "-m", "dist_gan.eval.run"]


def evaluate(run: Path, shards: Path, out: Path, a: argparse.Namespace, data: str) -> Dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*eval_command(), "eval", str(run), "--fid", "--kid", "--detect", "--leak", "--ref", str(shards),
           "--n", str(a.n), "--seed", str(a.seed), "--out", str(out), "--batch", str(min(a.n, 250))]
    if data == "anime":  # the eval picks the anime detector from the shards' layout; name its cascade
        cmd += ["--detector", "anime", "--cascade", str(SHARED / "detectors" / "lbpcascade_animeface.xml")]
    done = out / "report.json"
    if done.is_file() and done.stat().st_mtime >= (run / "study_args.json").stat().st_mtime:
        old = json.loads(done.read_text())  # same run, same protocol: reuse (a re-run only redraws the table)
        if old.get("options", {}).get("n") == a.n and old.get("options", {}).get("seed") == a.seed:
            log(f"reusing {done}")
            return old
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"eval failed: {shlex.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    report = json.loads((out / "report.json").read_text())
    report["_eval_seconds"] = round(time.perf_counter() - t0, 1)
    if not a.keep_eval_images:  # ~0.8 MB per variant; the side-by-side figure shows the samples
        for name in ("grid.png", "pairs.png"):
            (out / name).unlink(missing_ok=True)
    return report


# ------------------------------------------------------------------ figure
def sample_grid(run: Path, n: int = GRID_N):
    """16 EMA samples as a 4x4 uint8 grid; latents from GRID_SEED (same for equal latent sizes)."""
    import numpy as np
    import torch

    from dist_gan.engine.checkpoint import load_generator
    from dist_gan.imaging import to_uint8

    G, cfg = load_generator(run)
    z = torch.randn(n, int(cfg["model"]["nz"]), generator=torch.Generator().manual_seed(GRID_SEED))
    with torch.no_grad():
        imgs = np.asarray(to_uint8(G(z)))  # (n, H, W, 3)
    return tile(imgs)


def tile(imgs, cols: int = 4):
    """Tiles on white, 2 px apart, no outer border."""
    from dist_gan.imaging import make_grid

    return make_grid(imgs, nrow=cols, pad=2, fill=255)[2:-2, 2:-2]


def real_grid(shards: Path, n: int = GRID_N):
    import numpy as np

    from dist_gan.eval import reference as R

    imgs = R.load_images(R.open_reference(shards), n, 64, None)
    return tile(np.asarray(imgs)[:n])


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
    fig.save(path)


# ------------------------------------------------------------------ table
def row_for(variant: str, facts: Dict[str, Any], report: Dict[str, Any]) -> Dict[str, Any]:
    m = report["metrics"]
    det, kid, leak = m.get("detect", {}), m.get("kid", {}), m.get("leak", {})
    recipe, extra = VARIANTS[variant]
    return {
        "variant": variant, "recipe": recipe, "extra_overrides": extra,
        "kimg": report["checkpoint"]["kimg"], "train_seconds": facts.get("train_seconds"),
        "steps": facts.get("steps"), "img_per_s": facts.get("img_per_s"),
        "no_face": det.get("gen_no_face"), "n": det.get("gen_n"),
        "ref_no_face": det.get("ref_no_face"), "ref_n": det.get("ref_n"),
        "fid": m.get("fid", {}).get("fid"), "kid_mean": kid.get("kid_mean"), "kid_std": kid.get("kid_std"),
        "leak": {k: v for k, v in leak.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "eval_seconds": report.get("_eval_seconds", report.get("timing_seconds", {}).get("total")), "last_train_stats": facts.get("last_stats"),
    }


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


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
        f"Evaluation: `dist-gan eval RUN --fid --kid --detect --leak --ref SHARDS --n {a['n']}` on the EMA generator.",
        "",
    ]
    for data, block in results["datasets"].items():
        rows = block["rows"]
        missing = [v for v in a["variants"] if v not in {r["variant"] for r in rows}]
        lines += [
            f"## {data} ({block['detector']} detector; reference: {block['shards']})",
            "",
            *([f"*Partial: not run (the study was stopped before them): {', '.join(missing)}.*", ""] if missing else []),
            "Can't detect face: " + ", ".join(f"{r['variant']} {r['no_face']}/{r['n']}" for r in rows)
            + (f" (reals: {rows[0]['ref_no_face']}/{rows[0]['ref_n']})" if rows and rows[0]["ref_n"] else ""),
            "",
            "| variant | recipe + overrides | can't detect face | FID | KID x1e3 | NN copies | train s | img/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            rec = r["recipe"] + (" " + " ".join(r["extra_overrides"]) if r["extra_overrides"] else "")
            kid = f"{r['kid_mean'] * 1e3:.1f} ± {r['kid_std'] * 1e3:.1f}" if r["kid_mean"] is not None else "-"
            lines.append(f"| {r['variant']} | `{rec}` | {r['no_face']}/{r['n']} | {fmt(r['fid'])} | {kid} | "
                         f"{r['leak'].get('copies', '-')} | {fmt(r['train_seconds'], '.0f')} | {fmt(r['img_per_s'])} |")
        if rows and rows[0]["ref_n"]:
            lines.append(f"| reals (detector floor) | - | {rows[0]['ref_no_face']}/{rows[0]['ref_n']} | - | - | - | - | - |")
        lines += ["", f"![samples]({block['figure']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", choices=sorted(ZIPS), default=["celeba"])
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
    p.add_argument("--keep-eval-images", action="store_true", help="keep each eval's grid.png/pairs.png")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("DIST_GAN_CACHE", Path.home() / ".cache" / "dist_gan")) / "quality_study")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality_study")
    a = p.parse_args(argv)
    command = "python benchmarks/quality_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    a.out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                               "datasets": {}}
    t_all = time.perf_counter()

    def write_tables() -> None:  # after every variant: an interrupted study still leaves a valid (partial) table
        results["total_seconds"] = round(time.perf_counter() - t_all, 1)
        (a.out / "table.json").write_text(json.dumps(results, indent=1))
        (a.out / "table.md").write_text(markdown(results))
        (a.out / "command.txt").write_text(command + "\n")

    for data in a.data:
        shards = packed_shards(data, a.cache, a.limit)
        rows, panels = [], [("reals", data, real_grid(shards))]
        fig = f"samples_{data}.png"
        results["datasets"][data] = {"shards": str(shards), "detector": DETECTOR[data], "rows": rows, "figure": fig}
        for variant in a.variants:
            run = a.cache / "runs" / f"{data}-{variant}"
            facts = train_variant(variant, shards, run, a)
            report = evaluate(run, shards, a.out / data / variant, a, data)
            row = row_for(variant, facts, report)
            rows.append(row)
            log(f"{data}/{variant}: no face {row['no_face']}/{row['n']}, FID {fmt(row['fid'])}")
            panels.append((variant, f"no face {row['no_face']}/{row['n']}  FID {fmt(row['fid'], '.0f')}", sample_grid(run)))
            compose_figure(panels, a.out / fig, f"{data}, {a.kimg} kimg per variant, seed {a.seed} (EMA G, fixed latents)")
            write_tables()
    log(f"wrote {a.out / 'table.md'} ({time.perf_counter() - t_all:.0f} s)")
    return results


if __name__ == "__main__":
    main()
