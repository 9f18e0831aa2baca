"""DCGAN against StyleGAN2 in one trainer: equal images and equal CPU time, on 2 gloo ranks.

One of the studies this product grew from compares DCGAN with StyleGAN2 on face sets. Here both
train on the same shards, seed and image budget, each with its own recipe (``--rows``):

- ``dcgan``: the project's tuned DCGAN (``celeba64`` on CelebA, ``anime64`` on the anime set);
- ``stylegan2``: ``stylegan2_64`` (mapping network, modulated convs, noise, skip RGB, residual D
  with minibatch std, lazy R1, style mixing).

Every run trains on 2 real gloo ranks (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu
--num_processes 2``, one thread each; ``final.json`` must say world size 2) for ``--kimg``, with the
FID of G_ema tracked ``--fid-points`` times (``log.fid_kimg``, n = ``--fid-n``). The end of each run
is scored by the evaluator: ``dist-gan eval RUN --fid --kid --pr --detect --leak -n N``.

Equal CPU time: the DCGAN's training seconds (FID measurements excluded) at the end of its run; the
StyleGAN2 row is read at the last FID point it reached within that time (its kimg and FID).

``--resume-check`` also trains ``stylegan2_64`` at recipe size on 2 ranks for 2 x ``--resume-kimg``
straight, and in two launches cut by a resume, and compares every tensor of G, D and G_ema.

Writes under ``--out`` (default ``benchmarks/results/stylegan2_vs_dcgan``): ``results.json``,
``results.md``, ``fid_curves.png`` (FID against kimg and against training minutes),
``samples_<data>.png`` (reals, then each row's final G_ema), ``command.txt``. A finished run
(same command) is reused, so the study can grow data set by data set (``--merge``).

    python benchmarks/stylegan2_vs_dcgan.py --data celeba anime --kimg 60 --merge --resume-check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as H  # noqa: E402
from dist_gan.engine.monitor import read_metrics  # noqa: E402

DEFAULT_OUT = H.REPO / "benchmarks" / "results" / "stylegan2_vs_dcgan"
RECIPES = {"dcgan": {"celeba": "celeba64", "anime": "anime64"}, "stylegan2": {"celeba": "stylegan2_64", "anime": "stylegan2_64"}}


def curve_of(run: Path) -> List[Dict[str, float]]:
    """The run's FID points with the training seconds before each (its FID measurements taken out)."""
    points, fid_s = [], 0.0
    for r in read_metrics(run / "metrics.jsonl"):
        if "fid" in r:
            points.append({"kimg": r["kimg"], "fid": r["fid"], "fid_s": r["fid_s"], "train_s": r["time"] - fid_s})
            fid_s += r["fid_s"]
    return points


def at_time(curve: List[Dict[str, float]], seconds: float) -> Optional[Dict[str, float]]:
    """The last FID point reached within ``seconds`` of training, None when the first came later."""
    within = [p for p in curve if p["train_s"] <= seconds]
    return within[-1] if within else None


def evaluate(run: Path, shards: Path, data: str, n: int) -> Dict[str, Any]:
    """The evaluator on the run's last checkpoint: FID, KID, P&R, detectability and leak, n samples."""
    rep, cmd = H.eval_once(run, run / "eval_final", ["--fid", "--kid", "--pr", "--detect", "--leak", "--ref", str(shards),
                                                      "-n", str(n), *H.detector_args(data)], "eval")
    pr = rep["metrics"].get("pr", {})
    return {**H.scores(rep), "precision": pr.get("precision"), "recall": pr.get("recall"), "command": H.shown_command(cmd)}


