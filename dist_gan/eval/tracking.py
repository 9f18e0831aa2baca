"""FID during training: G_ema scored against the training shards every ``log.fid_kimg``.

The protocol is ``dist-gan eval --fid -n N``'s (``eval/sampling.py``: one seeded latent
per sample index, fp32, uint8, the same batches) against the same cached reference
statistics, so re-scoring the best checkpoint with eval gives the figure the run logged.
The samples are split over the ranks by global batch: 8 ranks do it 8x faster and every
rank gets the value a single process would.

Nothing here draws from the training RNGs, so a run with tracking trains exactly as
one without it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dist_gan.errors import UserError
from dist_gan.eval import reference as R
from dist_gan.eval.features import InceptionFeatures, resolve_weights
from dist_gan.eval.fid import fid_to_stats
from dist_gan.eval.sampling import BATCH, Dist, generate, reference_features


class FidTracker:
    """``start`` once on every rank, then ``measure(G_ema)`` on every rank at each FID mark."""

    def __init__(self, data: str | Path, n: int, resolution: int, seed: int = 0,
                 inception_weights: Optional[str] = None, batch: int = BATCH) -> None:
        self.data, self.n, self.resolution, self.seed, self.batch = str(data), n, resolution, seed, batch
        self.inception_weights = inception_weights
        self.model: Optional[InceptionFeatures] = None
        self.dist = Dist()

    def start(self, rank: int, world: int, device: torch.device) -> str:
        """Load Inception and the reference statistics (computed once per data set, then cached); one log line.

        Without the Inception weights, tracking is off: the line says why and ``measure`` returns None.
        """
        try:
            weights = resolve_weights(self.inception_weights)
        except UserError as exc:
            return f"FID tracking is off, training goes on: {exc}"
        self.dist = Dist(rank, world)
        self.model = InceptionFeatures(weights).to(device)
        ref = R.open_reference(self.data)
        n_ref = min(self.n, ref.count)
        t0 = time.perf_counter()
        stats = reference_features(ref, None, n_ref, self.resolution, self.model, self.batch, self.dist, None)
        self.mu, self.sigma = stats["mu"], stats["sigma"]
        how = "cached" if stats["cached"] else f"computed in {time.perf_counter() - t0:.0f} s and cached"
        fewer = f" (the set holds only {ref.count})" if n_ref < self.n else ""
        return (f"FID of G_ema: {self.n} samples against {n_ref} training images{fewer}, "
                f"reference statistics {how}; re-score with dist-gan eval RUN --ckpt best --fid --ref {self.data} -n {self.n}")

    def measure(self, G: nn.Module, nz: int) -> Optional[float]:
        """FID of ``G`` (put in eval mode for the measurement), the same on every rank; None when tracking is off."""
        if self.model is None:
            return None
        was_training = G.training
        G.eval()
        try:
            res = generate(G, nz, self.n, self.seed, self.batch, self.dist, self.model, keep_images=False)
        finally:
            G.train(was_training)
        return fid_to_stats(res["feats"], self.mu, self.sigma)


def tracker_for(cfg) -> Optional[FidTracker]:
    """The run's tracker when ``log.fid_kimg > 0``, else None."""
    if cfg.log.fid_kimg <= 0:
        return None
    return FidTracker(cfg.data, cfg.log.fid_n, cfg.model.resolution)
