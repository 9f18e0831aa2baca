"""Super-resolution vs bicubic on held-out CelebA (../shared/data/celeba-10k.zip).

Faces are centre-cropped to 89x89 and resized to 64x64 (the high-resolution target);
inputs are their antialiased bicubic downscale (32 px for x2, 16 px for x4). The first
``--n-train`` images train, the last ``--n-eval`` are held out. Prints a table and writes
``benchmarks/results/superres_celeba.json``.

    python benchmarks/superres_celeba.py --seconds 120
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dist_gan.tools import superres as S

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", type=Path, default=ROOT / ".." / "shared" / "data" / "celeba-10k.zip")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=120.0, help="training time budget per scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "superres_celeba.json")
    ap.add_argument("--model-dir", type=Path, default=None, help="also save the trained models here")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train_hr, eval_hr = S.load_pairs_source(args.zip, args.n_train, args.n_eval, 64)
    rows = []
    for scale in args.scales:
        t0 = time.monotonic()
        model = S.train_superres(train_hr, scale, steps=args.steps, seconds=args.seconds)
        took = time.monotonic() - t0
        m = S.evaluate(model, eval_hr)
        rows.append({"scale": scale, "hr_size": 64, "lr_size": 64 // scale, "train_seconds": round(took, 1), "train_steps": model.steps_done, **{k: round(v, 4) for k, v in m.items()}})
        if args.model_dir:
            S.save_superres(model, args.model_dir / f"superres_x{scale}.pt", m)

    print(f"{'scale':>5} {'PSNR model':>11} {'PSNR bicubic':>13} {'gain dB':>8} {'SSIM model':>11} {'SSIM bicubic':>13} {'train s':>8}")
    for r in rows:
        print(f"{'x' + str(r['scale']):>5} {r['psnr_model']:>11.2f} {r['psnr_bicubic']:>13.2f} {r['psnr_model'] - r['psnr_bicubic']:>8.2f} "
              f"{r['ssim_model']:>11.4f} {r['ssim_bicubic']:>13.4f} {r['train_seconds']:>8.1f}")
    result = {
        "benchmark": "superres_celeba",
        "data": "celeba-10k.zip: centre crop 89x89 -> 64x64 HR; antialiased bicubic downscale -> LR",
        "split": {"train": f"first {len(train_hr)} images", "held_out": f"last {len(eval_hr)} images"},
        "model": {"nf": 32, "n_blocks": 4, "batch": 16, "patch": 32, "loss": "L1", "optimizer": "Adam 1e-3 cosine"},
        "metrics": "PSNR (dB) and SSIM (Gaussian 11x11 sigma 1.5, RGB, [0,1]) averaged over held-out images",
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads (shared)",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