def run_row(row: str, data: str, shards: Path, work: Path, kimg: float, seed: int, fid_n: int, fid_points: int,
            n: int, extra: Sequence[str]) -> Dict[str, Any]:
    """Train one row on 2 ranks (reused when the same command finished before), then score its end."""
    recipe = RECIPES[row][data]
    run = work / data / f"{row}-s{seed}"
    args = [f"recipe={recipe}", f"data={shards}", f"run_dir={run}", f"seed={seed}", f"train.kimg={kimg}",
            "loader.workers=1", "log.tensorboard=false", "log.progress=false", f"log.fid_kimg={kimg / fid_points:g}",
            f"log.fid_n={fid_n}", f"log.sample_kimg={kimg}", f"log.snapshot_kimg={kimg}", "log.keep=1", *extra]
    print(f"{data} {row}: {recipe}, {kimg:g} kimg on 2 ranks", flush=True)
    wall, final = H.train_two_ranks(args, run, work / data / f"{row}-s{seed}.log", f"{data} {row}")
    curve = curve_of(run)
    from dist_gan.engine.checkpoint import load_checkpoint

    ck = load_checkpoint(run)
    params = {net: sum(v.numel() for v in ck[net].values()) for net in ("G", "D")}
    return {"data": data, "row": row, "recipe": recipe, "seed": seed, "kimg": kimg, "fid_n": fid_n, "curve": curve,
            "train_s": curve[-1]["train_s"] if curve else None, "cpu_wall_s": wall, "world_size": final["world_size"],
            "img_per_s": H.last_metrics(run).get("img_per_s"), "params": params, "eval": evaluate(run, shards, data, n),
            "run": H.shown_path(run), "command": "ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 " + H.shown_command(H.two_rank_cmd(args))}


def resume_check(shards: Path, work: Path, kimg: float, extra: Sequence[str]) -> Dict[str, Any]:
    """stylegan2_64 at recipe size on 2 ranks: ``2 kimg`` straight against ``kimg`` + resume to ``2 kimg``."""
    import torch

    from dist_gan.engine.checkpoint import load_checkpoint

    root = work / "resume_check"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    base = ["recipe=stylegan2_64", f"data={shards}", "seed=0", "loader.workers=1", "log.tensorboard=false",
            "log.progress=false", f"log.snapshot_kimg={kimg}", f"log.sample_kimg={2 * kimg}", "log.keep=2", *extra]
    a, b = root / "straight", root / "resumed"
    H.launch_two_ranks([*base, f"run_dir={a}", f"train.kimg={2 * kimg}"], root / "straight.log")
    H.launch_two_ranks([*base, f"run_dir={b}", f"train.kimg={kimg}"], root / "resumed.log")
    H.launch_two_ranks([*base, f"run_dir={b}", f"train.kimg={2 * kimg}", "resume=auto"], root / "resumed.log")
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    differing = [f"{net}.{k}" for net in ("G", "D", "G_ema") for k in sa[net] if not torch.equal(sa[net][k], sb[net][k])]
    tensors = sum(len(sa[net]) for net in ("G", "D", "G_ema"))
    return {"kimg": 2 * kimg, "cut_at_kimg": kimg, "nimg": [sa["nimg"], sb["nimg"]], "tensors": tensors,
            "differing": differing, "bit_for_bit": not differing and sa["nimg"] == sb["nimg"],
            "world_size": json.loads((b / "final.json").read_text())["world_size"]}


def key(r: Dict[str, Any]) -> str:
    return f"{r['data']}/{r['row']}/s{r['seed']}"


