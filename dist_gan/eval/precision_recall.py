"""Improved precision and recall (Kynkäänniemi et al. 2019), as stylegan2-ada-pytorch reports them.

A single FID cannot tell a sharp generator that covers a few modes from a blurry one
that covers them all. Precision and recall can: each set's manifold is the union of
balls around its samples, each ball reaching the sample's k-th nearest neighbour in
the same set (k = 3). Precision is the share of generated samples inside the real
manifold (are the samples realistic?); recall is the share of real samples inside the
generated manifold (is the data covered?). A collapsed generator keeps its precision
and loses its recall.

The paper and stylegan2-ada use VGG-16 features. Its ImageNet weights are not on PyPI
(torchvision downloads them from a hub at run time), so dist_gan uses the offline
Inception pool3 features that FID already extracts: the same manifold estimator in
another embedding, so values compare across dist_gan runs, not with published VGG
figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from dist_gan.files import atomic_write

K = 3
"""Neighbourhood size of the manifold balls (the paper's and stylegan2-ada's choice)."""

RADII_VERSION = 1
"""Part of the radii cache name: bump it when the estimator changes."""

CHUNK = 1024
"""Query rows per distance block: a block is CHUNK x n floats."""


def _centred(feats: np.ndarray, mean: np.ndarray) -> torch.Tensor:
    # Centring on one mean leaves distances unchanged and keeps float32 norms small.
    return torch.from_numpy((np.asarray(feats, dtype=np.float64) - mean).astype(np.float32))


def _sq_dists(q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor) -> torch.Tensor:
    return ((q * q).sum(1, keepdim=True) + r_sq[None, :] - 2.0 * (q @ r.T)).clamp_(min=0.0)


def knn_radii(feats: np.ndarray, k: int = K, chunk: int = CHUNK) -> np.ndarray:
    """Distance from each row to its k-th nearest *other* row (float64, shape (n,))."""
    f = np.asarray(feats)
    if f.ndim != 2 or len(f) <= k:
        raise ValueError(f"need more than k={k} rows of (n, d) features, got shape {f.shape}")
    x = _centred(f, f.mean(axis=0, dtype=np.float64))
    x_sq = (x * x).sum(1)
    out = np.empty(len(f), dtype=np.float64)
    for start in range(0, len(f), chunk):
        d2 = _sq_dists(x[start : start + chunk], x, x_sq)
        rows = torch.arange(len(d2))
        d2[rows, rows + start] = 0.0  # exactly, whatever float32 rounding made of it
        # The row itself is at distance 0, so the k-th other neighbour is the (k+1)-th smallest.
        out[start : start + chunk] = d2.kthvalue(k + 1, dim=1).values.sqrt().double().numpy()
    return out


def inside_manifold(query: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Whether each query row lies within some support row's ball (``radii`` from ``knn_radii(support)``)."""
    q, s = np.asarray(query), np.asarray(support)
    if q.ndim != 2 or s.ndim != 2 or q.shape[1] != s.shape[1] or len(radii) != len(s):
        raise ValueError(f"expected (n, d), (m, d) and (m,) arrays, got {q.shape}, {s.shape}, {np.shape(radii)}")
    mean = s.mean(axis=0, dtype=np.float64)
    st, r2 = _centred(s, mean), torch.from_numpy(np.square(np.asarray(radii, dtype=np.float64)).astype(np.float32))
    s_sq = (st * st).sum(1)
    found = np.empty(len(q), dtype=bool)
    for start in range(0, len(q), chunk):
        d2 = _sq_dists(_centred(q[start : start + chunk], mean), st, s_sq)
        found[start : start + chunk] = (d2 <= r2[None, :]).any(dim=1).numpy()
    return found


def radii_cache_path(stats_path: str | Path, k: int) -> Path:
    """Where the reference radii live: beside the reference statistics they were computed from."""
    p = Path(stats_path)
    return p.with_name(f"{p.stem}.radii-v{RADII_VERSION}-k{k}.npy")


def reference_radii(ref_feats: np.ndarray, k: int, cache: Optional[Path]) -> tuple[np.ndarray, bool]:
    """The reference manifold's radii, read from ``cache`` when it holds them for these features."""
    if cache is not None and cache.is_file():
        radii = np.load(cache)
        if radii.shape == (len(ref_feats),):
            return radii, True
    radii = knn_radii(ref_feats, k)
    if cache is not None:
        atomic_write(cache, lambda fh: np.save(fh, radii))
    return radii, False


def precision_recall(gen_feats: np.ndarray, ref_feats: np.ndarray, k: int = K,
                     ref_cache: Optional[Path] = None) -> Dict[str, object]:
    """Improved precision and recall of generated against reference features."""
    ref_r, cached = reference_radii(ref_feats, k, ref_cache)
    gen_r = knn_radii(gen_feats, k)
    precision = inside_manifold(gen_feats, ref_feats, ref_r)
    recall = inside_manifold(ref_feats, gen_feats, gen_r)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()), "k": k,
            "n_gen": int(len(gen_feats)), "n_ref": int(len(ref_feats)), "ref_radii_cached": cached,
            "ref_radii_cache": str(ref_cache) if ref_cache is not None else None}
