"""FID sanity figures on the real data (CPU, minutes): run once by hand, not in the test suite.

* self-FID: N CelebA images against the same N (should be ~0: only numerical noise);
* split-half FID: the first N/2 CelebA images against the next N/2 (finite-sample floor);
* CelebA vs anime: N CelebA against N anime faces, both 64 px (should be large).

Writes benchmarks/results/fid_sanity.json. Usage: ``python benchmarks/fid_sanity.py --n 2000``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dist_gan.eval.features import InceptionFeatures, cache_dir, extract, resolve_weights
from dist_gan.eval.fid import feature_stats, fid_from_features, frechet_distance
from dist_gan.eval.reference import load_images, open_reference

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fid_sanity.json")
    args = ap.parse_args()

    weights = resolve_weights()
    model = InceptionFeatures(weights)
    feats, timing = {}, {}
    for name, zip_name in (("celeba", "celeba-10k.zip"), ("anime", "anime-faces-20k.zip")):
        t0 = time.perf_counter()
        saved = cache_dir() / "fid_sanity" / f"{name}-{args.n}-{args.resolution}-{weights.source_sha1[:12]}.npy"
        if saved.is_file():  # features survive an interrupted run (CPU Inception is slow on a busy machine)
            feats[name] = np.load(saved)
        else:
            images = load_images(open_reference(SHARED / zip_name), args.n, args.resolution)
            feats[name] = extract(model, images, batch=args.batch)["feats"]
            saved.parent.mkdir(parents=True, exist_ok=True)
            np.save(saved, feats[name])
        timing[name] = time.perf_counter() - t0
        print(f"{name}: {args.n} images -> features in {timing[name]:.1f}s", flush=True)

    mu_c, s_c = feature_stats(feats["celeba"])
    half = args.n // 2
    result = {
        "n": args.n,
        "resolution": args.resolution,
        "self_fid_celeba": frechet_distance(mu_c, s_c, mu_c, s_c),
        "split_half_fid_celeba": fid_from_features(feats["celeba"][:half], feats["celeba"][half:]),
        "fid_celeba_vs_anime": fid_from_features(feats["celeba"], feats["anime"]),
        "weights_sha1": weights.source_sha1,
        "seconds": timing,
        "images_per_second": {k: args.n / v for k, v in timing.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "note": "first N images in sorted zip order; crops as the packer: CelebA face box 54x54 of 89x109, anime full 64x64; LANCZOS to 64",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