def equal_time(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per data set with both rows: StyleGAN2 read at the DCGAN's training seconds."""
    rows = []
    for data in sorted({r["data"] for r in results["runs"].values()}):
        dc = [r for r in results["runs"].values() if r["data"] == data and r["row"] == "dcgan"]
        sg = [r for r in results["runs"].values() if r["data"] == data and r["row"] == "stylegan2"]
        for d, s in zip(dc, sg):
            p = at_time(s["curve"], d["train_s"])
            rows.append({"data": data, "seed": d["seed"], "train_s": d["train_s"], "dcgan_kimg": d["kimg"],
                         "dcgan_fid": d["curve"][-1]["fid"], "stylegan2_kimg": p["kimg"] if p else None,
                         "stylegan2_fid": p["fid"] if p else None, "stylegan2_full_s": s["train_s"]})
    return rows


def render(results: Dict[str, Any]) -> str:
    lines = ["# DCGAN against StyleGAN2: equal images and equal CPU time, 2 gloo ranks", "",
             f"Every run: its recipe as shipped, {results['kimg']:g} kimg on 2 gloo ranks (one thread each), seed "
             f"{results['seed']}, 64 px. Scored at the end by `dist-gan eval RUN --fid --kid --pr --detect --leak -n "
             f"{results['n']}` against the training shards (G_ema; MTCNN on CelebA, the LBP cascade on anime; no face: "
             f"samples / as many reals). Train min: training alone, the FID tracking taken out. Machine: "
             f"{results['machine']}.", "", "## Equal images", ""]
    rows = []
    for r in sorted(results["runs"].values(), key=lambda r: (r["data"], r["row"], r["seed"])):
        e = r["eval"]
        leak = e["leak"]
        rows.append((r["data"], r["row"], f"`{r['recipe']}`", r["seed"], H.fmt(r["kimg"], "g"),
                     f"{(r['params']['G'] + r['params']['D']) / 1e6:.2f}M", H.fmt(r["train_s"] / 60, ".1f"),
                     H.fmt(r["img_per_s"], ".0f"), H.fmt(e["fid"], ".1f"), H.kid_cell(e["kid_mean"], e["kid_std"]),
                     H.fmt(e["precision"], ".3f"), H.fmt(e["recall"], ".3f"),
                     f"{100 * e['gen_no_face'] / e['gen_n']:.1f} / {100 * e['ref_no_face'] / e['ref_n']:.1f}",
                     leak.get("verdict", "-")))
    lines += H.md_table(("data", "row", "recipe", "seed", "kimg", "params G+D", "train min", "img/s", "FID", "KID x1e3",
                         "precision", "recall", "no face % (gen / real)", "leak"), rows)
    eq = equal_time(results)
    if eq:
        lines += ["", "## Equal CPU time", "",
                  f"StyleGAN2 read at the DCGAN's training time: its last in-training FID point within it "
                  f"(n = {results['fid_n']}, every {results['kimg'] / results['fid_points']:g} kimg).", ""]
        lines += H.md_table(("data", "seed", "train min", "DCGAN kimg", "DCGAN FID", "StyleGAN2 kimg", "StyleGAN2 FID",
                             "StyleGAN2 min for the full budget"),
                            [(q["data"], q["seed"], H.fmt(q["train_s"] / 60, ".1f"), H.fmt(q["dcgan_kimg"], "g"),
                              H.fmt(q["dcgan_fid"], ".1f"), H.fmt(q["stylegan2_kimg"], ".1f"), H.fmt(q["stylegan2_fid"], ".1f"),
                              H.fmt(q["stylegan2_full_s"] / 60, ".1f")) for q in eq])
    rc = results.get("resume_check")
    if rc:
        lines += ["", "## Resume at recipe size", "",
                  f"`stylegan2_64` on 2 gloo ranks (world size {rc['world_size']}) for {rc['kimg']:g} kimg straight, and cut "
                  f"at {rc['cut_at_kimg']:g} kimg by a resume (`resume=auto`): {rc['tensors'] - len(rc['differing'])} of "
                  f"{rc['tensors']} tensors of G, D and G_ema equal bit for bit"
                  + (" (the whole state)." if rc["bit_for_bit"] else f"; differing: {', '.join(rc['differing'][:8])}.")]
    lines += ["", "Commands: `command.txt` (one per run, in table order)."]
    if results.get("notes"):
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], out: Path) -> None:
    """FID against kimg (left) and against training minutes (right), one line per run."""
    H.plot_fid_curves(results, out, order=lambda r: r["row"], label=lambda r: f"{r['row']} ({r['recipe']}) s{r['seed']}",
                      right_x=lambda r, p: p["train_s"] / 60, right_label="training minutes (2 gloo ranks, 2 cores)",
                      legend_size=8)


