"""The evaluation protocol's samples, split over ranks: latents, generated and reference features.

Work is split by *global batch*: batch b (samples [b*B, (b+1)*B)) goes to rank
b % world_size, and sample i's latent comes from its own generator seeded with
``latent_seed(seed, i)``. Each batch therefore holds exactly the same samples, in the
same order, whatever the number of processes, so the gathered features are
identical to a single-process run (G is in eval mode: no batch statistics).
Ranks exchange results with ``all_gather_object`` (gloo is enough). ``dist-gan eval``
and the FID tracked during training both draw through here, so the two give the
same figure for the same weights, n and seed.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from dist_gan.eval import reference as R
from dist_gan.eval.features import InceptionFeatures, cache_dir, extract
from dist_gan.eval.fid import feature_stats
from dist_gan.imaging import to_uint8

BATCH = 250  # samples per global batch: dist-gan eval's default --batch and the tracker's, so both draw the same batches
SEED_RULE = ("z_i ~ N(0, I) drawn from torch.Generator().manual_seed((seed * 2654435761 + i) mod 2**32) "
             "for global sample index i")


# ------------------------------------------------------------ distribution
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> List[Any]:
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Dist:
    """Join the process group torchrun/accelerate describe in the environment (gloo), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        # Ranks wait at a barrier while rank 0 scores: identity embedding of 10k + 10k faces takes hours on CPU.
        torch.distributed.init_process_group("gloo", timeout=_dt.timedelta(hours=12))
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def sharded(n: int, batch: int, fn: Callable[[int, int], Dict[str, np.ndarray]], dist: Dist,
            progress: Any = None, desc: str = "") -> Dict[str, np.ndarray]:
    """Run ``fn(start, stop)`` over global batches, this rank's share only; gather all in order."""
    starts = list(range(0, n, batch))
    mine = starts[dist.rank :: dist.world]
    task = progress.add_task(desc, total=sum(min(s + batch, n) - s for s in mine)) if progress is not None else None
    parts: Dict[int, Dict[str, np.ndarray]] = {}
    for s in mine:
        parts[s] = fn(s, min(s + batch, n))
        if task is not None:
            progress.advance(task, min(s + batch, n) - s)
    merged: Dict[int, Dict[str, np.ndarray]] = {}
    for p in dist.gather(parts):
        merged.update(p)
    keys = list(merged[starts[0]]) if starts else []
    return {k: np.concatenate([merged[s][k] for s in starts]) for k in keys}


def latent_seed(seed: int, i: int) -> int:
    """Sample i's generator seed. torch's CPU generator keeps only the low 32 bits of a seed, so the
    seed is spread by Knuth's multiplicative constant within them: seed 0 is sample i's own index,
    and for n well below 2**32 / seeds, different seeds draw disjoint latents."""
    return (seed * 2654435761 + i) % 2**32


def latents(start: int, stop: int, nz: int, seed: int) -> torch.Tensor:
    """Latents of global samples [start, stop): each from its own seeded generator."""
    g = torch.Generator()
    out = torch.empty(stop - start, nz)
    for j, i in enumerate(range(start, stop)):
        g.manual_seed(latent_seed(seed, i))
        out[j] = torch.randn(nz, generator=g)
    return out


def generate(G: nn.Module, nz: int, n: int, seed: int, batch: int, dist: Dist, model: Optional[InceptionFeatures] = None,
             progress: Any = None, desc: str = "generate", device: Optional[torch.device] = None,
             keep_images: bool = True) -> Dict[str, np.ndarray]:
    """``n`` images of G (eval mode, fp32) as uint8 NHWC, with their features/logits when a model is given.

    ``keep_images=False`` returns the features alone: the images are not gathered over the ranks.
    """
    device = device or next(G.parameters()).device

    def work(start: int, stop: int) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            images = to_uint8(G(latents(start, stop, nz, seed).to(device)))
        out = {"images": images} if keep_images else {}
        if model is not None:
            out.update(extract(model, images, batch=stop - start))
        return out

    return sharded(n, batch, work, dist, progress, desc)


def reference_features(ref: R.ReferenceSet, images: Optional[np.ndarray], n_ref: int, resolution: int,
                       model: InceptionFeatures, batch: int, dist: Dist, progress: Any) -> Dict[str, Any]:
    """{mu, sigma, feats, cached, cache_path} for the reference, computed once per setting and cached."""
    key = R.stats_key(ref, resolution, n_ref, model.weights.source_sha1)
    path = R.stats_path(cache_dir(), key)
    stats = dist.broadcast(R.load_stats(path) if dist.main else None)  # rank 0's view of the cache rules
    if stats is not None:
        return {**stats, "cached": True, "cache_path": str(path), "key": key}
    if images is None:
        images = load_reference_images(ref, n_ref, resolution, progress)
    res = sharded(n_ref, batch, lambda s, e: extract(model, images[s:e], batch=e - s), dist, progress,
                  "reference features")
    mu, sigma = feature_stats(res["feats"])
    stats = {"mu": mu, "sigma": sigma, "feats": res["feats"]}
    if dist.main:
        R.save_stats(path, stats)
    return {**stats, "cached": False, "cache_path": str(path), "key": key}


def load_reference_images(ref: R.ReferenceSet, n_ref: int, resolution: int, progress: Any) -> np.ndarray:
    task = progress.add_task("load reference images", total=n_ref) if progress is not None else None
    return R.load_images(ref, n_ref, resolution, (lambda k: progress.advance(task, k)) if task is not None else None)
