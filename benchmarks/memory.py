"""Peak memory of one training step per batch size: dist_gan's fast path vs the textbook step.

Each (candidate, batch) runs in its own subprocess (a process-lifetime peak cannot
be reset): build the step, run ``--steps`` steps on synthetic data, report

- CUDA: ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``) over the
  steps, after ``reset_peak_memory_stats`` once the networks exist;
- CPU: the process's peak RSS (``getrusage`` ``ru_maxrss``) and that peak minus the
  RSS just before the first step (the step's own working set: activations,
  gradients, optimizer state; torch and the imports are in the baseline).

    python benchmarks/memory.py                      # CPU: batch 32 64 128 256
    python benchmarks/memory.py --device cuda        # batch 128 ... 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from benchmarks.step import dist_gan_candidate, load_cfg, textbook_candidate

    common.set_threads(args.threads)
    device = common.pick_device(args.device)
    cfg = load_cfg(args.recipe, [f"train.batch={args.batch}", *args.set])
    if args.worker == "dist_gan":
        from accelerate import Accelerator

        run = dist_gan_candidate(cfg, Accelerator(mixed_precision="no", cpu=device.type == "cpu"), args.batch)
    else:
        run = textbook_candidate(cfg, device, args.batch)
    out: Dict[str, Any] = {"candidate": args.worker, "batch": args.batch}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(args.steps):
            run()
        torch.cuda.synchronize()
        out.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                   baseline_allocated_bytes=base)
        out["step_peak_bytes"] = out["peak_allocated_bytes"] - base
    else:
        base = _rss_bytes()
        for _ in range(args.steps):
            run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out.update(peak_rss_bytes=peak, baseline_rss_bytes=base, step_peak_bytes=max(0, peak - base))
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", default=None, help="comma list (default 32,64,128,256 CPU; 128,256,512,1024,2048 CUDA)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--recipe", default="dcgan64")
    p.add_argument("--candidates", default="dist_gan,textbook")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return {}
    device = common.pick_device(args.device)
    batches = [int(b) for b in (args.batches or ("128,256,512,1024,2048" if device.type == "cuda" else "32,64,128,256")).split(",")]
    names = [c for c in args.candidates.split(",") if c]
    rows: List[Dict[str, Any]] = []
    for batch in batches:
        for name in names:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--batch", str(batch), "--device", device.type,
                   "--steps", str(args.steps), "--threads", str(args.threads), "--recipe", args.recipe]
            if args.set:
                cmd += ["--set", *args.set]
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device.type == "cpu" else {}))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=common.REPO)
            if proc.returncode != 0:
                oom = "out of memory" in proc.stderr.lower()
                rows.append({"candidate": name, "batch": batch, "error": "OOM" if oom else proc.stderr[-1500:]})
                print(f"  {name:9s} batch {batch:5d}: {'OOM' if oom else 'failed'}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {name:9s} batch {batch:5d}: step peak {row['step_peak_bytes'] / 2**20:8.1f} MiB"
                  + (f" (process peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB)" if "peak_rss_bytes" in row else
                     f" (peak allocated {row['peak_allocated_bytes'] / 2**20:.0f} MiB)"), flush=True)
    results = {"rows": rows, "metric": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (getrusage) minus RSS before the first step"}
    settings = {"device": str(device), "batches": batches, "steps": args.steps, "recipe": args.recipe, "overrides": list(args.set)}
    path = Path(args.out) if args.out else common.default_out("memory", device)
    common.write_json(path, "memory", settings, results, device)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