def figure(results: Dict[str, Any], out: Path, shards: Dict[str, Path]) -> None:
    """Per data set: reals, then each row's final G_ema (the same latent seed for every panel)."""
    for data, path in shards.items():
        runs = sorted((r for r in results["runs"].values() if r["data"] == data and r["seed"] == results["seed"]),
                      key=lambda r: r["row"])
        if not runs:
            continue
        panels = [("reals", data, H.real_grid(path))]
        panels += [(r["row"], f"{r['recipe']}: FID {r['eval']['fid']:.0f} at {r['kimg']:g} kimg", H.sample_grid(H.recorded_path(r["run"])))
                   for r in runs]
        H.compose_figure(panels, out / f"samples_{data}.png", f"{data}: DCGAN and StyleGAN2 at equal images")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["celeba"], choices=sorted(H.ZIPS))
    p.add_argument("--rows", nargs="+", default=["dcgan", "stylegan2"], choices=sorted(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kimg", type=float, default=60.0, help="image budget of every run")
    p.add_argument("--fid-n", type=int, default=1000, help="samples per in-training FID (log.fid_n)")
    p.add_argument("--fid-points", type=int, default=6, help="FID measurements per run (log.fid_kimg = kimg / this)")
    p.add_argument("-n", "--n", type=int, default=1000, help="samples (and reference images) of the final evaluation")
    p.add_argument("--resume-check", action="store_true", help="also the 2-rank stylegan2_64 resume check at recipe size")
    p.add_argument("--resume-kimg", type=float, default=1.0, help="the resume check's cut (it trains twice this)")
    p.add_argument("--override", nargs="*", default=[], help="extra key=value for every run (smoke runs)")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images (smoke runs)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("DIST_GAN_BENCH_CACHE", Path.home() / ".cache" / "dist_gan_bench")) / "stylegan2_vs_dcgan")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--merge", action="store_true", help="keep the runs already in OUT/results.json")
    a = p.parse_args(argv)
    results: Dict[str, Any] = {"kimg": a.kimg, "seed": a.seed, "fid_n": a.fid_n, "fid_points": a.fid_points, "n": a.n,
                               "limit": a.limit, "override": a.override, "machine": H.machine(), "runs": {}}
    previous = a.out / "results.json"
    if a.merge and previous.is_file():
        kept = json.loads(previous.read_text())
        same = ("kimg", "fid_n", "fid_points", "n", "limit", "override")
        if any(kept.get(k) != results[k] for k in same):
            raise SystemExit(f"--merge: {previous} was measured with other {', '.join(same)}")
        results["runs"], results["notes"] = kept["runs"], kept.get("notes", [])
        if kept.get("resume_check"):
            results["resume_check"] = kept["resume_check"]
    shards = {d: H.pack_once(H.shared_zip(d), a.work / (f"shards-{d}-64" + (f"-{a.limit}" if a.limit else "")),
                             crop="auto", limit=a.limit, resolution=64) for d in a.data}
    a.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        H.write_tables(a.out, "results", results, render(results), [x["command"] for x in results["runs"].values()])
        plot(results, a.out)

    for data in a.data:
        for row in a.rows:
            r = run_row(row, data, shards[data], a.work, a.kimg, a.seed, a.fid_n, a.fid_points, a.n, a.override)
            results["runs"][key(r)] = r
            print(f"{key(r)}: FID {r['eval']['fid']:.1f} at {r['kimg']:g} kimg, {r['train_s'] / 60:.1f} train min", flush=True)
            save()
    if a.resume_check:
        results["resume_check"] = rc = resume_check(shards[a.data[0]], a.work, a.resume_kimg, a.override)
        print(f"resume check: {'bit for bit' if rc['bit_for_bit'] else 'DIFFERS: ' + ', '.join(rc['differing'][:5])}", flush=True)
        save()
    figure(results, a.out, shards)
    print(f"wrote {a.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
