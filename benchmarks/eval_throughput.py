"""Evaluation throughput on CPU: samples/s for generation, Inception features, face detection, and in all.

Uses a freshly initialised 64-px DCGAN generator (speed does not depend on training)
and the offline Inception weights. The baseline row ``inception_features_one_pass_nchw``
feeds Inception each batch whole in NCHW, as the evaluator did before its CPU path
(``features.CPU_CHUNK`` images at a time, weights in channels_last); both rows run here,
on the same images, and the largest feature difference between them is recorded. Prints a table and writes
benchmarks/results/eval_throughput.json. Usage: ``python benchmarks/eval_throughput.py --n 256``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dist_gan.eval.detect import build_detector  # noqa: E402
from dist_gan.eval.features import InceptionFeatures, extract, resolve_weights, to_uint8_nchw  # noqa: E402
from dist_gan.eval.sampling import latents  # noqa: E402
from dist_gan.imaging import to_uint8  # noqa: E402
from dist_gan.models.dcgan import Generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    """(result, wall seconds, process CPU seconds)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=250, help="the evaluator's batch (eval/sampling.py BATCH)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--detector", default="haar")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_throughput.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    G = Generator(args.resolution, 100, 64).eval()
    model = InceptionFeatures(resolve_weights())
    det = build_detector(args.detector)

    def generate():
        parts = []
        with torch.no_grad():
            for s in range(0, args.n, args.batch):
                parts.append(to_uint8(G(latents(s, min(s + args.batch, args.n), 100, 0))))
        return np.concatenate(parts)

    images, t_gen, c_gen = timed(generate)
    feats, t_feat, c_feat = timed(lambda: extract(model, images, batch=args.batch)["feats"])

    def one_pass_nchw():
        net = copy.deepcopy(model.net).to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            return np.concatenate([net(to_uint8_nchw(images[s:s + args.batch]))[0].numpy()
                                   for s in range(0, args.n, args.batch)])

    base, t_base, c_base = timed(one_pass_nchw)
    _, t_det, c_det = timed(lambda: det.detect(images))
    total = t_gen + t_feat + t_det
    rows = {
        "generation": (t_gen, c_gen),
        "inception_features": (t_feat, c_feat),
        "inception_features_one_pass_nchw": (t_base, c_base),
        f"detection_{args.detector}": (t_det, c_det),
        "total": (total, c_gen + c_feat + c_det),
    }
    speedup = t_base / t_feat
    result = {
        "n": args.n, "batch": args.batch, "resolution": args.resolution, "device": "cpu",
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "stages": {k: {"seconds": round(w, 3), "samples_per_s": round(args.n / w, 3), "cpu_seconds": round(c, 3),
                       "samples_per_cpu_s": round(args.n / c, 3) if c > 0 else None} for k, (w, c) in rows.items()},
        "detector": det.describe(args.resolution),
        "inception_speedup_over_one_pass_nchw": round(speedup, 2),
        "inception_max_abs_feature_diff": float(np.abs(feats - base).max()),
        "torch": torch.__version__, "python": platform.python_version(),
        "note": "wall-clock on a shared machine; samples_per_cpu_s is less sensitive to other load",
    }
    print(f"{'stage':<34}{'seconds':>10}{'samples/s':>12}{'samples/cpu-s':>15}")
    for k, v in result["stages"].items():
        print(f"{k:<34}{v['seconds']:>10.2f}{v['samples_per_s']:>12.1f}{(v['samples_per_cpu_s'] or 0):>15.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Inception: {speedup:.2f}x the one-pass NCHW baseline; features differ by at most "
          f"{result['inception_max_abs_feature_diff']:.1e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
