"""FID, KID and Inception Score from features: the math only, numpy float64.

FID uses the symmetric form tr sqrt(S1 S2) = tr sqrt(A S2 A) with A = S1^(1/2):
A S2 A is symmetric PSD, so an eigendecomposition is exact and stable where
``scipy.linalg.sqrtm`` of the non-symmetric product can return complex noise.
KID is the unbiased MMD^2 with the cubic polynomial kernel over random subsets,
drawn exactly as torch-fidelity draws them (same RandomState call order), so the
two agree to rounding on the same features.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def feature_stats(feats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of (N, D) features, float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N>=2, D) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix (negative rounding noise clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_to_stats(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """FID of a feature set against reference statistics; exact, and cheap when N <= D.

    With N samples the covariance is X^T X / (N-1) (X centred, N x D), and the nonzero
    eigenvalues of S_ref S equal those of X S_ref X^T / (N-1), an N x N symmetric PSD
    matrix: no D x D decomposition is needed for small evaluations.
    """
    f = np.asarray(feats, np.float64)
    n, d = f.shape
    if n - 1 >= d:
        return frechet_distance(*feature_stats(f), mu_ref, sigma_ref)
    if n < 2:
        raise ValueError("need at least 2 samples")
    mu = f.mean(axis=0)
    x = f - mu
    m = x @ np.asarray(sigma_ref, np.float64) @ x.T / (n - 1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu - np.asarray(mu_ref, np.float64)
    return float(diff @ diff + np.trace(sigma_ref) + (x * x).sum() / (n - 1) - 2 * tr_covmean)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets."""
    return frechet_distance(*feature_stats(feats1), *feature_stats(feats2))


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    d, m = x.shape[1], len(x)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kernel_inception_distance(
    feats1: np.ndarray, feats2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> Dict[str, float]:
    """KID mean and std over ``subsets`` random subsets of ``min(subset_size, N1, N2)`` each.

    When both sets are no larger than a subset, every subset is both whole sets: the MMD is computed once and
    ``kid_std`` is None, since a spread over identical draws (0.0) would read as a measured certainty.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if m == len(f1) == len(f2):
        return {"kid_mean": _poly_mmd2_unbiased(f1, f2), "kid_std": None, "kid_subsets": 1, "kid_subset_size": m}
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        mmds[i] = _poly_mmd2_unbiased(x, y)
    return {"kid_mean": float(mmds.mean()), "kid_std": float(mmds.std()), "kid_subsets": subsets, "kid_subset_size": m}


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> Dict[str, float]:
    """exp(E KL(p(y|x) || p(y))) over ``splits`` shuffled chunks, as torch-fidelity computes it."""
    z = np.asarray(logits, np.float64)
    if not np.isfinite(z).all():
        raise ValueError("non-finite logits: the Inception weights have no classifier head")
    z = z[np.random.RandomState(seed).permutation(len(z))]
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    n, scores = len(z), []
    for i in range(splits):
        pc, lpc = p[i * n // splits : (i + 1) * n // splits], log_p[i * n // splits : (i + 1) * n // splits]
        q = pc.mean(axis=0, keepdims=True)
        scores.append(float(np.exp((pc * (lpc - np.log(q))).sum(axis=1).mean())))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": splits}
