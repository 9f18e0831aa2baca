"""A short real training run, wall-clock images/s including data: dist_gan vs the textbook trainer.

- dist_gan: the real trainer (``python dist_gan/train.py recipe=dcgan64 data=<shards> ...``)
  on the CelebA shards, its own loader (``StreamLoader``) and fast path; the figure is
  the trainer's wall clock between its first and last log points (so start-up,
  the first log window and the final checkpoint are excluded, data loading is not):
  ``(kimg_last - kimg_first) * 1000 / (time_last - time_first)`` from ``metrics.jsonl``;
- textbook: ``benchmarks.textbook.train_textbook`` (the PyTorch DCGAN example's loop)
  fed by ImageFolder + DataLoader over the same 64x64 PNGs, same worker count,
  timed after the same number of warm-up steps.

Both run as subprocesses, alternating (dist_gan, textbook, dist_gan, ...), the median
of ``--repeats`` reported. Batch 128 on CPU, 512 on GPU by default. The shards and
the ImageFolder tree come from ``loader.py``'s cache (outside the repo).

    python benchmarks/end_to_end.py                  # CPU: batch 128, 25 steps per run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.harness import shown_path  # noqa: E402
from benchmarks.loader import DEFAULT_SRC, ensure_imagefolder, ensure_shards  # noqa: E402


def run_dist_gan(shards: Path, batch: int, steps: int, every: int, workers: int, device: str, overrides: List[str], timeout: float) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dg_e2e_") as tmp:
        run_dir = Path(tmp) / "run"
        kimg = steps * batch / 1000
        cmd = [sys.executable, str(common.REPO / "dist_gan" / "train.py"), "recipe=dcgan64", f"data={shards}",
               f"run_dir={run_dir}", f"train.batch={batch}", f"train.kimg={kimg}", f"loader.workers={workers}",
               f"log.every={every}", "log.sample_kimg=1000000", "log.snapshot_kimg=1000000",
               "log.tensorboard=false", "log.progress=false", *overrides]
        proc, wall = _run(cmd, device, timeout, "dist_gan")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(records) < 2:
        raise RuntimeError(f"need >= 2 log points, got {len(records)}: raise --steps or lower --every")
    first, last = records[0], records[-1]
    rate = (last["kimg"] - first["kimg"]) * 1000 / (last["time"] - first["time"])
    return {"img_per_s": rate, "steps_timed": last["step"] - first["step"], "process_wall_s": wall,
            "loss_d_last": last.get("loss_d"), "loss_g_last": last.get("loss_g")}


def _run(cmd, device: str, timeout: float, what: str):
    """Run one trainer in its own process (GPU hidden for CPU runs); (process, wall seconds)."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=common.REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{what} run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, wall


def run_textbook(root: Path, batch: int, steps: int, warmup: int, workers: int, device: str, timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-textbook", str(root), "--batch", str(batch),
           "--steps", str(steps), "--every", str(warmup), "--workers", str(workers), "--device", device]
    proc, wall = _run(cmd, device, timeout, "textbook")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def _worker_textbook(args: argparse.Namespace) -> None:
    import torch

    from benchmarks.textbook import train_textbook

    device = common.pick_device(args.device)
    res = train_textbook(args.worker_textbook, args.batch, args.steps - args.every, args.workers, device, warmup=args.every)
    stats = res.pop("last")
    res.update(steps_timed=res.pop("iters"), loss_d_last=stats["loss_d"], loss_g_last=stats["loss_g"], threads=torch.get_num_threads())
    print(json.dumps(res))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(DEFAULT_SRC))
    p.add_argument("--cache", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None, help="default 128 on CPU, 512 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 25 CPU, 300 CUDA)")
    p.add_argument("--every", type=int, default=5, help="dist_gan log interval = textbook warm-up steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra dist_gan overrides")
    p.add_argument("--worker-textbook", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    if args.worker_textbook:
        args.batch = args.batch or (512 if device.type == "cuda" else 128)
        args.steps = args.steps or (300 if device.type == "cuda" else 25)
        return _worker_textbook(args)
    batch = args.batch or (512 if device.type == "cuda" else 128)
    steps = args.steps or (300 if device.type == "cuda" else 25)
    cache = Path(args.cache) if args.cache else common.cache_dir()
    shards = ensure_shards(Path(args.src), cache, 64, args.limit)
    folder = ensure_imagefolder(shards)
    print(f"end-to-end: batch {batch}, {steps} steps per run ({args.every} warm-up), {args.workers} loader workers, "
          f"device {device}, {args.repeats} repeats", flush=True)
    runs: Dict[str, List[Dict[str, Any]]] = {"dist_gan": [], "textbook": []}
    for r in range(args.repeats):
        order = ["dist_gan", "textbook"] if r % 2 == 0 else ["textbook", "dist_gan"]
        for name in order:
            if name == "dist_gan":
                res = run_dist_gan(shards, batch, steps, args.every, args.workers, device.type, list(args.set), args.timeout)
            else:
                res = run_textbook(folder, batch, steps, args.every, args.workers, device.type, args.timeout)
            runs[name].append(res)
            print(f"  repeat {r + 1}/{args.repeats} {name}: {res['img_per_s']:.1f} img/s "
                  f"(process {res['process_wall_s']:.0f}s)", flush=True)
    results: Dict[str, Any] = {}
    for name, rs in runs.items():
        results[name] = {**common.summarize([x["img_per_s"] for x in rs]), "runs_detail": rs,
                         "process_wall_s_median": statistics.median(x["process_wall_s"] for x in rs)}
    results["ratio"] = results["dist_gan"]["img_per_s"] / results["textbook"]["img_per_s"]
    results["ratio_paired"] = common.paired_ratio(results["dist_gan"], results["textbook"])
    settings = {"batch": batch, "steps": steps, "warmup_steps": args.every, "workers": args.workers, "device": str(device),
                "repeats": args.repeats, "shards": shown_path(shards), "imagefolder": shown_path(folder), "dist_gan_overrides": list(args.set),
                "dist_gan_recipe": "dcgan64", "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    path = Path(args.out) if args.out else common.default_out("end_to_end", device)
    common.write_json(path, "end_to_end", settings, results, device)
    print(f"dist_gan : {results['dist_gan']['img_per_s']:8.1f} img/s (wall clock, data included)")
    print(f"textbook : {results['textbook']['img_per_s']:8.1f} img/s")
    print(f"ratio    : {results['ratio']:.2f}x")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
